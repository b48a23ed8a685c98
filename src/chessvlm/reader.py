"""The fast board reader: training, checkpoints, batched reading and evaluation.

A reader checkpoint is a folder with `reader.json` (what was built, how it decodes, what it
scored on validation) and `reader.safetensors` (the weights). Training also keeps
`train_state.pt` (optimizer and progress, to resume) and `train_log.jsonl` (one line an epoch).

Networks and the square-order geometry are in `reader_model`, image decoding in
`reader_images`, augmentation in `reader_augment`.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import chess
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm import tqdm

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.io import (
    JsonlAppender,
    atomic_write_bytes,
    atomic_write_json,
    iter_jsonl,
    read_jsonl,
)
from chessvlm.positions import SQUARE_CLASSES, AnswerError, board_from_fen, square_symbols
from chessvlm.reader_augment import augment_batch, augment_scenes
from chessvlm.reader_images import (
    SOURCE_SIZE,
    crop_board,
    iter_loaded,
    load_board_views,
    load_scene,
    scene_array,
)
from chessvlm.reader_model import (
    LOCATOR_SIZE,
    META_OUTPUTS,
    BoardReader,
    ReaderSpec,
    decode_squares,
    square_loss,
    to_image_order,
    to_square_order,
)

WEIGHTS_FILE = "reader.safetensors"
CONFIG_FILE = "reader.json"
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"
DECODERS = ("argmax", "chess_rules")
# Learning rates by encoder: a from-scratch CNN wants a large one, a pretrained ViT a small
# one (a frozen ViT trains only the heads, so it can take the CNN's).
DEFAULT_LR = {"cnn": 2e-3, "clip": 1e-4}
# Weight of the side-to-move loss: usually unlearnable from the image, it must not drown
# the square and orientation losses in noise.
TO_MOVE_LOSS_WEIGHT = 0.1
# Box errors are fractions of the image (a square of a full-frame board is 0.125): the L1 loss
# is scaled so that an error of an eighth of a square weighs about as much as a wrong square.
LOCATOR_LOSS_WEIGHT = 20.0
# The checkpoint layout this code writes and reads (2: the board locator and the coordinates
# output were added).
CHECKPOINT_FORMAT = 2
# Side to move counts as read from the image only when validation shows it clearly.
TO_MOVE_MIN_ACCURACY = 0.95
TO_MOVE_MIN_GAIN = 0.05


@dataclass
class ReaderTrainConfig:
    """Everything `train_reader` needs; the CLI builds one from its flags."""

    data_dir: str
    out: str
    encoder: str = "cnn"
    image_size: int = 256
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
    workers: int = 2
    save_every_minutes: float = 2.0

    def spec(self) -> ReaderSpec:
        """The network this config trains."""
        return ReaderSpec(
            encoder=self.encoder,
            image_size=self.image_size,
            clip_model=self.clip_model,
            clip_config=dict(self.clip_config),
            freeze_encoder=self.freeze_encoder,
        )


@dataclass
class BoardSet:
    """A split decoded into memory: boards as uint8 tensors and their labels."""

    ids: list[str]
    images: torch.Tensor  # N x 3 x S x S, uint8
    labels: torch.Tensor  # N x 64 class indices, square order (a1 first)
    flipped: torch.Tensor  # N, bool: black at the bottom
    black_to_move: torch.Tensor  # N, bool
    coordinates: torch.Tensor  # N, bool: coordinates drawn inside the edge squares
    scenes: torch.Tensor  # N x 3 x L x L, uint8: the whole image, as the locator sees it
    boxes: torch.Tensor  # N x 4: the board's squares as fractions of the image

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class BoardReading:
    """One board read by the reader.

    `board` holds the placement in standard orientation only (white to move, no castling):
    metadata is not in the image and is the caller's to add. `black_to_move_probability` is
    None unless the checkpoint learned the side to move (`Reader.predicts_to_move`).
    `coordinates_probability` is that of coordinates drawn in the edge squares; `box` is where
    the squares are in the image, in its pixels (left, top, right, bottom), when it was located.
    """

    board: chess.Board
    flipped: bool
    flipped_probability: float
    black_to_move_probability: float | None
    min_square_confidence: float
    coordinates_probability: float
    box: tuple[float, float, float, float] | None = None

    @property
    def orientation_shown(self) -> bool:
        """Whether the board shows which side is at the bottom: pawns (which way they stand,
        and where) or coordinates. Without either, a board from black's side is the exact
        picture of the mirrored position from white's, and the orientation is a guess."""
        pawns = self.board.pawns
        return bool(pawns) or self.coordinates_probability > 0.5


@dataclass
class Reader:
    """A loaded reader checkpoint, ready to read boards."""

    model: BoardReader
    config: dict[str, Any]
    path: Path

    @property
    def image_size(self) -> int:
        """Side of the square the boards are resized to."""
        return int(self.config["spec"]["image_size"])

    @property
    def predicts_to_move(self) -> bool:
        """Whether validation showed that the side to move can be read from these images."""
        return bool(self.config.get("predicts_to_move"))

    @property
    def decode(self) -> str:
        """The decoding that did best on validation (`argmax` or `chess_rules`)."""
        return str(self.config.get("decode", "argmax"))


# --------------------------------------------------------------------------- data


def read_split(data_dir: str | Path, split: str, limit: int | None = None) -> list[dict]:
    """The records of `DIR/{split}.jsonl`, checked for the keys the reader needs."""
    path = Path(data_dir) / f"{split}.jsonl"
    records = []
    for line, record in iter_jsonl(path):
        missing = [key for key in ("id", "image_path", "fen") if key not in record]
        if missing:
            raise InputError(str(path), f"record lacks {', '.join(missing)}", line=line)
        try:
            board_from_fen(str(record["fen"]))
        except AnswerError as error:
            raise InputError(str(path), str(error), line=line) from None
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise InputError(str(path), "no records")
    return records


def square_labels(fen: str) -> list[int]:
    """The 13-way class of each square (python-chess order) of a FEN's placement."""
    return [SQUARE_CLASSES.index(symbol) for symbol in square_symbols(board_from_fen(fen))]


def load_board_set(
    data_dir: str | Path, records: list[dict], image_size: int, *, workers: int, desc: str
) -> BoardSet:
    """Decode every record's image (strict: an unreadable training image is an error): its
    board cut out at the record's `board_box` (the whole image without one) and the whole
    image for the locator."""
    n = len(records)
    images = torch.empty((n, 3, image_size, image_size), dtype=torch.uint8)
    scenes = torch.empty((n, 3, LOCATOR_SIZE, LOCATOR_SIZE), dtype=torch.uint8)
    boxes = torch.empty((n, 4))
    jobs = [
        (Path(data_dir) / str(record["image_path"]), _pixel_box(record, data_dir))
        for record in records
    ]

    def load(job: tuple[Path, list[float] | None]) -> tuple:
        return load_board_views(job[0], image_size, LOCATOR_SIZE, job[1])

    loaded = iter_loaded(jobs, load, workers=workers)
    for index, (views, error) in enumerate(tqdm(loaded, total=n, desc=desc)):
        if error is not None:
            raise InputError(str(error.source), f"{error.problem} (sample {records[index]['id']})")
        crop, scene, box = views
        images[index] = torch.from_numpy(crop).permute(2, 0, 1)
        scenes[index] = torch.from_numpy(scene).permute(2, 0, 1)
        boxes[index] = torch.tensor(box)
    return BoardSet(
        ids=[str(record["id"]) for record in records],
        images=images,
        labels=torch.tensor([square_labels(str(record["fen"])) for record in records]),
        flipped=torch.tensor([bool(record.get("flipped", False)) for record in records]),
        black_to_move=torch.tensor([_black_to_move(record) for record in records]),
        coordinates=torch.tensor([shows_coordinates(record) for record in records]),
        scenes=scenes,
        boxes=boxes,
    )


def _pixel_box(record: dict, data_dir: str | Path) -> list[float] | None:
    from chessvlm.datasets import board_box_problem

    box = record.get("board_box")
    if box is None:
        return None
    problem = board_box_problem(box)
    if problem is not None:
        image = str(Path(data_dir) / str(record["image_path"]))
        raise InputError(image, f"{problem} (sample {record['id']})")
    return [float(value) for value in box]


def shows_coordinates(record: dict) -> bool:
    """Whether a record's image draws coordinates inside the board's edge squares (the ones
    the reader sees: coordinates outside the squares are cut off with the margin)."""
    if "coordinates" in record:
        return record["coordinates"] == "inside"
    # Datasets made before the field: the style names the look, coordinates inside.
    return "coords" in str(record.get("style", "")).split("/")


def _black_to_move(record: dict) -> bool:
    color = record.get("active_color")
    if not color:
        return board_from_fen(str(record["fen"])).turn == chess.BLACK
    return str(color).lower() in ("b", "black")


def image_order_labels(labels: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Per-square labels (square order) rearranged to the cells where each image shows them."""
    return torch.where(
        flipped.view(-1, 1), to_image_order(labels, True), to_image_order(labels, False)
    )


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: BoardReader, out: Path, config: dict[str, Any]) -> None:
    """Write `reader.safetensors` then `reader.json` (stamped with `CHECKPOINT_FORMAT`), each
    atomically."""
    tensors = {name: t.detach().contiguous() for name, t in model.trainable_state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_FILE, save_safetensors(tensors))
    atomic_write_json(out / CONFIG_FILE, {"format": CHECKPOINT_FORMAT, **config})


def is_reader_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a reader checkpoint folder (as opposed to a VLM)."""
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / WEIGHTS_FILE).is_file()


def load_reader(path: str | Path) -> Reader:
    """Load a reader checkpoint folder for inference (eval mode, CPU)."""
    path = Path(path)
    if not is_reader_checkpoint(path):
        raise ChessVLMError(
            f"{path}: not a reader checkpoint (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    config = _read_config(path / CONFIG_FILE)
    if config.get("format") != CHECKPOINT_FORMAT:
        raise ChessVLMError(
            f"{path}: a reader checkpoint of format {config.get('format')}, made by an older "
            f"chessvlm (this one reads format {CHECKPOINT_FORMAT}: with a board locator); "
            "train it again with `chessvlm reader train`"
        )
    spec = ReaderSpec.from_dict(config["spec"])
    # Weights in the file replace the encoder's, so a pretrained ViT is fetched only when the
    # checkpoint left it out (frozen).
    model = BoardReader(spec, pretrained=spec.freeze_encoder and spec.clip_model is not None)
    tensors = load_safetensors((path / WEIGHTS_FILE).read_bytes())
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [name for name in missing if name in model.trainable_state_dict()]
    if missing or unexpected:
        raise ChessVLMError(f"{path / WEIGHTS_FILE}: weights do not fit {CONFIG_FILE}")
    _prepare_for_cpu(model)
    return Reader(model=model.eval(), config=config, path=path)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(str(path), f"cannot read ({error})") from None
    if not isinstance(data, dict) or "spec" not in data:
        raise InputError(str(path), "not a reader config (no 'spec')")
    return data


def _prepare_for_cpu(model: BoardReader) -> None:
    # Channels-last convolutions ran about 1.7x faster on this CPU (bench/bench_reader.py).
    if model.spec.encoder == "cnn":
        model.to(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- reading


def read_arrays(
    reader: Reader,
    arrays: Sequence[np.ndarray] | torch.Tensor,
    decode: str | None = None,
    flipped: Sequence[bool | None] | None = None,
) -> list[BoardReading]:
    """Read a batch of boards already cut to their squares (`load_board_image` arrays, or
    uint8 N x 3 x S x S).

    `flipped` gives, per board, a known orientation (True: black at the bottom) that replaces
    the predicted one, or None to use the prediction.
    """
    if isinstance(arrays, torch.Tensor):
        batch = arrays
    else:
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    log_probs, meta = _run(reader.model, batch)
    return _decode_outputs(
        log_probs, meta, decode or reader.decode, reader.predicts_to_move, flipped
    )


def read_images(
    reader: Reader,
    images: Sequence[Image.Image],
    scenes: Sequence[np.ndarray],
    decode: str | None = None,
    flipped: Sequence[bool | None] | None = None,
) -> list[BoardReading]:
    """Read whole images (`load_scene`'s image and scene): locate each board, cut out its
    squares, read them. Each reading's `box` is in the image file's pixels."""
    boxes = locate(reader.model, torch.from_numpy(np.stack(scenes)).permute(0, 3, 1, 2))
    crops = [
        crop_board(image, box, reader.image_size)
        for image, box in zip(images, boxes.tolist(), strict=True)
    ]
    readings = read_arrays(reader, crops, decode, flipped)
    for reading, image, box in zip(readings, images, boxes.tolist(), strict=True):
        width, height = image.info.get(SOURCE_SIZE, image.size)
        reading.box = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    return readings


def locate_boards(
    reader: Reader, images: Sequence[Image.Image]
) -> list[tuple[float, float, float, float]]:
    """Where each image's board squares are, as fractions of the image (left, top, right,
    bottom): the reader's locator, for any model that reads cropped boards (e.g. a VLM)."""
    if not images:
        return []
    scenes = np.stack([scene_array(image, LOCATOR_SIZE) for image in images])
    boxes = locate(reader.model, torch.from_numpy(scenes).permute(0, 3, 1, 2))
    return [tuple(box) for box in boxes.tolist()]


@torch.inference_mode()
def locate(model: BoardReader, scenes: torch.Tensor) -> torch.Tensor:
    """uint8 whole images N x 3 x L x L -> the boards' boxes N x 4 (fractions of the image)."""
    pixels = scenes.float().div_(255.0).contiguous(memory_format=torch.channels_last)
    return model.locator(pixels)


@torch.inference_mode()
def _run(model: BoardReader, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 boards -> (square log-probabilities B x 64 x 13 in image order, meta probabilities)."""
    images = batch.float().div_(255.0).contiguous(memory_format=torch.channels_last)
    square_logits, meta_logits = model(images)
    return square_logits.log_softmax(dim=-1), meta_logits.sigmoid()


def _decode_outputs(
    log_probs: torch.Tensor,
    meta: torch.Tensor,
    decode: str,
    with_to_move: bool,
    known_flips: Sequence[bool | None] | None = None,
) -> list[BoardReading]:
    if decode not in DECODERS:
        raise ChessVLMError(f"unknown decoding {decode!r}; choose from {', '.join(DECODERS)}")
    readings = []
    known_flips = known_flips or [None] * len(log_probs)
    outputs = zip(log_probs, meta.tolist(), known_flips, strict=True)
    for cells, meta_probabilities, known in outputs:
        named = dict(zip(META_OUTPUTS, meta_probabilities, strict=True))
        flipped = named["flipped"] > 0.5 if known is None else known
        in_squares = to_square_order(cells, flipped, dim=0)
        classes = decode_squares(in_squares, chess_rules=decode == "chess_rules")
        chosen = in_squares.gather(1, torch.tensor(classes).unsqueeze(1))
        readings.append(
            BoardReading(
                board=_board_from_classes(classes),
                flipped=flipped,
                flipped_probability=named["flipped"],
                black_to_move_probability=named["black_to_move"] if with_to_move else None,
                min_square_confidence=float(chosen.min().exp()),
                coordinates_probability=named["coordinates"],
            )
        )
    return readings


def _board_from_classes(classes: Sequence[int]) -> chess.Board:
    board = chess.Board(None)
    for square, index in enumerate(classes):
        if index:
            board.set_piece_at(square, chess.Piece.from_symbol(SQUARE_CLASSES[index]))
    return board


_Pending = tuple[str | Path, tuple[Image.Image, np.ndarray] | None, InputError | None, bool | None]


def predict_boards(
    reader: Reader,
    sources: Sequence[str | Path],
    *,
    batch_size: int = 64,
    workers: int = 2,
    decode: str | None = None,
    flipped: Sequence[bool | None] | None = None,
) -> Iterator[tuple[str | Path, BoardReading | None, InputError | None]]:
    """Read image files in batches (`read_images`): `(source, reading, None)` or
    `(source, None, error)` each, in input order; a bad file gives its error and the others
    go on. `flipped`, aligned with `sources`, gives known orientations (see `read_arrays`)."""
    pending: list[_Pending] = []
    load = partial(load_scene, size=reader.image_size, scene_size=LOCATOR_SIZE)
    loaded = iter_loaded(sources, load, workers=workers, lookahead=2 * batch_size)
    flips = flipped if flipped is not None else [None] * len(sources)
    for source, (views, error), known in zip(sources, loaded, flips, strict=True):
        pending.append((source, views, error, known))
        if sum(item[1] is not None for item in pending) >= batch_size:
            yield from _flush(reader, pending, decode)
            pending = []
    yield from _flush(reader, pending, decode)


def _flush(
    reader: Reader, pending: list[_Pending], decode: str | None
) -> Iterator[tuple[str | Path, BoardReading | None, InputError | None]]:
    good = [(views, known) for _, views, _, known in pending if views is not None]
    images = [views[0] for views, _ in good]
    scenes = [views[1] for views, _ in good]
    flips = [known for _, known in good]
    readings = iter(read_images(reader, images, scenes, decode, flips) if good else [])
    for source, views, error, _ in pending:
        yield source, (next(readings) if views is not None else None), error


# --------------------------------------------------------------------------- training


def train_reader(config: ReaderTrainConfig) -> Path:
    """Train a reader on a JSON dataset; returns the checkpoint folder (`config.out`).

    Keeps the best epoch by validation exact boards (then per-square accuracy), saves a
    resumable state every `save_every_minutes` and at each epoch, and resumes from it when
    run again with the same `out`. `max_minutes` bounds the total training time (over resumes);
    the learning-rate schedule follows whichever of epochs or minutes runs out first.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out, config)
    spec = ReaderSpec.from_dict(state["spec"]) if state else config.spec()
    torch.manual_seed(config.seed)
    model = BoardReader(spec)
    _prepare_for_cpu(model)
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
    trainer = _Trainer(model, optimizer, lr, config, out, progress)
    trainer.run(train, val)
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


class _Trainer:
    """The training loop's state, so that each part of it stays small."""

    def __init__(
        self,
        model: BoardReader,
        optimizer: torch.optim.Optimizer,
        lr: float,
        config: ReaderTrainConfig,
        out: Path,
        progress: dict,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.lr = lr
        self.config = config
        self.out = out
        self.progress = progress
        self.started = time.monotonic()
        self.seconds_at_start = progress["seconds"]
        self.cpu_started = time.process_time()
        self.cpu_seconds_at_start = progress.get("cpu_seconds", 0.0)
        self.last_save = self.started

    def seconds(self) -> float:
        return self.seconds_at_start + time.monotonic() - self.started

    def run(self, train: BoardSet, val: BoardSet) -> None:
        train_cells = image_order_labels(train.labels, train.flipped)
        batches_per_epoch = math.ceil(len(train) / self.config.batch_size)
        self.total_steps = batches_per_epoch * self.config.epochs
        self.train_to_move_rate = float(train.black_to_move.float().mean())
        self.train_samples = len(train)
        while not _finished(self.progress, self.config):
            epoch = self.progress["epoch"]
            order = torch.randperm(
                len(train), generator=torch.Generator().manual_seed(self.config.seed * 7919 + epoch)
            )
            batches = order.split(self.config.batch_size)
            bar = tqdm(
                range(self.progress["batch"], len(batches)),
                desc=f"epoch {epoch + 1}/{self.config.epochs}",
                initial=self.progress["batch"],
                total=len(batches),
            )
            losses = []
            for index in bar:
                losses.append(self.step(train, train_cells, batches[index]))
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

    def step(self, train: BoardSet, train_cells: torch.Tensor, indices: torch.Tensor) -> float:
        self.model.train()
        generator = torch.Generator().manual_seed(
            self.config.seed * 1_000_003 + self.progress["step"]
        )
        images, scenes, boxes = train.images[indices], train.scenes[indices], train.boxes[indices]
        if self.config.augment:
            pixels = augment_batch(images, generator)
            scene_pixels, boxes = augment_scenes(scenes, boxes, generator)
        else:
            pixels, scene_pixels = images.float() / 255, scenes.float() / 255
        channels_last = torch.channels_last
        square_logits, meta_logits = self.model(pixels.contiguous(memory_format=channels_last))
        located = self.model.locator(scene_pixels.contiguous(memory_format=channels_last))
        loss = (
            square_loss(square_logits, train_cells[indices])
            + _meta_loss(meta_logits, train, indices)
            + LOCATOR_LOSS_WEIGHT * torch.nn.functional.l1_loss(located, boxes)
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
        to_move_gain = scores["to_move"] - scores["to_move_majority"]
        return {
            "kind": "reader",
            "spec": self.model.spec.to_dict(),
            "classes": list(SQUARE_CLASSES),
            "decode": "argmax",
            "predicts_to_move": scores["to_move"] >= TO_MOVE_MIN_ACCURACY
            and to_move_gain >= TO_MOVE_MIN_GAIN,
            "val": scores,
            "epoch": self.progress["epoch"],
            "train_minutes": round(self.progress["seconds"] / 60, 2),
            "train_cpu_minutes": round(self.progress["cpu_seconds"] / 60, 2),
            "train_black_to_move_rate": self.train_to_move_rate,
            "data_dir": str(self.config.data_dir),
            "train_samples": self.train_samples,
            "batch_size": self.config.batch_size,
            "learning_rate": self.lr,
            "augment": self.config.augment,
        }

    def finish(self, val: BoardSet) -> None:
        """Choose the decoding of the best checkpoint on validation and record both scores."""
        reader = load_reader(self.out)
        by_decode = {decode: validate(reader.model, val, decode=decode) for decode in DECODERS}
        best = max(DECODERS, key=lambda d: (by_decode[d]["exact_boards"], d == "argmax"))
        config = {**reader.config, "decode": best, "val_by_decode": by_decode}
        config["train_minutes"] = round(self.progress["seconds"] / 60, 2)
        config["train_cpu_minutes"] = round(self.progress["cpu_seconds"] / 60, 2)
        config["steps"] = self.progress["step"]
        epochs = self.progress["step"] * self.config.batch_size / self.train_samples
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


def validate(
    model: BoardReader, boards: BoardSet, *, decode: str = "argmax", batch_size: int = 128
) -> dict[str, float]:
    """Per-square accuracy, exact boards, orientation and side-to-move accuracy on a split."""
    was_training = model.training
    model.eval()
    right_squares = exact = right_orientation = right_to_move = 0
    box_errors = []
    for start in range(0, len(boards), batch_size):
        chunk = slice(start, start + batch_size)
        readings = _decode_outputs(*_run(model, boards.images[chunk]), decode, with_to_move=True)
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


def box_error_in_squares(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per board, the largest error of the four box edges, in squares of the true board."""
    square = (true[:, 2:] - true[:, :2]).repeat(1, 2) / 8
    return ((predicted - true).abs() / square).amax(dim=1)


# --------------------------------------------------------------------------- evaluation


@dataclass
class ReaderEvalConfig:
    """Everything `evaluate_reader` needs; the CLI builds one from its flags."""

    model: str
    data_dir: str
    output: str
    split: str = "test"
    batch_size: int = 64
    max_samples: int | None = None
    decode: str | None = None
    name: str | None = None
    workers: int = 2
    orientation: str = "predicted"


ORIENTATIONS = ("predicted", "given")


def evaluate_reader(config: ReaderEvalConfig) -> dict:
    """Read a split's boards into `OUTPUT/predictions.jsonl` (resumable) and score them.

    Writes `metrics.json` (`chessvlm.metrics.compute_metrics`, compact target: placement)
    and `run.json` (what was evaluated, for `chessvlm report`), and returns the metrics.
    With `orientation="given"` each board is read in the orientation its label states (as
    when a user says which side is at the bottom) instead of the predicted one; the
    predictions' `flipped_pred` stays the model's own guess.
    """
    from chessvlm.metrics import compute_metrics

    if config.orientation not in ORIENTATIONS:
        raise ChessVLMError(f"orientation must be one of {', '.join(ORIENTATIONS)}")
    out = Path(config.output)
    started = time.monotonic()
    reader = load_reader(config.model)
    load_seconds = time.monotonic() - started
    records = read_split(config.data_dir, config.split, config.max_samples)
    predictions_path = out / "predictions.jsonl"
    with JsonlAppender(predictions_path) as appender:
        todo = [record for record in records if str(record["id"]) not in appender.done_ids]
        _predict_records(reader, config, todo, appender)
    wanted = {str(record["id"]) for record in records}
    predictions = [p for p in read_jsonl(predictions_path) if str(p["id"]) in wanted]
    elapsed = sum(float(p.get("seconds", 0.0)) for p in predictions)
    metrics = compute_metrics(records, predictions, target="compact", elapsed_seconds=elapsed)
    metrics["reader"] = _reader_figures(reader, records, predictions, load_seconds, config)
    atomic_write_json(out / "metrics.json", metrics)
    from chessvlm.reports import write_run_info

    trained = reader.config
    train_minutes = trained.get("train_minutes")
    write_run_info(
        out,
        name=config.name or f"reader ({trained['spec']['encoder']})",
        model=str(config.model),
        target="compact",
        train_data=Path(trained["data_dir"]) / "train.jsonl" if "data_dir" in trained else None,
        train_samples=trained.get("train_samples"),
        steps=trained.get("steps"),
        epochs=trained.get("epochs_trained"),
        recipe=describe_reader_recipe(trained),
        train_seconds=None if train_minutes is None else train_minutes * 60,
        test_data=Path(config.data_dir) / f"{config.split}.jsonl",
        image_base_dir=config.data_dir,
        predictions=predictions_path,
        eval_seconds=elapsed,
        device="cpu",
        notes=f"board reader, {metrics['reader']['decode']} decoding",
    )
    return metrics


def describe_reader_recipe(config: dict[str, Any]) -> str:
    """One line on how a reader was trained, from its checkpoint config."""
    spec = config["spec"]
    parts = [f"{spec['encoder'].upper()} encoder" + (", frozen" if spec["freeze_encoder"] else "")]
    if "batch_size" in config:
        parts.append(f"batch {config['batch_size']}, lr {config['learning_rate']:g}")
        parts.append("augmented images" if config["augment"] else "no augmentation")
    parts.append(f"{spec['image_size']} px")
    parts.append(f"kept the best epoch by val exact boards (epoch {config['epoch']})")
    parts.append(f"{config.get('decode', 'argmax')} decoding")
    return "; ".join(parts)


def _predict_records(
    reader: Reader, config: ReaderEvalConfig, records: list[dict], appender: JsonlAppender
) -> None:
    paths = [Path(config.data_dir) / str(record["image_path"]) for record in records]
    given = config.orientation == "given"
    results = predict_boards(
        reader,
        paths,
        batch_size=config.batch_size,
        workers=config.workers,
        decode=config.decode,
        flipped=[bool(record.get("flipped", False)) for record in records] if given else None,
    )
    bar = tqdm(total=len(records), desc=f"reading {config.split}")
    last = time.monotonic()
    batch: list[dict] = []
    for record, (_, reading, error) in zip(records, results, strict=True):
        if reading is None:
            batch.append({"id": record["id"], "error": str(error)})
        else:
            batch.append(
                {
                    "id": record["id"],
                    "fen": reading.board.board_fen(),
                    "flipped_pred": reading.flipped_probability > 0.5,
                    "box": [round(value, 2) for value in reading.box or ()],
                }
            )
        if len(batch) >= config.batch_size:
            last = _write_timed(appender, batch, last)
            bar.update(len(batch))
            batch = []
    _write_timed(appender, batch, last)
    bar.update(len(batch))
    bar.close()


def _write_timed(appender: JsonlAppender, batch: list[dict], since: float) -> float:
    now = time.monotonic()
    # Each sample's share of its batch's wall time, decoding included, so boards/s survives resumes.
    for prediction in batch:
        prediction["seconds"] = (now - since) / len(batch)
        appender.write(prediction)
    return now


def _reader_figures(
    reader: Reader,
    records: list[dict],
    predictions: list[dict],
    load_seconds: float,
    config: ReaderEvalConfig,
) -> dict:
    by_id = {str(p["id"]): p for p in predictions}
    read = [(r, by_id[str(r["id"])]) for r in records if "fen" in by_id.get(str(r["id"]), {})]
    oriented = [p.get("flipped_pred") == bool(r.get("flipped", False)) for r, p in read]
    # The orientation target: boards that show it by their pawns alone.
    by_pawns = [
        p.get("flipped_pred") == bool(r.get("flipped", False))
        for r, p in read
        if not _draws_coordinates(r) and _pawns(str(r["fen"])) >= 4
    ]
    box_errors = [
        float(box_error_in_squares(torch.tensor([p["box"]]), torch.tensor([r["board_box"]])))
        for r, p in read
        if r.get("board_box") and p.get("box")
    ]
    return {
        "decode": config.decode or reader.decode,
        "orientation": config.orientation,
        "orientation_accuracy": _mean(oriented),
        "orientation_accuracy_pawns_no_coordinates": _mean(by_pawns),
        "boards_pawns_no_coordinates": len(by_pawns),
        "box_error_squares": _mean(box_errors),
        "box_within_eighth_square": _mean([error <= 0.125 for error in box_errors]),
        "model_load_seconds": round(load_seconds, 3),
        "encoder": reader.config["spec"]["encoder"],
        "train_minutes": reader.config.get("train_minutes"),
    }


def _pawns(fen: str) -> int:
    return chess.popcount(board_from_fen(fen).pawns)


def _draws_coordinates(record: dict) -> bool:
    """Coordinates anywhere in the image: inside the squares or outside them."""
    return record.get("coordinates", "none") != "none" or shows_coordinates(record)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
