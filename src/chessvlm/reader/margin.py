"""Which side is at the bottom, from coordinates printed outside the board.

Books, magazines and many programs print the files below the board and the ranks left of it,
in a band outside the squares. The reader reads the squares only, so it never sees them: on
1,000 unseen-design boards the shipped pair read 8 of the 201 boards with outside coordinates
the wrong way up, against 3 of the 209 with coordinates inside the squares (docs/reader.md).

`MarginReader` is a small network over two strips cut just outside the located board: one
square deep below the bottom edge, and one left of the left edge, turned to lie along it
(`margin_strips`). It says whether they hold coordinates and, if so, whether they read as
from black's side (h..a along the bottom, 1..8 down the left). It learns from the boards of
a dataset and from scenes of the same designs (screenshots and pages, where player names,
clocks and captions stand beside a board, and are not coordinates), each board cut at its
labelled box moved by up to `MarginRecipe.jitter` of a square, as found boxes are off. Its
log-odds join the reading's orientation
(`chessvlm.reader.orientation.combined_flipped_probability`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from chessvlm.errors import InputError
from chessvlm.io import read_jsonl
from chessvlm.reader.default import DEFAULT_MARGIN_READER
from chessvlm.reader.images import open_board_image
from chessvlm.reader.model import fold_batch_norms
from chessvlm.reader.shipped import load_weights, network_config, save_network

MARGIN_WEIGHTS_FILE = "margin.safetensors"
MARGIN_CONFIG_FILE = "margin.json"
MARGIN_FILES = (MARGIN_WEIGHTS_FILE, MARGIN_CONFIG_FILE)
# Pixels per square in the strips: outside coordinates are about half a square tall, so a
# label gets 10-12 px, enough to tell its letter.
CELL = 16
# How far the strips reach from the board's edge, in squares: the renderer's band (0.44 of a
# square) outside its widest frame (0.44) fits, and a book's coordinates sit nearer.
DEPTH = 1.0
STRIP_HEIGHT = round(CELL * DEPTH)
STRIP_WIDTH = 8 * CELL
# The strips' geometry, stored with a margin reader's weights: they read only strips cut alike.
STRIPS = {"cell": CELL, "depth": DEPTH}
OUTPUTS = ("outside_coordinates", "flipped")


@dataclass(frozen=True)
class MarginRecipe:
    """How a margin reader is made from a dataset's training and validation boards."""

    widths: tuple[int, ...] = (8, 16, 32, 32)
    hidden: int = 32
    scenes: int = 2000  # drawn with the seen designs (`chessvlm.scenes.write_scenes`)
    epochs: int = 6
    cuts_per_board: int = 2
    jitter: float = 0.3  # of a square, each edge of the labelled box
    batch_size: int = 128
    learning_rate: float = 2e-3
    seed: int = 0

    def to_dict(self) -> dict:
        """JSON-ready form, stored in `margin.json`."""
        return asdict(self) | {"widths": list(self.widths)}


class MarginReader(nn.Module):
    """A CNN from the two strips (B x 3 x 2*`STRIP_HEIGHT` x `STRIP_WIDTH`, values 0-1) to the
    logits of `OUTPUTS`: coordinates shown outside, and black at the bottom by them."""

    def __init__(self, widths: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        shrink = 2 ** len(widths)
        flat = channels * (2 * STRIP_HEIGHT // shrink) * (STRIP_WIDTH // shrink)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2)
        )

    def forward(self, strips: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W strips -> B x 2 logits (`OUTPUTS`)."""
        return self.head(self.features(strips))

    def fold_for_inference(self) -> None:
        """Fold each batch norm into the convolution before it (eval mode only): the same
        outputs from fewer operations."""
        fold_batch_norms(self.features)


def margin_strips(image: Image.Image, box: Sequence[float]) -> np.ndarray:
    """The strips outside `box` (fractions of `image`: left, top, right, bottom): `DEPTH`
    squares below the board and left of it, the left one turned a quarter to lie along its
    edge (the top rank first), stacked: a 2*`STRIP_HEIGHT` x `STRIP_WIDTH` x 3 uint8 array.
    Parts beyond the image are black."""
    width, height = image.size
    left, top, right, bottom = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    square_x, square_y = (right - left) / 8, (bottom - top) / 8
    below = (left, bottom, right, bottom + DEPTH * square_y)
    beside = (left - DEPTH * square_x, top, left, bottom)
    below_strip = _cut(image, below, (STRIP_WIDTH, STRIP_HEIGHT))
    beside_strip = _cut(image, beside, (STRIP_HEIGHT, STRIP_WIDTH))
    turned = beside_strip.transpose(Image.Transpose.ROTATE_90)
    return np.concatenate([np.asarray(below_strip), np.asarray(turned)], axis=0)


def _cut(image: Image.Image, area: tuple[float, ...], size: tuple[int, int]) -> Image.Image:
    # crop() pads beyond the image with black; rounding to whole pixels moves a strip by at
    # most half a pixel of the image.
    pixels = tuple(round(value) for value in area)
    return image.crop(pixels).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def cut_margins(images: Sequence[Image.Image], boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """`margin_strips` of each image at its box, N x H x W x 3 uint8."""
    return np.stack([margin_strips(image, box) for image, box in zip(images, boxes, strict=True)])


@torch.inference_mode()
def margin_evidence(reader: MarginReader, strips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(probability that coordinates are printed outside, log-odds of black at the bottom by
    them), each B, from `cut_margins` strips."""
    pixels = torch.from_numpy(strips).permute(0, 3, 1, 2).float().div_(255.0)
    logits = reader(pixels)
    return logits[:, 0].sigmoid(), logits[:, 1]


# --------------------------------------------------------------------------- training


def _board_box(record: dict, size: tuple[int, int]) -> tuple[float, float, float, float]:
    width, height = size
    left, top, right, bottom = record.get("board_box") or (0, 0, width, height)
    return left / width, top / height, right / width, bottom / height


def _jittered(
    box: tuple[float, float, float, float], amount: float, rng: np.random.Generator
) -> tuple[float, ...]:
    side_x, side_y = (box[2] - box[0]) / 8, (box[3] - box[1]) / 8
    moves = rng.uniform(-amount, amount, size=4) * np.array([side_x, side_y, side_x, side_y])
    return tuple(float(value) for value in np.array(box) + moves)


# An image, its board's box (fractions), and whether it prints coordinates outside the board
# and shows black at the bottom.
_LabelledBoard = tuple[Image.Image, tuple[float, float, float, float], bool, bool]


def margin_examples(
    data_dir: str | Path, split: str, cuts_per_board: int, jitter: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's boards as strips (`cuts_per_board` cuts each, at the labelled box moved by up
    to `jitter` of a square) and their labels (N x 2: outside coordinates, flipped)."""
    data_dir = Path(data_dir)

    def boards() -> Iterator[_LabelledBoard]:
        for record in tqdm(
            read_jsonl(data_dir / f"{split}.jsonl"), desc=f"margins {split}", leave=False
        ):
            image = open_board_image(data_dir / str(record["image_path"]))
            outside = record.get("coordinates") == "outside"
            yield image, _board_box(record, image.size), outside, bool(record.get("flipped"))

    return _cut_examples(boards(), cuts_per_board, jitter, seed)


def scene_margin_examples(
    scenes_dir: str | Path, cuts_per_board: int, jitter: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`margin_examples` for the boards of a scenes folder (`chessvlm.scenes`), each cut at
    the box around its labelled corners."""
    from chessvlm.detection import corners_box
    from chessvlm.scenes import LABELS_FILE

    scenes_dir = Path(scenes_dir)

    def boards() -> Iterator[_LabelledBoard]:
        for scene in tqdm(read_jsonl(scenes_dir / LABELS_FILE), desc="margins scenes", leave=False):
            if not scene["boards"]:
                continue
            image = open_board_image(scenes_dir / str(scene["image_path"]))
            for board in scene["boards"]:
                left, top, right, bottom = corners_box(board["corners"])
                box = (
                    left / image.width,
                    top / image.height,
                    right / image.width,
                    bottom / image.height,
                )
                outside = _prints_outside_coordinates(board["look"])
                yield image, box, outside, bool(board["flipped"])

    return _cut_examples(boards(), cuts_per_board, jitter, seed)


def _cut_examples(
    boards: Iterable[_LabelledBoard], cuts_per_board: int, jitter: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    strips, labels = [], []
    for image, box, outside, flipped in boards:
        for _ in range(cuts_per_board):
            strips.append(margin_strips(image, _jittered(box, jitter, rng)))
            labels.append((float(outside), float(flipped)))
    return torch.from_numpy(np.stack(strips)), torch.tensor(labels)


def _prints_outside_coordinates(look: str) -> bool:
    # A scene labels its boards with the render look's name (`RenderParams.name`), where
    # outside coordinates are the part "coords-outside" or "coords-outside-<font>".
    return any(part.startswith("coords-outside") for part in look.split("/"))


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Coordinates shown, on every strip; the orientation by them, where they are shown."""
    shown = labels[:, 0]
    loss = F.binary_cross_entropy_with_logits(logits[:, 0], shown)
    orientation = F.binary_cross_entropy_with_logits(logits[:, 1], labels[:, 1], reduction="none")
    return loss + (orientation * shown).sum() / shown.sum().clamp(min=1.0)


def train_margin_reader(
    data_dir: str | Path,
    recipe: MarginRecipe = MarginRecipe(),
    scenes_dir: str | Path | None = None,
) -> tuple[MarginReader, dict[str, float]]:
    """Train a margin reader on `data_dir`'s train split and the boards of `scenes_dir`
    (when given); returns it (eval mode) and its validation figures (`margin_figures`) on the
    val split cut at the labelled boxes."""
    generator = torch.Generator().manual_seed(recipe.seed)
    cut = (recipe.cuts_per_board, recipe.jitter, recipe.seed)
    strips, labels = margin_examples(data_dir, "train", *cut)
    if scenes_dir is not None:
        scene_strips, scene_labels = scene_margin_examples(scenes_dir, *cut)
        strips, labels = torch.cat([strips, scene_strips]), torch.cat([labels, scene_labels])
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        reader = MarginReader(recipe.widths, recipe.hidden)
    optimiser = torch.optim.AdamW(reader.parameters(), lr=recipe.learning_rate)
    starts = range(0, len(labels), recipe.batch_size)
    steps = len(starts) * recipe.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.learning_rate, steps)
    reader.train()
    with tqdm(total=steps, desc="margin reader", leave=False) as bar:
        for _ in range(recipe.epochs):
            order = torch.randperm(len(labels), generator=generator)
            for start in starts:
                chosen = order[start : start + recipe.batch_size]
                pixels = strips[chosen].permute(0, 3, 1, 2).float().div_(255.0)
                loss = margin_loss(reader(pixels), labels[chosen])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                bar.update()
    reader.eval()
    val_strips, val_labels = margin_examples(data_dir, "val", 1, 0.0, recipe.seed)
    return reader, margin_figures(reader, val_strips.numpy(), val_labels)


def margin_figures(reader: MarginReader, strips: np.ndarray, labels: torch.Tensor) -> dict:
    """Share of boards whose outside coordinates are rightly said shown or not, and of those
    showing them, the share read the right way up."""
    shown, flipped_log_odds = margin_evidence(reader, strips)
    outside = labels[:, 0].bool()
    right_orientation = (flipped_log_odds > 0) == labels[:, 1].bool()
    return {
        "boards": len(labels),
        "with_outside_coordinates": int(outside.sum()),
        "shown_accuracy": float(((shown > 0.5) == outside).float().mean()),
        "orientation_accuracy": float(right_orientation[outside].float().mean()),
    }


# --------------------------------------------------------------------------- files


def save_margin_reader(
    reader: MarginReader, out: str | Path, recipe: MarginRecipe, figures: dict
) -> Path:
    """Write `margin.safetensors` and `margin.json` (recipe and validation figures) into
    `out`, each atomically."""
    config = {"recipe": recipe.to_dict(), "strips": STRIPS, "validation": figures}
    return save_network(reader, out, MARGIN_FILES, config)


def load_margin_reader(path: str | Path = DEFAULT_MARGIN_READER) -> MarginReader:
    """A saved margin reader, in eval mode; a clear error naming the folder when it is
    missing or does not fit its config."""
    config = network_config(path, MARGIN_FILES, "margin reader")
    config_file = str(Path(path) / MARGIN_CONFIG_FILE)
    try:
        recipe, strips = config["recipe"], config["strips"]
        widths, hidden = tuple(int(w) for w in recipe["widths"]), int(recipe["hidden"])
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(config_file, f"not a margin reader config ({error})") from None
    if strips != STRIPS:
        raise InputError(
            config_file,
            f"made for strips {strips}, and this code cuts {STRIPS}: rebuild it with "
            "`chessvlm reader build-default`",
        )
    reader = load_weights(MarginReader(widths, hidden), path, MARGIN_FILES)
    reader.fold_for_inference()
    return reader


@cache
def default_margin_reader() -> MarginReader:
    """The margin reader shipped in the package, loaded once per process."""
    return load_margin_reader(DEFAULT_MARGIN_READER)
