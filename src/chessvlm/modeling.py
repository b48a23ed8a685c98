"""Vision-language models: load one (hub id or folder, with or without an adapter) or build one.

Every model goes through the same loading code (the Auto classes): the real
`Qwen/Qwen2-VL-2B-Instruct` (the default) or another family's model (Qwen2.5-VL, Qwen3-VL,
SmolVLM; see `chessvlm.families`), a local copy of one, a fine-tuned checkpoint or adapter
written by `chessvlm train`, and the small models `init_model` builds from a config with random
weights (a family's architecture, a reduced Qwen2 tokenizer, the stock processor and chat
template, saved in the hub layout).

Images: Qwen2-VL cuts an image into 14 px patches and merges 2x2 patches into one 28 px token.
A board resized to `image_size` px (a multiple of 28) gives `(image_size / 28) ** 2` visual
tokens; at a multiple of 224 every square covers whole tokens (224 px: one token a square,
448 px: four). Other families have other token sizes (`families.token_pixels`).
`prepare_image` resizes every board to exactly that size and the processor is pinned to it
(`families.pin_image_size`), so training and generation see the same grid.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.io import atomic_write_json

if TYPE_CHECKING:
    import torch
    from PIL import Image

DEFAULT_BASE_MODEL = "Qwen/Qwen2-VL-2B-Instruct"
RUN_CONFIG_NAME = "chessvlm_config.json"
TOKEN_PIXELS = 28  # one merged visual token: 2x2 patches of 14 px
# Four tokens a square for the pretrained 2B model: its vision tower then sees each piece at
# 56 px, near the scale it was trained on, for 256 visual tokens (the seed's 512 px boards
# gave 324 tokens that did not line up with the squares).
DEFAULT_IMAGE_SIZE = 448
# How long a hub id may take to answer before loading it gives up (see `check_hub_model`).
HUB_TIMEOUT_SECONDS = 10


# Qwen2-VL's M-RoPE gives a visual token's row and column the lowest rotary frequencies of
# each head. At Qwen2's theta (1e6) and a small model's 32-dim heads they turn by under
# 0.002 rad across a board, so the decoder cannot tell squares apart by position (the 2B
# model's deep, pretrained vision tower writes positions into the features instead). At
# theta 10 they turn by 1-2 rad across the board; measured in docs/training.md.
SCRATCH_ROPE_THETA = 10.0


@dataclass(frozen=True)
class Preset:
    """Architecture of a Qwen2-VL model built from scratch (text decoder + vision tower)."""

    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    mlp_size: int
    vision_depth: int
    vision_embed: int
    vision_heads: int
    image_size: int
    rope_theta: float = SCRATCH_ROPE_THETA
    max_positions: int = 4096


PRESETS = {
    # For tests: builds and steps in milliseconds; a 56 px board gives 4 visual tokens.
    "tiny": Preset(
        hidden_size=32,
        layers=2,
        heads=2,
        kv_heads=1,
        mlp_size=64,
        vision_depth=1,
        vision_embed=32,
        vision_heads=2,
        image_size=56,
    ),
    # Trained from scratch on CPU: one visual token per square (224 px). Small and fast per
    # step, because the number of steps, not model size, decides when it learns to read
    # boards (docs/training.md has the measured curve).
    "small": Preset(
        hidden_size=128,
        layers=2,
        heads=4,
        kv_heads=2,
        mlp_size=512,
        vision_depth=2,
        vision_embed=64,
        vision_heads=4,
        image_size=224,
    ),
}


def hf_token() -> str | None:
    """The hub token from `HF_TOKEN` or `HUGGINGFACE_TOKEN`, if either is set."""
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGINGFACE_TOKEN") or None


def read_run_config(path: str | Path) -> dict:
    """The `chessvlm_config.json` of a model folder (or that file itself); `{}` when absent.

    Keys written by `init_model` and `train`: `image_size`, `base_model`, `preset` (models
    built here), `target` and `prompt` (trained models: what the model was taught to answer).
    """
    path = Path(path)
    file = path if path.suffix == ".json" else path / RUN_CONFIG_NAME
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(str(file), f"unreadable run config ({error})") from None
    if not isinstance(data, dict):
        raise InputError(str(file), "expected a JSON object")
    return data


def write_run_config(folder: str | Path, config: dict) -> None:
    """Write `chessvlm_config.json` into a model folder."""
    atomic_write_json(Path(folder) / RUN_CONFIG_NAME, config)


def image_size_for(model_name_or_path: str | Path) -> int:
    """The board size a model was built or trained for, else `DEFAULT_IMAGE_SIZE`."""
    return int(read_run_config(model_name_or_path).get("image_size") or DEFAULT_IMAGE_SIZE)


def default_image_size(processor: Any) -> int:
    """The board size of a model with no recorded one: four visual tokens a square (as the
    seed's Qwen2-VL-2B at 448 px), or for SmolVLM one token a square at the largest board its
    vision tower takes (SmolVLM2-2.2B: 336 px of its 384)."""
    from chessvlm.families import family_of_processor, token_pixels

    token = token_pixels(processor)
    if family_of_processor(processor).name == "smolvlm":
        longest = processor.image_processor.max_image_size["longest_edge"]
        return max(longest // (8 * token), 1) * 8 * token
    return 16 * token


def pinned_image_size(processor: Any) -> int:
    """The board size `processor` is pinned to (`families.pin_image_size`)."""
    from chessvlm.families import family_of_processor

    image_processor = processor.image_processor
    if family_of_processor(processor).name == "smolvlm":
        return int(image_processor.max_image_size["longest_edge"])
    return math.isqrt(int(image_processor.size.longest_edge))


def set_image_size(processor: Any, image_size: int) -> None:
    """Pin the processor so a board of `image_size` px is kept as is (one visual-token grid)."""
    from chessvlm.families import pin_image_size

    pin_image_size(processor, image_size)


def prepare_image(image: Image.Image, image_size: int) -> Image.Image:
    """The board as RGB at exactly `image_size` x `image_size` px (the processor's grid)."""
    from PIL import Image

    image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return image


def chat_text(processor: Any, prompt: str, answer: str | None = None) -> str:
    """The chat-template text for one board image and `prompt`.

    Without `answer`: the prompt up to the assistant's turn, which generation continues.
    With `answer`: that same text followed by the answer and the end-of-turn token, which
    training learns (`learned_text`). Both come from here, so what is trained is exactly
    what is asked.
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text if answer is None else text + learned_text(processor, answer)


def learned_text(processor: Any, answer: str) -> str:
    """What training learns after the assistant's turn: the family's answer prefix, the
    answer and its end-of-turn token."""
    from chessvlm.families import family_of_processor

    family = family_of_processor(processor)
    return family.answer_prefix + answer + family.end_of_turn


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on a GPU that supports it, fp16 on other GPUs, fp32 on the CPU."""
    import torch

    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass(frozen=True)
class ModelSource:
    """Where a model's pieces live: base weights, optional adapter, processor, run config."""

    base: str
    adapter: str | None
    processor: str
    run_config: dict


def resolve_model(model_name_or_path: str | Path, adapter: str | Path | None = None) -> ModelSource:
    """Work out what `model_name_or_path` is: a hub id, a model folder, or an adapter folder.

    An adapter folder (PEFT's `adapter_config.json`) names its base in `chessvlm_config.json`
    (or PEFT's `base_model_name_or_path`); its processor is its own when saved with it.
    """
    name = str(model_name_or_path)
    folder = Path(name)
    run_config = read_run_config(folder) if folder.is_dir() else {}
    if adapter is None and (folder / "adapter_config.json").is_file():
        adapter = folder
        base = run_config.get("base_model") or _adapter_base(folder)
    else:
        base = name
    processor = name if _has_processor(folder) else base
    if adapter is not None:
        run_config = {**run_config, **read_run_config(adapter)}
        if _has_processor(Path(adapter)):
            processor = str(adapter)
    return ModelSource(str(base), str(adapter) if adapter else None, str(processor), run_config)


def _has_processor(folder: Path) -> bool:
    return folder.is_dir() and (folder / "tokenizer_config.json").is_file()


def _adapter_base(folder: Path) -> str:
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise InputError(str(folder), "adapter names no base model; pass --model_name")
    return base


def load_processor(source: str, image_size: int | None) -> Any:
    """The processor of `source` with its image size pinned (see `set_image_size`); None:
    `default_image_size`."""
    from transformers import AutoProcessor

    processor = _from_pretrained(AutoProcessor, source)
    set_image_size(processor, image_size or default_image_size(processor))
    return processor


def load_model_and_processor(
    model_name_or_path: str | Path,
    adapter: str | Path | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    image_size: int | None = None,
    for_training: bool = False,
) -> tuple[Any, Any]:
    """Load a model of any supported family and its processor from a hub id or a local folder.

    `model_name_or_path` may be a base model, a merged or fully fine-tuned checkpoint, or an
    adapter folder written by training (its base is read from its `chessvlm_config.json`);
    `adapter` adds a LoRA adapter on top. `image_size` defaults to the one the model was
    trained for, else to `default_image_size`. `dtype` defaults to `default_dtype(device)`.
    For inference the model is put in eval mode on `device`; with `for_training` it stays on
    the CPU for the trainer to place and an adapter is loaded trainable.
    """
    source = resolve_model(model_name_or_path, adapter)
    image_size = image_size or source.run_config.get("image_size")
    processor = load_processor(source.processor, image_size)
    device = default_device() if device is None else device
    dtype = dtype or default_dtype(device)
    model = load_model(source.base, dtype)
    if source.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.adapter, is_trainable=for_training)
    if not for_training:
        model.to(device).eval()
    return model, processor


def load_model(name: str, dtype: torch.dtype) -> Any:
    """The weights of a hub id or folder, in `dtype`, through `AutoModelForImageTextToText`
    (refused for a model outside the supported families)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from chessvlm.families import family_of_config

    family_of_config(_from_pretrained(AutoConfig, name))
    return _from_pretrained(AutoModelForImageTextToText, name, dtype=dtype)


def _from_pretrained(cls: Any, name: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(name)` with the hub token, turning load failures into one message."""
    token = hf_token()
    if token:
        kwargs["token"] = token
    if not Path(name).exists():
        check_hub_model(name)
    try:
        return cls.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as error:
        raise ChessVLMError(_load_failure(name, error)) from None


@cache
def check_hub_model(name: str) -> None:
    """Fail within seconds, in one line, when the hub cannot provide the model `name`.

    A model in the local hub cache, or `HF_HUB_OFFLINE`, is left to `from_pretrained`; otherwise
    the hub is asked once with a short timeout, since `from_pretrained` retries a hub it cannot
    reach for minutes.
    """
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    try:
        model_info(name, timeout=HUB_TIMEOUT_SECONDS, token=hf_token())
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise ChessVLMError(_load_failure(name, error)) from None
    except Exception as error:  # the HTTP client's own connection and timeout errors
        unreachable = OSError(f"the hub did not answer within {HUB_TIMEOUT_SECONDS} s ({error})")
        raise ChessVLMError(_load_failure(name, unreachable)) from None


def _load_failure(name: str, error: Exception) -> str:
    text = str(error).strip()
    reason = text.splitlines()[0].rstrip(".") if text else type(error).__name__
    if Path(name).exists():
        return (
            f"cannot load {name!r}: {reason}. The folder must hold a Qwen2-VL, Qwen2.5-VL, "
            "Qwen3-VL or SmolVLM model in the Hugging Face hub layout (config.json, "
            "*.safetensors, tokenizer and processor files), a checkpoint written by "
            "`chessvlm train`, or a model made by `chessvlm init-model`."
        )
    return (
        f"cannot load {name!r}: {reason}. It is not a local folder, and the Hugging Face hub "
        "could not provide it (no network, HF_HUB_OFFLINE set, a gated model without "
        "HF_TOKEN/HUGGINGFACE_TOKEN, or a wrong id). Download it where the hub is reachable "
        f"(`hf download {name} --local-dir DIR`) and pass that folder instead; to try the "
        "pipeline without any download, build a small model with "
        "`chessvlm init-model --preset small [--family F] --out DIR` and pass DIR."
    )


def qwen2_vl_config(preset: Preset, tokenizer: Any) -> Any:
    """A `Qwen2VLConfig` for `preset` whose special-token ids are `tokenizer`'s.

    Written as the hub's flat config; the vision tower's output width (`hidden_size`) equals
    the text width, and the M-RoPE sections split half a head (temporal, height, width) in
    Qwen2-VL's 1:1.5:1.5 ratio. Other families: `families.scratch_config`.
    """
    from chessvlm.families import FAMILIES, scratch_config

    return scratch_config(FAMILIES["qwen2_vl"], preset, tokenizer)


def build_processor(tokenizer: Any, image_size: int, family: str = "qwen2_vl") -> Any:
    """`family`'s stock processor around `tokenizer`, pinned to `image_size` boards."""
    from chessvlm.families import get_family, stock_processor

    return stock_processor(get_family(family), tokenizer, image_size)


def init_model(preset: str, out: str | Path, seed: int = 0, family: str = "qwen2_vl") -> Path:
    """Build a `preset` model of `family` with random weights; save it, in the hub layout, to
    `out`.

    The folder also holds the tokenizer, processor and chat template, and a
    `chessvlm_config.json` naming the preset, family and board size, so it loads through
    `load_model_and_processor` like any hub model. An existing folder built from the same
    preset and family is kept as is (rerunning is safe); any other existing folder is an error.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    from chessvlm.families import get_family, preset_image_size, scratch_config
    from chessvlm.tokenizer import build_chess_tokenizer

    if preset not in PRESETS:
        raise ChessVLMError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    chosen = get_family(family)
    out = Path(out)
    if out.exists():
        built = read_run_config(out)
        if built.get("preset") == preset and built.get("family", "qwen2_vl") == family:
            return out
        raise ChessVLMError(
            f"{out} exists and is not a {preset!r} {family} model; pick another --out"
        )
    spec = PRESETS[preset]
    image_size = preset_image_size(spec, chosen)
    tokenizer = build_chess_tokenizer(family)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(scratch_config(chosen, spec, tokenizer))
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(chosen.end_of_turn), tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the model folder is an ordinary one
    try:
        model.save_pretrained(staging)
        build_processor(tokenizer, image_size, family).save_pretrained(staging)
        write_run_config(
            staging,
            {
                "preset": preset,
                "family": family,
                "base_model": None,
                **asdict(spec),
                "image_size": image_size,
            },
        )
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen: dict[int, Any] = {}
    for parameter in model.parameters():
        seen.setdefault(id(parameter), parameter)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total
