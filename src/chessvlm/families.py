"""Vision-language model families: what differs between Qwen2-VL, Qwen2.5-VL, Qwen3-VL and SmolVLM.

Everything else in the pipeline (collator, losses, generation, evaluation) is the same code for
every family; it asks this module for the few things that differ:

- how a model is recognised: its config's `model_type`, or its processor's class;
- the visual-token grid: a token covers `patch x merge` pixels (Qwen2-VL and Qwen2.5-VL: 14 px
  patches merged 2x2, 28 px; Qwen3-VL: 16 px patches merged 2x2, 32 px; SmolVLM: SigLIP
  patches pixel-shuffled `scale_factor` x `scale_factor`, 64 px for SmolVLM-256M/500M and 42 px
  for SmolVLM2-2.2B), so a board whose side is a multiple of `8 x patch x merge` has whole
  visual tokens on every square;
- the chat template, its end-of-turn token and what separates the assistant's turn from the
  answer (SmolVLM's template ends in "Assistant:" and its answers begin with a space);
- the LoRA target modules: the seed's q,k,v,o,gate,up,down projections of the language
  model only (Qwen2.5-VL's vision MLP also has gate/up/down projections, which a plain name
  list would adapt too), and the vision tower's linear layers for `--lora_vision`;
- the config of a small model built from scratch (`modeling.init_model`) and its stock
  processor around the reduced tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chessvlm.errors import ChessVLMError

if TYPE_CHECKING:
    from chessvlm.modeling import Preset

# The seed's LoRA targets: every projection of the language model's attention and MLP.
TEXT_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_QWEN_VISION_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The part of Qwen3-VL-Instruct's chat template that a single-image chat uses: unlike
# Qwen2-VL's, it adds no default system prompt.
_QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Family:
    """One model family: how to recognise, build, prompt and adapt it.

    `patch` and `merge` give the visual token's side (`patch * merge` px) of the models built
    here; a loaded model's own processor is asked for its real grid (`visual_grid`).
    """

    name: str
    title: str
    model_types: tuple[str, ...]
    processor_classes: tuple[str, ...]
    patch: int
    merge: int
    end_of_turn: str
    image_token: str
    # Text between the chat template's assistant turn and the answer, learned with it.
    answer_prefix: str
    language_model: str  # module path segment of the decoder (for LoRA targets)
    vision_lora_pattern: str  # regex of the vision tower's linear layers
    special_tokens: tuple[str, ...]
    chat_template_text: tuple[str, ...]  # the template's fixed words, kept whole by the vocab
    real_model: str  # the 2B-4B instruct model of the family on the hub

    @property
    def token_pixels(self) -> int:
        """Side in px of one visual token of a model built here."""
        return self.patch * self.merge

    @property
    def board_pixels(self) -> int:
        """Board sides that are a multiple of this put whole visual tokens on every square."""
        return 8 * self.token_pixels

    def lora_targets(self, vision: bool) -> list[str] | str:
        """PEFT `target_modules`: the decoder's projections, plus the vision tower's layers."""
        names = "|".join(TEXT_PROJECTIONS)
        if self.name == "qwen2_vl" and not vision:
            # The seed's own list: in Qwen2-VL no vision layer shares these names.
            return list(TEXT_PROJECTIONS)
        text = rf".*{self.language_model}\.layers\.\d+\.\w+\.({names})"
        return rf"{text}|.*{self.vision_lora_pattern}" if vision else text

    def chat_template(self) -> str:
        """The family's stock chat template (for the models built here)."""
        if self.name == "qwen3_vl":
            return _QWEN3_VL_CHAT_TEMPLATE
        if self.name == "smolvlm":
            from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

            return DEFAULT_CHAT_TEMPLATE
        from chessvlm.tokenizer import CHAT_TEMPLATE

        return CHAT_TEMPLATE


_QWEN_COMMON = {
    "end_of_turn": "<|im_end|>",
    "image_token": "<|image_pad|>",
    "answer_prefix": "",
    "language_model": "language_model",
    "special_tokens": (),
}

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="qwen2_vl",
            title="Qwen2-VL",
            model_types=("qwen2_vl",),
            processor_classes=("Qwen2VLProcessor",),
            patch=14,
            merge=2,
            vision_lora_pattern=r"visual\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)",
            chat_template_text=("system\nYou are a helpful assistant.", "user\n", "assistant\n"),
            real_model="Qwen/Qwen2-VL-2B-Instruct",
            **_QWEN_COMMON,
        ),
        Family(
            name="qwen2_5_vl",
            title="Qwen2.5-VL",
            model_types=("qwen2_5_vl",),
            processor_classes=("Qwen2_5_VLProcessor",),
            patch=14,
            merge=2,
            vision_lora_pattern=r"visual\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.\w+_proj)",
            chat_template_text=("system\nYou are a helpful assistant.", "user\n", "assistant\n"),
            real_model="Qwen/Qwen2.5-VL-3B-Instruct",
            **_QWEN_COMMON,
        ),
        Family(
            name="qwen3_vl",
            title="Qwen3-VL",
            model_types=("qwen3_vl",),
            processor_classes=("Qwen3VLProcessor",),
            patch=16,
            merge=2,
            vision_lora_pattern=r"visual\.blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.linear_fc\d)",
            chat_template_text=("user\n", "assistant\n"),
            real_model="Qwen/Qwen3-VL-2B-Instruct",
            **_QWEN_COMMON,
        ),
        Family(
            name="smolvlm",
            title="SmolVLM",
            model_types=("smolvlm", "idefics3"),
            processor_classes=("SmolVLMProcessor", "Idefics3Processor"),
            patch=14,
            merge=2,
            end_of_turn="<end_of_utterance>",
            image_token="<image>",
            # SmolVLM's template ends the prompt with "Assistant:"; its answers start with a
            # space, which keeps the answer's first token the same inside the chat and alone.
            answer_prefix=" ",
            language_model="text_model",
            vision_lora_pattern=(
                r"vision_model\.encoder\.layers\.\d+\.(self_attn\.\w+_proj|mlp\.fc1|mlp\.fc2)"
            ),
            special_tokens=(
                "<fake_token_around_image>",
                "<image>",
                "<global-img>",
                "<end_of_utterance>",
            ),
            chat_template_text=("User:", "Assistant:"),
            real_model="HuggingFaceTB/SmolVLM2-2.2B-Instruct",
        ),
    )
}
DEFAULT_FAMILY = "qwen2_vl"


def get_family(name: str) -> Family:
    """The family called `name` (a key of `FAMILIES`), or a `ChessVLMError` listing them."""
    if name not in FAMILIES:
        raise ChessVLMError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of_config(config: Any) -> Family:
    """The family of a transformers config, by its `model_type`."""
    for family in FAMILIES.values():
        if config.model_type in family.model_types:
            return family
    known = ", ".join(t for family in FAMILIES.values() for t in family.model_types)
    raise ChessVLMError(
        f"model type {config.model_type!r} is not a supported vision-language family "
        f"(supported: {known})"
    )


def family_of_processor(processor: Any) -> Family:
    """The family of a loaded processor, by its class."""
    name = type(processor).__name__
    for family in FAMILIES.values():
        if name in family.processor_classes:
            return family
    raise ChessVLMError(f"processor {name} belongs to no supported vision-language family")


def visual_grid(processor: Any, image_size: int) -> int:
    """Visual tokens per side of a board of `image_size` px, as this processor cuts it.

    Refuses a size that is not a whole number of the processor's visual tokens.
    """
    token = token_pixels(processor)
    if image_size < token or image_size % token:
        family = family_of_processor(processor)
        raise ChessVLMError(
            f"image size {image_size} px is not a positive multiple of {token} px (one "
            f"{family.title} visual token); use a multiple of {8 * token} px so that squares "
            f"align with tokens ({8 * token}: one token per square, {16 * token}: four)"
        )
    return image_size // token


def token_pixels(processor: Any) -> int:
    """Side in px of one visual token of `processor`'s model.

    Qwen families: patch size times merge size. SmolVLM's processor knows neither (they are
    in the model's config) but holds the image side and its token count: a side of 384 px
    read as 81 tokens (SmolVLM2-2.2B, 14 px patches shuffled 3x3) gives 42 px tokens.
    """
    image_processor = processor.image_processor
    if family_of_processor(processor).name == "smolvlm":
        return image_processor.max_image_size["longest_edge"] // math.isqrt(processor.image_seq_len)
    return image_processor.patch_size * image_processor.merge_size


def pin_image_size(processor: Any, image_size: int) -> None:
    """Make the processor keep a board of `image_size` px as it is: one grid, no tiles.

    Qwen families: min and max pixels pinned to the board's area. SmolVLM: no splitting into
    tiles, the board resized to `image_size` and as many image tokens as its pixel-shuffled
    grid has (SigLIP interpolates its position embeddings to smaller images).
    """
    from transformers.image_utils import SizeDict

    image_processor = processor.image_processor
    if family_of_processor(processor).name == "smolvlm":
        grid = visual_grid(processor, image_size)
        image_processor.do_image_splitting = False
        image_processor.size = SizeDict(longest_edge=image_size)
        image_processor.max_image_size = {"longest_edge": image_size}
        processor.image_seq_len = grid * grid
        return
    pixels = visual_grid(processor, image_size) * token_pixels(processor)
    image_processor.size = SizeDict(shortest_edge=pixels**2, longest_edge=pixels**2)


def image_tokens(processor: Any, image_size: int) -> int:
    """Visual tokens the model reads for one board of `image_size` px."""
    return visual_grid(processor, image_size) ** 2


# ---------------------------------------------------------------------------------------------
# Small models built from scratch (`modeling.init_model`)


def preset_image_size(preset: Preset, family: Family) -> int:
    """The board size of `preset` for `family`: the same visual-token grid in every family
    (the preset's `image_size` is Qwen2-VL's, in 28 px tokens)."""
    from chessvlm.modeling import TOKEN_PIXELS

    return preset.image_size // TOKEN_PIXELS * family.token_pixels


def scratch_config(family: Family, preset: Preset, tokenizer: Any) -> Any:
    """The transformers config of a `preset` model of `family`, whose special-token ids are
    `tokenizer`'s. Every family gets the same decoder and vision widths and depths, so the
    families differ by architecture only."""
    builders = {
        "qwen2_vl": _qwen2_vl_config,
        "qwen2_5_vl": _qwen2_5_vl_config,
        "qwen3_vl": _qwen3_vl_config,
        "smolvlm": _smolvlm_config,
    }
    return builders[family.name](preset, tokenizer, preset_image_size(preset, family))


def _mrope_section(head_dim: int) -> list[int]:
    """Half a head split (temporal, height, width) in Qwen2-VL's 1:1.5:1.5 ratio."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def _token_ids(tokenizer: Any, family: Family) -> dict[str, int]:
    from chessvlm.tokenizer import PAD_TOKEN

    ids = tokenizer.convert_tokens_to_ids
    return {
        "bos_token_id": ids(PAD_TOKEN),
        "eos_token_id": ids(family.end_of_turn),
        "pad_token_id": ids(PAD_TOKEN),
    }


def _qwen_vision_ids(tokenizer: Any) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _qwen_text(preset: Preset, tokenizer: Any) -> dict:
    return {
        "vocab_size": _round_up(len(tokenizer), 64),
        "hidden_size": preset.hidden_size,
        "intermediate_size": preset.mlp_size,
        "num_hidden_layers": preset.layers,
        "num_attention_heads": preset.heads,
        "num_key_value_heads": preset.kv_heads,
        "max_position_embeddings": preset.max_positions,
        "rms_norm_eps": 1e-6,
    }


def _qwen2_vl_config(preset: Preset, tokenizer: Any, image_size: int) -> Any:
    from transformers import Qwen2VLConfig

    family = FAMILIES["qwen2_vl"]
    return Qwen2VLConfig(
        **_qwen_text(preset, tokenizer),
        rope_theta=preset.rope_theta,
        rope_scaling={
            "type": "mrope",
            "mrope_section": _mrope_section(preset.hidden_size // preset.heads),
        },
        tie_word_embeddings=True,
        **_token_ids(tokenizer, family),
        **_qwen_vision_ids(tokenizer),
        vision_config={
            "depth": preset.vision_depth,
            "embed_dim": preset.vision_embed,
            "hidden_size": preset.hidden_size,
            "num_heads": preset.vision_heads,
            "mlp_ratio": 4,
            "in_chans": 3,
            "patch_size": family.patch,
            "spatial_merge_size": family.merge,
            "temporal_patch_size": 2,
        },
    )


def _qwen2_5_vl_config(preset: Preset, tokenizer: Any, image_size: int) -> Any:
    from transformers import Qwen2_5_VLConfig

    family = FAMILIES["qwen2_5_vl"]
    return Qwen2_5_VLConfig(
        **_qwen_text(preset, tokenizer),
        rope_theta=preset.rope_theta,
        rope_scaling={
            "type": "mrope",
            "mrope_section": _mrope_section(preset.hidden_size // preset.heads),
        },
        tie_word_embeddings=True,
        **_token_ids(tokenizer, family),
        **_qwen_vision_ids(tokenizer),
        vision_config={
            "depth": preset.vision_depth,
            "hidden_size": preset.vision_embed,
            "intermediate_size": 4 * preset.vision_embed,
            "num_heads": preset.vision_heads,
            "out_hidden_size": preset.hidden_size,
            "patch_size": family.patch,
            "spatial_merge_size": family.merge,
            "temporal_patch_size": 2,
            # Windows of 4x4 visual tokens as in the released models (112 px), the last block
            # attending to the whole image.
            "window_size": 4 * family.token_pixels,
            "fullatt_block_indexes": [preset.vision_depth - 1],
        },
    )


def _qwen3_vl_config(preset: Preset, tokenizer: Any, image_size: int) -> Any:
    from transformers import Qwen3VLConfig

    family = FAMILIES["qwen3_vl"]
    head_dim = preset.hidden_size // preset.heads
    return Qwen3VLConfig(
        text_config={
            **_qwen_text(preset, tokenizer),
            "head_dim": head_dim,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": preset.rope_theta,
                "mrope_section": _mrope_section(head_dim),
                "mrope_interleaved": True,
            },
            **_token_ids(tokenizer, family),
        },
        tie_word_embeddings=True,
        **_qwen_vision_ids(tokenizer),
        vision_config={
            "depth": preset.vision_depth,
            "hidden_size": preset.vision_embed,
            "intermediate_size": 4 * preset.vision_embed,
            "num_heads": preset.vision_heads,
            "out_hidden_size": preset.hidden_size,
            "patch_size": family.patch,
            "spatial_merge_size": family.merge,
            "temporal_patch_size": 2,
            # Learned position embeddings on the preset board's patch grid (interpolated
            # for other sizes), and one DeepStack level fed into the first decoder layer.
            "num_position_embeddings": (image_size // family.patch) ** 2,
            "deepstack_visual_indexes": [0],
        },
    )


def _smolvlm_config(preset: Preset, tokenizer: Any, image_size: int) -> Any:
    from transformers import SmolVLMConfig

    family = FAMILIES["smolvlm"]
    ids = _token_ids(tokenizer, family)
    return SmolVLMConfig(
        text_config={
            "model_type": "llama",
            **_qwen_text(preset, tokenizer),
            "rope_theta": preset.rope_theta,
            "tie_word_embeddings": True,
            **ids,
        },
        vision_config={
            "hidden_size": preset.vision_embed,
            "intermediate_size": 4 * preset.vision_embed,
            "num_hidden_layers": preset.vision_depth,
            "num_attention_heads": preset.vision_heads,
            "patch_size": family.patch,
            "image_size": image_size,
        },
        scale_factor=family.merge,
        image_token_id=tokenizer.convert_tokens_to_ids(family.image_token),
        pad_token_id=ids["pad_token_id"],
        tie_word_embeddings=True,
    )


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def stock_processor(family: Family, tokenizer: Any, image_size: int) -> Any:
    """`family`'s stock processor around `tokenizer`, pinned to `image_size` boards."""
    if family.name == "smolvlm":
        from transformers import SmolVLMImageProcessor, SmolVLMProcessor
        from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

        grid = image_size // family.token_pixels
        processor = SmolVLMProcessor(
            image_processor=SmolVLMImageProcessor(
                max_image_size={"longest_edge": image_size}, do_image_splitting=False
            ),
            tokenizer=tokenizer,
            video_processor=SmolVLMVideoProcessor(),
            image_seq_len=grid * grid,
            chat_template=tokenizer.chat_template,
        )
    else:
        import transformers
        from transformers import Qwen2VLImageProcessor

        processor_class, video_class = {
            "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
            "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
            "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
        }[family.name]
        processor = getattr(transformers, processor_class)(
            image_processor=Qwen2VLImageProcessor(patch_size=family.patch),
            tokenizer=tokenizer,
            video_processor=getattr(transformers, video_class)(patch_size=family.patch),
            chat_template=tokenizer.chat_template,
        )
    pin_image_size(processor, image_size)
    return processor
