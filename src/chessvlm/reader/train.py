"""Training the reader: a resumable loop over boards decoded into memory, with augmentation,
that keeps the best epoch by validation exact boards.

Training keeps `train_state.pt` (optimizer and progress, to resume) and `train_log.jsonl`
(one line an epoch) beside the checkpoint.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from chessvlm.errors import ChessVLMError
from chessvlm.io import (
    JsonlAppender,
    atomic_write_bytes,
    atomic_write_json,
)
from chessvlm.positions import SQUARE_CLASSES
from chessvlm.reader.augment import augment_batch, augment_scenes
from chessvlm.reader.data import (
    BoardSet,
    image_order_labels,
    load_board_set,
    read_split,
    square_labels,
)
from chessvlm.reader.model import (
    CONTEXT_LAYERS,
    META_OUTPUTS,
    ZOOM_VIEWS,
    BoardReader,
    ReaderEnsemble,
    ReaderSpec,
    box_error_in_squares,
    checked_zoom_views,
    square_loss,
)
from chessvlm.reader.read import (
    CONFIG_FILE,
    DECODERS,
    compute_precision,
    computing_in,
    decode_outputs,
    load_reader,
    locate,
    prepare_for_cpu,
    run_network,
    save_checkpoint,
)

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"
# Learning rates by encoder: a from-scratch CNN wants a large one, a pretrained ViT a small
# one (a frozen ViT trains only the heads, so it can take the CNN's).
DEFAULT_LR = {"cnn": 2e-3, "clip": 1e-4}
# Weight of the side-to-move loss: usually unlearnable from the image, it must not drown
# the square and orientation losses in noise.
TO_MOVE_LOSS_WEIGHT = 0.1
# Box errors are fractions of the image (a square of a full-frame board is 0.125): the L1 loss
# is scaled so that an error of an eighth of a square weighs about as much as a wrong square.
LOCATOR_LOSS_WEIGHT = 20.0
# Side to move counts as read from the image only when validation shows it clearly.
TO_MOVE_MIN_ACCURACY = 0.95
TO_MOVE_MIN_GAIN = 0.05
# Each epoch's shuffle and each step's augmentation draw from their own generator, seeded
# from the run's seed and the epoch or step: a resumed run repeats them exactly. The strides
# (primes larger than any epoch or step count) keep the streams of different seeds apart.
EPOCH_SEED_STRIDE = 7919
STEP_SEED_STRIDE = 1_000_003
# Batches augmented ahead of the one training: enough to keep the augmenting thread busy.
PREPARED_AHEAD = 2


@dataclass
class ReaderTrainConfig:
    """Everything `train_reader` needs; the CLI builds one from its flags."""

    data_dir: str
    out: str
    encoder: str = "cnn"
    image_size: int = 256
    widths: tuple[int, ...] = ReaderSpec.widths
    epochs: int = 15
    batch_size: int = 32
    learning_rate: float | None = None
    weight_decay: float = 1e-4
    max_minutes: float | None = None
    max_train_samples: int | None = None
    max_val_samples: int | None = 1000
    augment: bool = True
    seed: int = 0
    clip_model: str | None = None
    clip_config: dict[str, Any] = field(default_factory=dict)
    freeze_encoder: bool = False
    context_layers: int = CONTEXT_LAYERS
    edge_channels: int = ReaderSpec.edge_channels
    workers: int = 2
    save_every_minutes: float = 2.0
    # What the forward and backward passes compute in (`chessvlm.reader.read.PRECISIONS`):
    # `auto` is bfloat16 autocast where the CPU computes it natively. On one thread it made
    # 1.19x the steps in the same minutes; on two, about 1.08x (docs/reader.md), too little
    # for weights that differ by CPU, so float32 stays the default. Weights and validation
    # stay float32.
    precision: str = "float32"
    # The views the trained reader reads each board in besides the cut (`BoardReader.forward`).
    zoom_views: tuple[float, ...] = ZOOM_VIEWS

    def spec(self) -> ReaderSpec:
        """The network this config trains."""
        return ReaderSpec(
            encoder=self.encoder,
            image_size=self.image_size,
            widths=tuple(self.widths),
            clip_model=self.clip_model,
            clip_config=dict(self.clip_config),
            freeze_encoder=self.freeze_encoder,
            context_layers=self.context_layers,
            edge_channels=self.edge_channels,
        )


def train_reader(config: ReaderTrainConfig) -> Path:
    """Train a reader on a JSON dataset; returns the checkpoint folder (`config.out`).

    Keeps the best epoch by validation exact boards (then per-square accuracy), saves a
    resumable state every `save_every_minutes` and at each epoch, and resumes from it when
    run again with the same `out`. `max_minutes` bounds the total training time (over resumes);
    the learning-rate schedule follows whichever of epochs or minutes runs out first.
    """
    checked_zoom_views(config.zoom_views)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out, config)
    spec = ReaderSpec.from_dict(state["spec"]) if state else config.spec()
    precision = compute_precision(config.precision)
    torch.manual_seed(config.seed)
    model = BoardReader(spec)
    prepare_for_cpu(model)
    lr = config.learning_rate or (
        DEFAULT_LR["cnn"] if spec.freeze_encoder else DEFAULT_LR[spec.encoder]
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=config.weight_decay
    )
    progress = {"epoch": 0, "batch": 0, "step": 0, "seconds": 0.0, "cpu_seconds": 0.0, "best": None}
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        progress = state["progress"]
        tqdm.write(f"resuming {out} at epoch {progress['epoch'] + 1}, step {progress['step']}")
    if _finished(progress, config):
        tqdm.write(f"{out}: training already complete")
        return out

    train_records = read_split(config.data_dir, "train", config.max_train_samples)
    val_records = read_split(config.data_dir, "val", config.max_val_samples)
    load = {"workers": config.workers}
    train = load_board_set(
        config.data_dir, train_records, spec.image_size, desc="decoding train", **load
    )
    val = load_board_set(config.data_dir, val_records, spec.image_size, desc="decoding val", **load)
    trainer = _Trainer(model, optimizer, lr, config, precision, out, progress, train)
    trainer.run(val)
    return out


def _load_state(out: Path, config: ReaderTrainConfig) -> dict | None:
    path = out / STATE_FILE
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["spec"]["encoder"] != config.encoder:
        raise ChessVLMError(
            f"{out} holds a {state['spec']['encoder']} reader; use another --out to train a "
            f"{config.encoder} reader"
        )
    return state


def _finished(progress: dict, config: ReaderTrainConfig) -> bool:
    over_time = config.max_minutes is not None and progress["seconds"] >= 60 * config.max_minutes
    return progress["epoch"] >= config.epochs or over_time


class _Inputs(NamedTuple):
    """One training batch as the networks take it: boards, whole images, their board boxes."""

    pixels: torch.Tensor
    scene_pixels: torch.Tensor
    boxes: torch.Tensor


class _Trainer:
    """The training loop's state, so that each part of it stays small."""

    def __init__(
        self,
        model: BoardReader,
        optimizer: torch.optim.Optimizer,
        lr: float,
        config: ReaderTrainConfig,
        precision: str,
        out: Path,
        progress: dict,
        train: BoardSet,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.lr = lr
        self.config = config
        self.precision = precision
        self.out = out
        self.progress = progress
        self.train = train
        self.train_cells = image_order_labels(train.labels, train.flipped)
        self.total_steps = math.ceil(len(train) / config.batch_size) * config.epochs
        self.train_to_move_rate = float(train.black_to_move.float().mean())
        self.started = time.monotonic()
        self.seconds_at_start = progress["seconds"]
        self.cpu_started = time.process_time()
        self.cpu_seconds_at_start = progress.get("cpu_seconds", 0.0)
        self.last_save = self.started
        self.augment_ahead = config.augment and spare_core()

    def seconds(self) -> float:
        return self.seconds_at_start + time.monotonic() - self.started

    def run(self, val: BoardSet) -> None:
        while not _finished(self.progress, self.config):
            epoch = self.progress["epoch"]
            seed = self.config.seed * EPOCH_SEED_STRIDE + epoch
            order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))
            batches = order.split(self.config.batch_size)
            bar = tqdm(
                range(self.progress["batch"], len(batches)),
                desc=f"epoch {epoch + 1}/{self.config.epochs}",
                initial=self.progress["batch"],
                total=len(batches),
            )
            losses = []
            for index, inputs in zip(bar, self.prepared(batches), strict=False):
                losses.append(self.step(batches[index], inputs))
                self.progress["batch"] = index + 1
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if _finished(self.progress, self.config):
                    break
                if time.monotonic() - self.last_save > 60 * self.config.save_every_minutes:
                    self.save_state()
            bar.close()
            epoch_done = self.progress["batch"] >= len(batches)
            if epoch_done:
                self.progress["epoch"] += 1
                self.progress["batch"] = 0
            self.end_of_epoch(val, float(np.mean(losses)) if losses else None, epoch_done)
        self.finish(val)

    def prepared(self, batches: tuple[torch.Tensor, ...]) -> Iterator[_Inputs]:
        """The inputs of the epoch's remaining batches. Where a core is free beyond torch's
        threads, they are augmented on a second thread while the network trains on the batch
        before (torch and Pillow release the GIL); otherwise in turn with the training, since
        a thread competing with torch's for the same cores made steps slower
        (bench/bench_train_steps.py)."""
        first, step = self.progress["batch"], self.progress["step"]
        jobs = [
            (batches[index], step + offset)
            for offset, index in enumerate(range(first, len(batches)))
        ]
        if not self.augment_ahead:
            yield from (self.inputs(*job) for job in jobs)
            return
        upcoming: deque[Future[_Inputs]] = deque()
        with ThreadPoolExecutor(max_workers=1) as pool:
            for job in jobs:
                upcoming.append(pool.submit(self.inputs, *job))
                if len(upcoming) > PREPARED_AHEAD:
                    yield upcoming.popleft().result()
            while upcoming:
                yield upcoming.popleft().result()

    def inputs(self, indices: torch.Tensor, step: int) -> _Inputs:
        """One batch's network inputs, augmented with the generator of its step (a resumed
        run draws the same)."""
        train = self.train
        images, scenes, boxes = train.images[indices], train.scenes[indices], train.boxes[indices]
        if not self.config.augment:
            return _Inputs(images.float() / 255, scenes.float() / 255, boxes)
        generator = torch.Generator().manual_seed(self.config.seed * STEP_SEED_STRIDE + step)
        pixels = augment_batch(images, generator)
        scene_pixels, boxes = augment_scenes(scenes, boxes, generator)
        return _Inputs(pixels, scene_pixels, boxes)

    def step(self, indices: torch.Tensor, inputs: _Inputs) -> float:
        self.model.train()
        train = self.train
        pixels, scene_pixels, boxes = inputs
        channels_last = torch.channels_last
        with computing_in(self.precision):
            square_logits, meta_logits = self.model(pixels.contiguous(memory_format=channels_last))
            located = self.model.locator(scene_pixels.contiguous(memory_format=channels_last))
        # The losses in float32 whatever the network computed in.
        loss = (
            square_loss(square_logits.float(), self.train_cells[indices])
            + _meta_loss(meta_logits.float(), train, indices)
            + LOCATOR_LOSS_WEIGHT * torch.nn.functional.l1_loss(located.float(), boxes)
        )
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * _schedule(self.fraction_done())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.progress["step"] += 1
        self.progress["seconds"] = self.seconds()
        # CPU time (all threads) tells the work done on a CPU shared with other jobs.
        self.progress["cpu_seconds"] = (
            self.cpu_seconds_at_start + time.process_time() - self.cpu_started
        )
        return loss.item()

    def fraction_done(self) -> float:
        by_steps = self.progress["step"] / max(1, self.total_steps)
        if self.config.max_minutes is None:
            return by_steps
        return max(by_steps, self.progress["seconds"] / (60 * self.config.max_minutes))

    def end_of_epoch(self, val: BoardSet, train_loss: float | None, epoch_done: bool) -> None:
        scores = validate(self.model, val)
        key = (scores["exact_boards"], scores["per_square"])
        if self.progress["best"] is None or key > tuple(self.progress["best"]):
            self.progress["best"] = list(key)
            save_checkpoint(self.model, self.out, self.checkpoint_config(scores))
        self.save_state()
        record = {
            "epoch": self.progress["epoch"] + (0 if epoch_done else 1),
            "complete": epoch_done,
            "step": self.progress["step"],
            "minutes": round(self.progress["seconds"] / 60, 2),
            "cpu_minutes": round(self.progress["cpu_seconds"] / 60, 2),
            "train_loss": train_loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            **{f"val_{name}": value for name, value in scores.items()},
        }
        with JsonlAppender(self.out / LOG_FILE, key="step") as log:
            log.write(record)
        tqdm.write(
            f"epoch {record['epoch']}: val per-square {scores['per_square']:.5f}, "
            f"exact {scores['exact_boards']:.4f}, orientation {scores['orientation']:.4f}, "
            f"box error {scores['box_error_squares']:.3f} squares"
        )

    def checkpoint_config(self, scores: dict[str, float]) -> dict[str, Any]:
        return {
            "kind": "reader",
            "spec": self.model.spec.to_dict(),
            "classes": list(SQUARE_CLASSES),
            "decode": "argmax",
            "predicts_to_move": reads_side_to_move(scores),
            "val": scores,
            "epoch": self.progress["epoch"],
            "train_minutes": round(self.progress["seconds"] / 60, 2),
            "train_cpu_minutes": round(self.progress["cpu_seconds"] / 60, 2),
            "train_precision": self.precision,
            "train_black_to_move_rate": self.train_to_move_rate,
            "data_dir": str(self.config.data_dir),
            "train_samples": len(self.train),
            "batch_size": self.config.batch_size,
            "learning_rate": self.lr,
            "augment": self.config.augment,
            "zoom_views": list(self.config.zoom_views),
        }

    def finish(self, val: BoardSet) -> None:
        """Choose the decoding of the best checkpoint on validation and record both scores."""
        reader = load_reader(self.out)
        best, by_decode = score_decodings(reader.model, val)
        config = {**reader.config, "decode": best, "val_by_decode": by_decode}
        config["train_minutes"] = round(self.progress["seconds"] / 60, 2)
        config["train_cpu_minutes"] = round(self.progress["cpu_seconds"] / 60, 2)
        config["steps"] = self.progress["step"]
        epochs = self.progress["step"] * self.config.batch_size / len(self.train)
        config["epochs_trained"] = round(epochs, 2)
        atomic_write_json(self.out / CONFIG_FILE, config)
        tqdm.write(
            f"best checkpoint: val exact boards {by_decode[best]['exact_boards']:.4f} "
            f"with {best} decoding ({self.out})"
        )

    def save_state(self) -> None:
        buffer = io.BytesIO()
        torch.save(
            {
                "spec": self.model.spec.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "progress": self.progress,
                "config": asdict(self.config),
            },
            buffer,
        )
        atomic_write_bytes(self.out / STATE_FILE, buffer.getvalue())
        self.last_save = time.monotonic()


def spare_core() -> bool:
    """Whether this process may run on more cores than torch's threads use (one is then free
    to augment the next batch while the network trains)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (cores or 1) > torch.get_num_threads()


def _meta_loss(logits: torch.Tensor, boards: BoardSet, indices: torch.Tensor) -> torch.Tensor:
    """The weighted binary cross-entropy of each meta output (`META_OUTPUTS`), by name."""
    flipped, coordinates = boards.flipped[indices], boards.coordinates[indices]
    targets = {
        "flipped": flipped,
        "black_to_move": boards.black_to_move[indices],
        # Only boards that draw coordinates show the orientation in them.
        "flipped_by_coordinates": flipped,
        "coordinates": coordinates,
    }
    ones = torch.ones(len(indices))
    weights = {
        "flipped": ones,
        "black_to_move": TO_MOVE_LOSS_WEIGHT * ones,
        "flipped_by_coordinates": coordinates.float(),
        "coordinates": ones,
    }
    target = torch.stack([targets[name] for name in META_OUTPUTS], 1).float()
    weight = torch.stack([weights[name] for name in META_OUTPUTS], 1)
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (losses * weight).sum(1).mean()


def _schedule(fraction: float) -> float:
    """Learning-rate factor: linear warm-up over the first 3%, then cosine down to 2%."""
    if fraction < 0.03:
        return max(fraction / 0.03, 0.01)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (fraction - 0.03) / 0.97)))
    return 0.02 + 0.98 * cosine


def reads_side_to_move(scores: dict[str, float]) -> bool:
    """Whether validation `scores` show the side to move read well enough, and well enough
    above always guessing the commoner side, for readings to report it."""
    gain = scores["to_move"] - scores["to_move_majority"]
    return scores["to_move"] >= TO_MOVE_MIN_ACCURACY and gain >= TO_MOVE_MIN_GAIN


def score_decodings(
    model: BoardReader | ReaderEnsemble, val: BoardSet
) -> tuple[str, dict[str, dict[str, float]]]:
    """`validate` with each decoding, and the one with the most exact boards (argmax on a
    tie: it is the cheaper)."""
    by_decode = {decode: validate(model, val, decode=decode) for decode in DECODERS}
    best = max(DECODERS, key=lambda d: (by_decode[d]["exact_boards"], d == "argmax"))
    return best, by_decode


def validate(
    model: BoardReader | ReaderEnsemble,
    boards: BoardSet,
    *,
    decode: str = "argmax",
    batch_size: int = 128,
) -> dict[str, float]:
    """Per-square accuracy, exact boards, orientation and side-to-move accuracy on a split."""
    was_training = model.training
    model.eval()
    right_squares = exact = right_orientation = right_to_move = 0
    box_errors = []
    for start in range(0, len(boards), batch_size):
        chunk = slice(start, start + batch_size)
        outputs = run_network(model, boards.images[chunk])
        readings = decode_outputs(*outputs, decode, with_to_move=True)
        box_errors.append(
            box_error_in_squares(locate(model, boards.scenes[chunk]), boards.boxes[chunk])
        )
        for offset, reading in enumerate(readings):
            index = start + offset
            predicted = square_labels(reading.board.board_fen())
            hits = sum(
                a == b for a, b in zip(boards.labels[index].tolist(), predicted, strict=True)
            )
            right_squares += hits
            exact += hits == 64
            right_orientation += reading.flipped == bool(boards.flipped[index])
            black = (reading.black_to_move_probability or 0.0) > 0.5
            right_to_move += black == bool(boards.black_to_move[index])
    model.train(was_training)
    n = len(boards)
    black_rate = float(boards.black_to_move.float().mean())
    box_error = torch.cat(box_errors)
    return {
        "per_square": right_squares / (64 * n),
        "exact_boards": exact / n,
        "orientation": right_orientation / n,
        "to_move": right_to_move / n,
        "to_move_majority": max(black_rate, 1 - black_rate),
        "box_error_squares": float(box_error.mean()),
        "box_within_eighth_square": float((box_error <= 0.125).float().mean()),
        "n": n,
    }
