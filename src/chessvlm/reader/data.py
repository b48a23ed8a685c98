"""A dataset split decoded for the reader: each board cut out at its `board_box`, the whole
image for the locator, and the labels in square order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import chess
import torch
from tqdm import tqdm

from chessvlm.errors import InputError
from chessvlm.io import (
    iter_jsonl,
)
from chessvlm.positions import SQUARE_CLASSES, AnswerError, board_from_fen, square_symbols
from chessvlm.reader.images import (
    iter_loaded,
    load_board_views,
)
from chessvlm.reader.model import (
    LOCATOR_SIZE,
    to_image_order,
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
