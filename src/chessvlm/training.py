"""Fine-tune a VLM on a VLM dataset: LoRA (the seed's recipe) or all weights (from scratch).

Every supported family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM; `chessvlm.families`) trains
through the same collator, loss and Trainer; the family decides the LoRA target modules, the
chat text around the answer and the visual-token grid the square and routing losses use.

Built on the Hugging Face `Trainer`, so `accelerate launch` and `torchrun` run it on several
GPUs (or CPU processes with gloo) unchanged. The loss covers only the answer tokens and the
end-of-turn token; the system prompt, user prompt and image tokens are labelled -100.
Checkpoints (`checkpoint-N/`) hold the adapter or model, the processor, the optimizer and
scheduler state, and `chessvlm_config.json`; `resume` continues from the latest one at the
same step with the same data order. `metrics.jsonl` in the output folder logs loss, learning
rate and eval loss as training goes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback

from chessvlm.errors import ChessVLMError, ConfigError, InputError
from chessvlm.families import (
    DEFAULT_FAMILY,
    FAMILIES,
    family_of_config,
    family_of_processor,
    token_pixels,
    visual_grid,
)
from chessvlm.io import JsonlAppender, atomic_write_jsonl, iter_jsonl
from chessvlm.modeling import (
    DEFAULT_BASE_MODEL,
    TOKEN_PIXELS,
    chat_text,
    default_dtype,
    learned_text,
    load_model_and_processor,
    pinned_image_size,
    prepare_image,
    read_run_config,
    resolve_model,
    write_run_config,
)
from chessvlm.routing import RoutingProbe

IGNORE_INDEX = -100
# The run config's `board_crop`: how training prepared each image before resizing it.
LABEL_BOX = "label box"  # cropped to the record's `board_box` (when it has one)
NO_CROP = "none"  # whole images: the boards fill them
# Qwen2-VL boards whose size is a multiple of this have whole visual tokens on every square
# (other families: `families.Family.board_pixels`).
BOARD_TOKEN_PIXELS = 8 * TOKEN_PIXELS
METRICS_LOG = "metrics.jsonl"
SKIPPED_LOG = "skipped_samples.jsonl"

# Defaults that depend on the kind of run (see `resolve_defaults`). LoRA: the seed's recipe.
# From scratch (all weights of a model built by `init-model`): measured on CPU, see
# docs/training.md; a small model needs a 10x higher rate and big batches to learn quickly.
LORA_DEFAULTS = {
    "batch_size": 4,
    "gradient_accumulation_steps": 4,
    "learning_rate": 2e-4,
    "warmup_steps": 0.03,
    "weight_decay": 0.0,
}
SCRATCH_DEFAULTS = {
    "batch_size": 32,
    "gradient_accumulation_steps": 1,
    "learning_rate": 2e-3,
    "warmup_steps": 100,
    "weight_decay": 0.05,
}
FULL_DEFAULTS = {**LORA_DEFAULTS, "learning_rate": 2e-5}


@dataclass
class TrainConfig:
    """Everything a training run needs; `None` fields are filled by `resolve_defaults`."""

    data_dir: Path
    output_dir: Path
    model_name: str = DEFAULT_BASE_MODEL
    image_base_dir: Path | None = None
    use_lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_vision: bool = False
    batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    learning_rate: float | None = None
    warmup_steps: float | None = None
    weight_decay: float | None = None
    lr_scheduler: str = "linear"
    lr_decay_fraction: float | None = None
    num_epochs: float = 3.0
    max_steps: int | None = None
    max_minutes: float | None = None
    save_steps: int = 500
    eval_steps: int = 500
    save_total_limit: int | None = 3
    logging_steps: int = 10
    max_samples: int | None = None
    max_eval_samples: int | None = 256
    image_size: int | None = None
    target: str | None = None
    max_length: int = 2048
    resume: bool = False
    gradient_checkpointing: bool = False
    bf16_cpu: bool = False
    dataloader_workers: int | None = None
    skip_bad_samples: bool = False
    square_loss: bool = False
    routing_loss: bool = False
    augment: bool = False
    seed: int = 0


@dataclass(frozen=True)
class Example:
    """One training sample: an image file, the prompt and the answer to learn."""

    id: str
    image: Path
    prompt: str
    answer: str
    # The 64 square symbols as the image shows them (`positions.screen_symbols`), when the
    # record says where the pieces are and which way up the board is; for `square_loss`.
    screen: tuple[str, ...] | None = None
    # Whether the board is shown from black's side (the record's "flipped"); for `routing_loss`.
    flipped: bool = False
    # Where the board's 8x8 squares are in the image (the record's "board_box": left, top,
    # right, bottom in pixels); the collator crops the image to it. None: the board fills it.
    board_box: tuple[float, float, float, float] | None = None


def resolve_defaults(config: TrainConfig) -> TrainConfig:
    """Fill the unset optimisation knobs for the kind of run.

    LoRA: the seed's recipe (batch 4 x 4, lr 2e-4). All weights of a model built by
    `init-model` (training from scratch): batch 32, lr 2e-3, warmup 100 steps, weight decay
    0.05. All weights of a pretrained model: the seed's batch with lr 2e-5.
    """
    if config.use_lora:
        defaults = LORA_DEFAULTS
    elif resolve_model(config.model_name).run_config.get("preset"):
        defaults = SCRATCH_DEFAULTS
    else:
        defaults = FULL_DEFAULTS
    fraction = config.lr_decay_fraction
    if fraction is not None and not (config.max_minutes and 0 < fraction <= 1):
        raise ConfigError(
            "lr_decay_fraction",
            "needs `max_minutes` and a value in (0, 1]: the share of the time budget over "
            f"which the learning rate decays (got {fraction})",
        )
    filled = {k: v for k, v in defaults.items() if getattr(config, k) is None}
    return dataclasses.replace(config, **filled)


# ---------------------------------------------------------------------------------------------
# Data


def load_examples(
    path: Path, image_base_dir: Path, target: str | None, max_samples: int | None
) -> tuple[list[Example], str]:
    """The examples of one VLM dataset split and the target they teach.

    With `target` set, prompt and answer are rebuilt for it from each record's FEN, so one
    VLM dataset serves both targets; otherwise the records' own turns are used.
    """
    from chessvlm.datasets import assistant_answer, read_vlm_dataset, user_prompt
    from chessvlm.positions import answer_text, board_from_fen, screen_symbols
    from chessvlm.prompts import PROMPTS

    records = read_vlm_dataset(path)[:max_samples]
    targets = Counter(record.get("target", "seed") for record in records)
    if target is None and len(targets) > 1:
        raise InputError(str(path), f"records mix targets {sorted(targets)}; pass `target`")
    examples = []
    for record in records:
        board = board_from_fen(record["fen"]) if "fen" in record else None
        if target is None:
            prompt, answer = user_prompt(record), assistant_answer(record)
        elif board is not None:
            prompt, answer = PROMPTS[target], answer_text(board, target)
        else:
            raise InputError(f"{path} (id {record['id']!r})", "no 'fen' to rebuild the answer from")
        flipped = bool(record.get("flipped", False))
        screen = tuple(screen_symbols(board, flipped)) if board is not None else None
        image = image_base_dir / record["image"]
        box = record.get("board_box")
        box = tuple(float(value) for value in box) if box is not None else None
        examples.append(Example(record["id"], image, prompt, answer, screen, flipped, box))
    chosen = target or next(iter(targets), "compact")
    return examples, chosen


def check_examples(
    examples: list[Example], processor: Any, image_size: int, max_length: int, where: str
) -> tuple[list[Example], list[dict]]:
    """Split examples into usable ones and problems (missing image, longer than `max_length`,
    a `board_box` outside the image).

    Lengths count the chat template, the image's visual tokens, the prompt, the answer and
    the end-of-turn token, exactly as the collator builds them; nothing is ever cut.
    """
    from PIL import Image, UnidentifiedImageError

    tokenizer = processor.tokenizer
    blank = Image.new("RGB", (image_size, image_size))
    prompt_lengths: dict[str, int] = {}
    good, problems = [], []
    for example in examples:
        if example.prompt not in prompt_lengths:
            text = chat_text(processor, example.prompt)
            prompt = processor(text=[text], images=[[blank]])["input_ids"][0]
            prompt_lengths[example.prompt] = len(prompt)
        length = prompt_lengths[example.prompt] + len(
            tokenizer(learned_text(processor, example.answer), add_special_tokens=False)[
                "input_ids"
            ]
        )
        problem = None
        if length > max_length:
            problem = f"{length} tokens with the prompt and image, over `max_length` {max_length}"
        else:
            try:
                with Image.open(example.image) as image:
                    problem = _box_problem(example, image.size)
            except (OSError, UnidentifiedImageError) as error:
                problem = f"unreadable image {example.image} ({error})"
        if problem:
            problems.append({"where": where, "id": example.id, "problem": problem})
        else:
            good.append(example)
    return good, problems


def _box_problem(example: Example, size: tuple[int, int]) -> str | None:
    """Why an example's `board_box` does not fit its image (half a pixel of slack), or None."""
    if example.board_box is None:
        return None
    width, height = size
    if example.board_box[2] > width + 0.5 or example.board_box[3] > height + 0.5:
        return f"'board_box' {list(example.board_box)} reaches outside the {width}x{height} image"
    return None


def crop_to_pixel_box(image: Any, box: tuple[float, float, float, float] | None) -> Any:
    """The board part of `image`: the pixel box `box` (left, top, right, bottom), cut as the
    reader's crops are (`reader_images.crop_to_box`); the image itself when `box` is None."""
    from chessvlm.reader.images import crop_to_box

    if box is None:
        return image
    width, height = image.size
    left, top, right, bottom = box
    return crop_to_box(image, (left / width, top / height, right / width, bottom / height))


class VLMCollator:
    """Turn examples into a right-padded batch whose labels cover only the answer.

    Each sample is the chat text of `chat_text(processor, prompt, answer)` with its board
    cropped to the example's `board_box` (when it has one: then the board fills the frame,
    as the square and routing losses assume) and resized to `image_size`; its labels are
    -100 except for the answer's tokens and the end-of-turn token, which are checked to be
    exactly the answer's own tokenization.
    Keeps every input the installed transformers wants (`mm_token_type_ids` included).

    With `square_loss`, the batch also holds `square_labels`: at each visual token, the token
    of the symbol on the square it shows (as it appears in answers, e.g. " N"); -100 elsewhere.
    With `routing_loss`, it holds `route_queries` [batch, 64], the position whose output
    predicts each board square of the answer (FEN order), and `route_keys` [batch, 64, n],
    the positions of the n visual tokens that show that square (see `chessvlm.routing`).
    With `augment_seed`, each batch's boards are redrawn and recoloured as the board reader's
    training does (`reader.augment.augment_batch`, without its loose or tight crops: the
    board stays cut at its corners), from a generator seeded by `augment_seed` and the
    batch's sample ids, so a resumed run sees the batch it would have seen.
    """

    def __init__(
        self,
        processor: Any,
        image_size: int,
        square_loss: bool = False,
        routing_loss: bool = False,
        augment_seed: int | None = None,
    ) -> None:
        self.processor = processor
        self.image_size = image_size
        self.augment_seed = augment_seed
        side = visual_grid(processor, image_size)  # visual tokens per row, in reading order
        self.pad_id = processor.tokenizer.pad_token_id
        self.square_ids = _square_symbol_ids(processor.tokenizer) if square_loss else None
        self.routing = routing_loss
        for field, wanted in (("square_loss", square_loss), ("routing_loss", routing_loss)):
            if wanted and side % 8:
                board = 8 * token_pixels(processor)
                raise ConfigError(
                    field,
                    "needs squares aligned with visual tokens: for "
                    f"{family_of_processor(processor).title}, an image size that is a multiple "
                    f"of {board} px, not {image_size}",
                )
        # The screen square (row-major, 0 = top left) each visual token shows.
        self.square_of_token = [
            (row * 8 // side) * 8 + column * 8 // side
            for row in range(side)
            for column in range(side)
        ]
        # The visual tokens (in reading order) that show each screen square.
        self.tokens_of_square = [
            [token for token, shown in enumerate(self.square_of_token) if shown == square]
            for square in range(64)
        ]

    def __call__(self, examples: list[Example]) -> dict:
        import torch

        images = [self._image(example) for example in examples]
        if self.augment_seed is not None:
            images = self._augmented(images, examples)
        texts = [chat_text(self.processor, e.prompt, e.answer) for e in examples]
        batch = self.processor(
            text=texts,
            images=[[image] for image in images],
            padding=True,
            padding_side="right",
            return_tensors="pt",
        )
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        starts = []  # where each answer begins in its row
        for row, (example, length) in enumerate(zip(examples, lengths, strict=True)):
            answer = self._answer_ids(example.answer)
            start = length - len(answer)
            starts.append(start)
            if batch["input_ids"][row, start:length].tolist() != answer:
                raise ChessVLMError(
                    f"sample {example.id!r}: the answer tokenizes differently inside the chat "
                    "text than alone, so its labels would be wrong"
                )
            labels[row, start:length] = batch["input_ids"][row, start:length]
        if self.square_ids is not None:
            batch["square_labels"] = self._square_labels(examples, batch["input_ids"])
        if self.routing:
            batch["route_queries"], batch["route_keys"] = self._routes(
                examples, batch["input_ids"], starts
            )
        return {**batch, "labels": labels}

    def without_augmentation(self) -> VLMCollator:
        """This collator with the boards as they are (for validation)."""
        plain = copy.copy(self)
        plain.augment_seed = None
        return plain

    def _augmented(self, images: list[Any], examples: list[Example]) -> list[Any]:
        import numpy as np
        import torch
        from PIL import Image

        from chessvlm.reader.augment import augment_batch

        # torch's CPU generator keeps only 32 bits of a seed: the run's seed goes into the hash.
        ids = "\n".join([str(self.augment_seed), *(example.id for example in examples)])
        generator = torch.Generator().manual_seed(zlib.crc32(ids.encode()))
        pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images]))
        boards = augment_batch(pixels.permute(0, 3, 1, 2), generator, reframe=False)
        boards = boards.mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(board) for board in boards]

    def _visual_positions(self, input_ids: Any) -> Any:
        return (input_ids == self.processor.image_token_id).nonzero().flatten()

    def _square_labels(self, examples: list[Example], input_ids: Any) -> Any:
        import torch

        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, example in enumerate(examples):
            if example.screen is None:
                raise ChessVLMError(f"sample {example.id!r}: `square_loss` needs its 'fen'")
            labels[row, self._visual_positions(input_ids[row])] = torch.tensor(
                [self.square_ids[example.screen[square]] for square in self.square_of_token]
            )
        return labels

    def _routes(self, examples: list[Example], input_ids: Any, starts: list[int]) -> tuple:
        import torch

        from chessvlm.routing import answer_square_tokens

        tokenizer = self.processor.tokenizer
        prefix = family_of_processor(self.processor).answer_prefix
        queries, keys = [], []
        for row, (example, start) in enumerate(zip(examples, starts, strict=True)):
            tokens = answer_square_tokens(tokenizer, example.answer, prefix)
            queries.append([start + token - 1 for token in tokens])
            visual = self._visual_positions(input_ids[row]).tolist()
            # Board square k (FEN order) is screen square k, or 63 - k seen from black's side.
            screen = [63 - square if example.flipped else square for square in range(64)]
            keys.append([[visual[token] for token in self.tokens_of_square[s]] for s in screen])
        return torch.tensor(queries), torch.tensor(keys)

    def _image(self, example: Example):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(example.image) as image:
                return prepare_image(crop_to_pixel_box(image, example.board_box), self.image_size)
        except (OSError, UnidentifiedImageError) as error:
            raise InputError(
                f"sample {example.id!r}", f"unreadable image {example.image} ({error})"
            ) from None

    def _answer_ids(self, answer: str) -> list[int]:
        tokenizer = self.processor.tokenizer
        return tokenizer(learned_text(self.processor, answer), add_special_tokens=False)[
            "input_ids"
        ]


def _square_symbol_ids(tokenizer: Any) -> dict[str, int]:
    """Each square symbol's token as it follows a space in an answer (" N", " ."): one id."""
    from chessvlm.positions import SQUARE_CLASSES

    ids = {}
    for symbol in SQUARE_CLASSES:
        tokens = tokenizer(f" {symbol}", add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise ConfigError("square_loss", f"needs ' {symbol}' to be one token, not {tokens}")
        ids[symbol] = tokens[0]
    return ids


# ---------------------------------------------------------------------------------------------
# Model


def lora_config(config: TrainConfig, family: str = "qwen2_vl") -> Any:
    """The seed's LoRA (r 16, alpha 32, dropout 0.1 on the language model's projections),
    optionally extended to the vision tower's attention and MLP layers, for `family`'s
    module names (`families.Family.lora_targets`)."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=FAMILIES[family].lora_targets(config.lora_vision),
        bias="none",
        task_type="CAUSAL_LM",
    )


def training_precision() -> tuple[Any, dict]:
    """Weights dtype for LoRA and the Trainer's mixed-precision flags for this machine.

    GPU: bf16 where supported, else fp16 (LoRA weights stay fp32, so the fp16 scaler works).
    CPU: fp32 weights; bf16 autocast only with `TrainConfig.bf16_cpu` (it made the small
    model's steps slower here, see docs/training.md).
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = default_dtype(device)
    return dtype, {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def build_model(config: TrainConfig, image_size: int | None) -> tuple[Any, Any]:
    """Load the model to train (LoRA-wrapped unless `use_lora` is off) and its processor,
    pinned to `image_size` (None: the model's own, see `modeling.load_model_and_processor`)."""
    import torch

    lora_dtype, _ = training_precision()
    # Full training keeps fp32 master weights; mixed precision comes from autocast.
    dtype = lora_dtype if config.use_lora else torch.float32
    model, processor = load_model_and_processor(
        config.model_name, dtype=dtype, image_size=image_size, for_training=True
    )
    if config.use_lora:
        from peft import PeftModel, get_peft_model

        # An adapter folder as --model_name continues training that adapter.
        if not isinstance(model, PeftModel):
            family = family_of_config(model.config).name
            model = get_peft_model(model, lora_config(config, family))
    model.config.use_cache = False
    return model, processor


# ---------------------------------------------------------------------------------------------
# Trainer callbacks


class TimeBudget(TrainerCallback):
    """Stop training, saving a checkpoint, once `minutes` of training have passed.

    Time counts across resumes (from the `elapsed_s` logged at the resumed step). `fraction`,
    the share of the budget used, drives the clock-based learning-rate schedule. In a
    multi-process run every process takes the largest clock, so all stop at the same step
    with the same learning rate.
    """

    def __init__(self, minutes: float, output_dir: Path) -> None:
        self.seconds = minutes * 60
        self.output_dir = output_dir
        self.start = time.monotonic()
        self.fraction = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        earlier = elapsed_before(self.output_dir / METRICS_LOG, state.global_step)
        self.start = time.monotonic() - earlier
        self.fraction = self._used()

    def on_step_end(self, args, state, control, **kwargs):
        self.fraction = self._used()
        if self.fraction >= 1:
            control.should_training_stop = True
            control.should_save = True
        return control

    def _used(self) -> float:
        import torch

        used = (time.monotonic() - self.start) / self.seconds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shared = torch.tensor([used], dtype=torch.float64)
            torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MAX)
            used = float(shared)
        return used

    def lr_factor(self, warmup: float, decay_fraction: float) -> Callable[[int], float]:
        """Warmup-stable-decay on the clock: a linear warmup (`warmup` steps, or that share of
        the budget when under 1), a flat rate, then a linear decay to 0 over the last
        `decay_fraction` of the budget."""

        def factor(step: int) -> float:
            if warmup >= 1:
                warm = min(1.0, (step + 1) / warmup)
            else:
                warm = min(1.0, self.fraction / warmup) if warmup > 0 else 1.0
            return warm * min(1.0, max(0.0, (1.0 - self.fraction) / decay_fraction))

        return factor


def elapsed_before(log: Path, step: int) -> float:
    """Training seconds logged in `metrics.jsonl` up to `step` (0 for a fresh run)."""
    if not log.is_file():
        return 0.0
    earlier = [
        record.get("elapsed_s", 0.0)
        for _, record in iter_jsonl(log)
        if record.get("step", 0) <= step
    ]
    return max(earlier, default=0.0)


class RunFiles(TrainerCallback):
    """Write `metrics.jsonl` as logs come and `chessvlm_config.json` into every checkpoint.

    Each record's `elapsed_s` is training time since the run began, counted across resumes
    (a resumed run starts from the time logged at its checkpoint's step).
    """

    def __init__(self, output_dir: Path, run_config: dict) -> None:
        self.output_dir = output_dir
        self.run_config = run_config
        self.start = time.monotonic()
        self.log: JsonlAppender | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.log = JsonlAppender(self.output_dir / METRICS_LOG, key="step")
            self.start = time.monotonic() - elapsed_before(self.log.path, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.log:
            self.log.close()
            self.log = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.log and logs:
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            record["elapsed_s"] = round(time.monotonic() - self.start, 1)
            self.log.write(record)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = self.output_dir / f"checkpoint-{state.global_step}"
            write_run_config(folder, {**self.run_config, "step": state.global_step})


class TrainingProgress(TrainerCallback):
    """The progress bar and log lines of a run, in place of transformers' own.

    A time-budgeted run's bar counts minutes against the budget, with the steps so far (its
    step count is only a bound); others count steps. Each log is one line, e.g.
    `step 120  loss 0.8312  learning_rate 2e-04  epoch 0.45  3.2 of 10 min`.
    """

    def __init__(self, budget: TimeBudget | None) -> None:
        self.budget = budget
        self.bar: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if not state.is_world_process_zero:
            return
        if self.budget:
            self.bar = tqdm(
                total=round(self.budget.seconds / 60, 1),
                unit="min",
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} min [{elapsed}<{remaining}{postfix}]",
            )
        else:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        if self.budget:
            self.bar.n = round(min(self.budget.fraction, 1.0) * self.bar.total, 1)
            self.bar.set_postfix_str(f"step {state.global_step}", refresh=False)
            self.bar.refresh()
        else:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            self.bar.write(self.log_line(state.global_step, logs))

    def log_line(self, step: int, logs: dict) -> str:
        """One log record as one line: the step, then each figure, then the budget used."""
        parts = [f"step {step}"]
        for key, value in logs.items():
            if key != "total_flos":
                parts.append(f"{key} {_figure(value)}")
        if self.budget:
            used = min(self.budget.fraction, 1.0) * self.budget.seconds / 60
            parts.append(f"{used:.1f} of {self.budget.seconds / 60:g} min")
        return "  ".join(parts)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _figure(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1e}" if 0 < abs(value) < 1e-3 else f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Training


class VLMTrainer(Trainer):
    """`Trainer` with a loss over the answer positions only, and a working full-model resume.

    Loss: logits are computed only at positions whose next token is learned (about a quarter
    of a sample: the answer), not over the whole prompt and image. That is most of the output
    layer's cost, a third of a small model's training step on CPU and gigabytes of logits for
    the 2B model's 151k-token vocabulary. It is normalised like transformers' causal-LM loss:
    by the learned tokens of the whole accumulated batch, across processes.

    Resume: transformers 5.x saves Qwen2-VL under the hub's key names (`visual.*`, `model.*`)
    but the Trainer reloads a checkpoint's state dict without renaming, so every key is
    "unexpected" and resuming silently keeps the freshly loaded weights (transformers issue
    #43701). Full models are therefore reloaded through `from_pretrained`, which renames;
    adapters already resume correctly through PEFT.
    """

    loss_is_scaled_for_ga = True
    # Set by `train` for `lr_decay_fraction`: the learning-rate factor of a step, on the clock.
    clock_schedule: Callable[[int], float] | None = None

    def create_scheduler(self, num_training_steps, optimizer=None):
        if self.clock_schedule is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            from torch.optim.lr_scheduler import LambdaLR

            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, self.clock_schedule)
        return self.lr_scheduler

    def get_eval_dataloader(self, eval_dataset=None):
        # Validation reads the boards as they are: augmentation is for training batches only.
        collator = self.data_collator
        if isinstance(collator, VLMCollator):
            self.data_collator = collator.without_augmentation()
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch

        inputs = dict(inputs)
        targets = inputs.pop("labels")[:, 1:]
        squares = inputs.pop("square_labels", None)
        route_queries, route_keys = (
            inputs.pop("route_queries", None),
            inputs.pop("route_keys", None),
        )
        if squares is not None and model.training:
            # A visual token's own logits name its square's symbol; no answer target sits
            # there (the next token is visual too), so both losses share one cross-entropy.
            squares = squares[:, :-1]
            targets = torch.where(squares != IGNORE_INDEX, squares, targets)
        positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()
        probe = RoutingProbe(model) if route_queries is not None and model.training else None
        with probe or contextlib.nullcontext():
            outputs = model(**inputs, logits_to_keep=positions)
        logits = outputs.logits.float()
        chosen = targets[:, positions]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            chosen.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        if num_items_in_batch is None:
            loss = loss / (chosen != IGNORE_INDEX).sum()
        else:
            # DDP averages gradients over processes; num_items_in_batch counts all of them.
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        if probe is not None:
            # A mean over this micro-batch's squares; the Trainer sums accumulated micro-batches.
            routing = probe.loss(route_queries, route_keys, inputs["attention_mask"])
            loss = loss + routing / self.args.gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from peft import PeftModel

        model = model or self.model
        if isinstance(model, PeftModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
        model.load_state_dict(saved.state_dict())
        return None


def train(config: TrainConfig) -> Path:
    """Train as `config` says and return the output folder (final adapter or model).

    The output folder then holds the adapter (LoRA) or the whole model, the processor and
    `chessvlm_config.json`, and loads with `modeling.load_model_and_processor`.
    """
    from transformers.trainer_utils import get_last_checkpoint

    from chessvlm.datasets import require_training_data

    require_training_data(config.data_dir, config.image_base_dir)
    config = resolve_defaults(config)
    output_dir = Path(config.output_dir)
    last = get_last_checkpoint(output_dir) if output_dir.is_dir() else None
    if last and not config.resume:
        raise ConfigError(
            "output_dir",
            f"{output_dir} already holds checkpoints; pass `resume` to continue the run, "
            "or choose another folder",
        )
    model, processor = build_model(config, config.image_size)
    image_size = pinned_image_size(processor)
    train_set, eval_set, target, prompt = _datasets(config, processor, image_size)
    run_config = _run_config(config, image_size, target, prompt, len(train_set))
    run_config["board_crop"] = board_crop_of(train_set)
    run_config["family"] = family_of_processor(processor).name
    budget = TimeBudget(config.max_minutes, output_dir) if config.max_minutes else None
    trainer = VLMTrainer(
        model=model,
        args=_training_arguments(config, has_eval=bool(eval_set)),
        train_dataset=train_set,
        eval_dataset=eval_set or None,
        data_collator=VLMCollator(
            processor,
            image_size,
            config.square_loss,
            config.routing_loss,
            augment_seed=config.seed if config.augment else None,
        ),
        processing_class=processor,
        callbacks=[RunFiles(output_dir, run_config)] + ([budget] if budget else []),
    )
    for printer in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(printer)
    trainer.add_callback(TrainingProgress(budget))
    if config.lr_decay_fraction:
        trainer.clock_schedule = budget.lr_factor(config.warmup_steps, config.lr_decay_fraction)
    trainer.train(resume_from_checkpoint=last if config.resume else None)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        finished = {"step": trainer.state.global_step, "epochs": round(trainer.state.epoch, 2)}
        write_run_config(output_dir, {**run_config, **finished})
    return output_dir


def describe_recipe(run_config: dict) -> str:
    """One line on how a model was trained, from its `chessvlm_config.json`."""
    knobs = run_config.get("training", {})
    parts = ["LoRA" if run_config.get("use_lora") else "all weights"]
    family = run_config.get("family", DEFAULT_FAMILY)
    # Qwen2-VL, the default, goes unnamed as before; other families are named.
    title = "" if family == DEFAULT_FAMILY else f" {FAMILIES[family].title}"
    if run_config.get("preset"):
        parts[0] += f" of the {run_config['preset']}{title} preset, from scratch"
    elif title:
        parts[0] += f" on{title}"
    batch = (knobs.get("batch_size") or 0) * (knobs.get("gradient_accumulation_steps") or 1)
    parts.append(f"batch {batch}, lr {knobs.get('learning_rate')}")
    if knobs.get("lr_decay_fraction"):
        share = round(100 * knobs["lr_decay_fraction"])
        parts.append(f"flat, then annealed to 0 over the last {share}% of the time budget")
    if knobs.get("square_loss"):
        parts.append("square loss on the visual tokens")
    if knobs.get("routing_loss"):
        parts.append("routing loss on an attention head")
    if run_config.get("board_crop") == LABEL_BOX:
        parts.append("images cropped to their labelled board box")
    if knobs.get("augment"):
        parts.append("boards redrawn and recoloured as the reader's training does")
    prompt = str(run_config.get("prompt"))
    prompt = prompt if len(prompt) <= 40 else prompt[:37] + "..."
    parts.append(f"loss on the answer only; prompt {prompt!r}")
    return "; ".join(parts)


def board_crop_of(examples: list[Example]) -> str:
    """How training prepared the images, for the run config's `board_crop`: `LABEL_BOX` when
    any example had a `board_box` (its image was cropped to it; those without one filled the
    frame already), else `NO_CROP` (whole images). Evaluation crops the same way, with the
    board reader's locator in place of the labels (`evaluation.plan_crop`)."""
    return LABEL_BOX if any(example.board_box is not None for example in examples) else NO_CROP


def _datasets(
    config: TrainConfig, processor: Any, image_size: int
) -> tuple[list[Example], list[Example], str, str]:
    data_dir = Path(config.data_dir)
    base = Path(config.image_base_dir or data_dir)
    train_path, val_path = data_dir / "train.json", data_dir / "val.json"
    examples, target = load_examples(train_path, base, config.target, config.max_samples)
    prompts = {example.prompt for example in examples}
    if len(prompts) != 1:
        raise InputError(str(train_path), "training needs one fixed prompt; records differ")
    prompt = prompts.pop()
    val: list[Example] = []
    if val_path.is_file():
        val, _ = load_examples(val_path, base, target, config.max_eval_samples)
        # The eval loss measures what training teaches: the training prompt, whatever the
        # val records ask.
        val = [dataclasses.replace(example, prompt=prompt) for example in val]
    checked = [
        check_examples(split, processor, image_size, config.max_length, str(path))
        for split, path in ((examples, train_path), (val, val_path))
    ]
    problems = checked[0][1] + checked[1][1]
    if problems and not config.skip_bad_samples:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(
            f"{first['where']} (id {first['id']!r})",
            f"{first['problem']}{more}; fix the data or pass `skip_bad_samples`",
        )
    if problems:
        atomic_write_jsonl(Path(config.output_dir) / SKIPPED_LOG, problems)
        print(f"skipped {len(problems)} bad samples, listed in {config.output_dir}/{SKIPPED_LOG}")
    if not checked[0][0]:
        raise InputError(str(train_path), "no usable training samples")
    if config.square_loss and any(example.screen is None for example in examples):
        raise InputError(str(train_path), "`square_loss` needs every record's 'fen'")
    if config.routing_loss and target != "compact":
        raise InputError(str(train_path), f"`routing_loss` needs compact answers, not {target!r}")
    return checked[0][0], checked[1][0], target, prompt


def _run_config(config: TrainConfig, image_size: int, target: str, prompt: str, n: int) -> dict:
    source = resolve_model(config.model_name)
    base = source.base
    if Path(base).exists():
        base = str(Path(base).resolve())
    return {
        "target": target,
        "prompt": prompt,
        "image_size": image_size,
        "base_model": base,
        "preset": source.run_config.get("preset"),
        "use_lora": config.use_lora,
        "lora_vision": config.lora_vision if config.use_lora else False,
        "train_samples": n,
        "training": {key: getattr(config, key) for key in _RECORDED_KNOBS},
    }


_RECORDED_KNOBS = (
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "warmup_steps",
    "weight_decay",
    "num_epochs",
    "max_steps",
    "max_minutes",
    "lr_decay_fraction",
    "square_loss",
    "routing_loss",
    "augment",
    "seed",
)


def _training_arguments(config: TrainConfig, has_eval: bool) -> Any:
    import torch
    from transformers import TrainingArguments

    _, precision = training_precision()
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        precision = {"bf16": config.bf16_cpu, "fp16": False, "use_cpu": True}
    workers = config.dataloader_workers
    if workers is None:
        workers = 4 if on_gpu else 0
    return TrainingArguments(
        output_dir=str(config.output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps or -1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        prediction_loss_only=True,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        ddp_find_unused_parameters=False,
        dataloader_num_workers=workers,
        report_to="none",
        **precision,
    )


# ---------------------------------------------------------------------------------------------
# Merge


def merge_adapter(adapter: str | Path, out: str | Path) -> Path:
    """Merge a LoRA adapter into its base weights; save model + processor in the hub layout.

    The merged folder loads like any hub model and keeps the adapter's run config (target,
    prompt, image size), with `merged_from` naming the adapter.
    """
    import torch

    source = resolve_model(adapter)
    if source.adapter is None:
        raise ChessVLMError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError("out", f"{out} already exists and is not empty; pick another folder")
    model, processor = load_model_and_processor(adapter, dtype=torch.float32, device="cpu")
    merged = model.merge_and_unload()
    stored = _stored_dtype(source.base)
    merged.to(stored).save_pretrained(out)
    processor.save_pretrained(out)
    run_config = {**read_run_config(adapter), "merged_from": str(Path(adapter).resolve())}
    write_run_config(out, {**run_config, "use_lora": False})
    return out


def _stored_dtype(base: str) -> Any:
    """The dtype the base model's weights are stored in (fp32 when the config does not say)."""
    import torch
    from transformers import AutoConfig

    from chessvlm.modeling import hf_token

    config = AutoConfig.from_pretrained(base, token=hf_token())
    dtype = getattr(config, "dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype
