"""`chessvlm export --format onnx`: a reader checkpoint as ONNX graphs for use outside Python.

A reader reads an image in two networks with a resampling between them, so it becomes two
graphs in the output folder:

- `locator.onnx`: `scenes` float32 N x 3 x 128 x 128 (the whole image squeezed to a square,
  RGB in [0, 1]) -> `boxes` N x 4, the board's squares as fractions of the image (left, top,
  right, bottom).
- `reader.onnx`: `boards` float32 N x 3 x S x S (the box cut out and resized to S = the
  checkpoint's image size, RGB in [0, 1]) -> `square_probabilities` N x 64 x 13 (cells row by
  row from the image's top left; classes in `SQUARE_CLASSES` order) and `meta_probabilities`
  N x 4 (`META_OUTPUTS`: black at the bottom, black to move, the orientation the coordinates
  show, coordinates drawn).

A reading's orientation also weighs the position prior (`chessvlm.reader.orientation`) on
the square probabilities, and the margin reader on coordinates printed outside the board
(`chessvlm.reader.margin`); they are not in the graphs, and `OnnxReader` applies the shipped
ones as `chessvlm.reader.read` does.

`export.json` describes both, with the checkpoint's config and the check against torch:
`check_export` reads rendered boards with both runtimes and fails unless every probability
agrees within `TOLERANCE` and every FEN is the same. The board finder, when it lands, adds
its own graph here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import chess
import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.io import atomic_write_bytes, atomic_write_json
from chessvlm.positions import SQUARE_CLASSES
from chessvlm.reader.context import default_square_context
from chessvlm.reader.images import crop_board, scene_array, usable_box
from chessvlm.reader.margin import default_margin_reader
from chessvlm.reader.matching import default_square_matcher, with_look_alikes
from chessvlm.reader.model import LOCATOR_SIZE, META_OUTPUTS, ReaderEnsemble
from chessvlm.reader.orientation import default_position_prior
from chessvlm.reader.read import (
    BoardReading,
    Reader,
    cut_views,
    decode_outputs,
    load_reader,
    locate,
    read_margins,
    with_exact_corners,
)

FORMATS = ("onnx",)
LOCATOR_FILE = "locator.onnx"
READER_FILE = "reader.onnx"
MANIFEST_FILE = "export.json"
TOLERANCE = 1e-4
# The boards `check_export` renders: designs and looks the shipped reader never trained on,
# with margins, frames and both orientations, so the locator and the crop are exercised too.
CHECK_STYLE = "designs-held-out"


class _ReaderProbabilities(nn.Module):
    """The reader's network with its outputs turned into probabilities; an ensemble whose
    later members read only unsure boards is traced with every member reading every board
    (`ReaderEnsemble.forward_every_member`, the same numbers)."""

    def __init__(self, reader: Reader) -> None:
        super().__init__()
        self.model = reader.model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.model, ReaderEnsemble):
            squares, meta = self.model.forward_every_member(images)
        else:
            squares, meta = self.model(images)
        return squares.softmax(dim=-1), meta.sigmoid()


@dataclass
class CheckResult:
    """How the ONNX graphs agreed with torch on `boards` rendered boards."""

    boards: int
    max_box_difference: float
    max_square_probability_difference: float
    max_meta_probability_difference: float
    same_fen: int

    @property
    def passed(self) -> bool:
        """Probabilities within `TOLERANCE` and the same FEN on every board."""
        worst = max(
            self.max_box_difference,
            self.max_square_probability_difference,
            self.max_meta_probability_difference,
        )
        return worst <= TOLERANCE and self.same_fen == self.boards


def export_onnx(model: str | Path, out: str | Path, *, check_boards: int = 200) -> CheckResult:
    """Write the reader checkpoint `model` as ONNX graphs and `export.json` into `out`, check
    them against torch on `check_boards` rendered boards, and return the check. Raises
    `ChessVLMError` when the check fails (the files stay, for inspection)."""
    # The graphs compute in float32, so they are checked against torch in float32.
    reader = load_reader(model, precision="float32")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = reader.image_size
    _export(reader.model.locator, "scenes", ("boxes",), LOCATOR_SIZE, out / LOCATOR_FILE)
    outputs = ("square_probabilities", "meta_probabilities")
    _export(_ReaderProbabilities(reader), "boards", outputs, size, out / READER_FILE)
    return verify_export(reader, out, check_boards)


def verify_export(reader: Reader, out: Path, check_boards: int) -> CheckResult:
    """Check the graphs in `out` against `reader` (`check_export`), record the result in
    `export.json`, and raise `ChessVLMError` unless it passed."""
    result = check_export(reader, OnnxReader(out, reader.config), check_boards)
    atomic_write_json(out / MANIFEST_FILE, _manifest(reader, result))
    if not result.passed:
        raise ChessVLMError(
            f"{out}: the ONNX graphs differ from torch ({asdict(result)}; tolerance {TOLERANCE})"
        )
    return result


def _export(network: nn.Module, name: str, outputs: tuple[str, ...], side: int, path: Path) -> None:
    example = torch.rand(2, 3, side, side)
    program = torch.onnx.export(
        network.eval(),
        (example,),
        input_names=[name],
        output_names=list(outputs),
        # The forward methods' argument is named `images` in both networks.
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
        external_data=False,
        verbose=False,
    )
    atomic_write_bytes(path, program.model_proto.SerializeToString())


def _manifest(reader: Reader, result: CheckResult) -> dict[str, Any]:
    return {
        "format": "onnx",
        "graphs": {
            LOCATOR_FILE: {
                "input": {"scenes": ["N", 3, LOCATOR_SIZE, LOCATOR_SIZE]},
                "outputs": {"boxes": ["N", 4]},
            },
            READER_FILE: {
                "input": {"boards": ["N", 3, reader.image_size, reader.image_size]},
                "outputs": {
                    "square_probabilities": ["N", 64, len(SQUARE_CLASSES)],
                    "meta_probabilities": ["N", len(META_OUTPUTS)],
                },
            },
        },
        "pixels": "RGB, float32 in [0, 1], resized with bilinear filtering",
        "square_classes": list(SQUARE_CLASSES),
        "meta_outputs": list(META_OUTPUTS),
        "cell_order": "row by row from the image's top left; with black at the bottom "
        "(meta 'flipped' > 0.5) the top-left cell is h1, else a8",
        "checked_against_torch": {**asdict(result), "tolerance": TOLERANCE},
        "checkpoint": reader.config,
    }


def is_onnx_export(folder: str | Path) -> bool:
    """Whether `folder` holds an export written by `export_onnx`."""
    return all(
        (Path(folder) / name).is_file() for name in (LOCATOR_FILE, READER_FILE, MANIFEST_FILE)
    )


def load_onnx_reader(folder: str | Path, threads: int | None = None) -> OnnxReader:
    """The export in `folder` ready to read (`OnnxReader`), with its checkpoint's config."""
    path = Path(folder) / MANIFEST_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))["checkpoint"]
    except (OSError, ValueError, KeyError) as error:
        raise InputError(str(path), f"not an export manifest ({error})") from None
    return OnnxReader(folder, config, threads)


class OnnxReader:
    """The exported graphs run by onnxruntime, reading whole images as `read_images` does."""

    def __init__(self, folder: str | Path, config: dict[str, Any], threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        folder = Path(folder)
        self.locator, self.reader = (
            onnxruntime.InferenceSession(
                str(folder / name), options, providers=["CPUExecutionProvider"]
            )
            for name in (LOCATOR_FILE, READER_FILE)
        )
        self.config = config
        self.image_size = int(config["spec"]["image_size"])
        # The prior, the square context, the margin reader and the square matcher are not in
        # the graphs: the first two read the squares' probabilities, design-free, the margin
        # reader what lies outside the squares, and the matcher compares squares.
        self.position_prior = default_position_prior()
        self.square_context = default_square_context()
        self.margin_reader = default_margin_reader()
        self.square_matcher = default_square_matcher()

    def locate(self, scenes: np.ndarray) -> np.ndarray:
        """uint8 N x L x L x 3 whole images -> boxes N x 4 (fractions of the image)."""
        return self.locator.run(None, {"scenes": _pixels(scenes)})[0]

    def probabilities(self, boards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 N x S x S x 3 boards -> (square probabilities, meta probabilities)."""
        squares, meta = self.reader.run(None, {"boards": _pixels(boards)})
        return squares, meta

    def read_images(
        self,
        images: Sequence[Image.Image],
        scenes: Sequence[np.ndarray] | None = None,
        flipped: Sequence[bool | None] | None = None,
    ) -> list[BoardReading]:
        """Locate, cut out and read each image's board, as `chessvlm.reader.read.read_images`
        does, the unsure ones again at their exact corners (`scenes`: the images as the
        locator sees them, made here when not given; `flipped`: known orientations, None
        where the graph's is used)."""
        if scenes is None:
            scenes = [scene_array(image, LOCATOR_SIZE) for image in images]
        located = self.locate(np.stack(scenes)).tolist()
        boxes = [usable_box(box, image) for image, box in zip(images, located, strict=True)]
        crops, margins = cut_views(images, boxes, self.image_size)
        readings = self.read_arrays(crops, flipped, margins)
        read = self.read_arrays
        return with_exact_corners(read, readings, images, boxes, self.image_size, flipped)

    def read_arrays(
        self,
        crops: Sequence[np.ndarray],
        flipped: Sequence[bool | None] | None = None,
        margins: np.ndarray | None = None,
    ) -> list[BoardReading]:
        """Read boards already cut to their squares (S x S x 3 uint8 each), and their margins
        where given, as `chessvlm.reader.read.read_arrays` does."""
        boards = np.stack(crops)
        squares, meta = self.probabilities(boards)
        log_probs = torch.from_numpy(squares).log()
        boards_first = torch.from_numpy(boards).permute(0, 3, 1, 2)
        return decode_outputs(
            with_look_alikes(self.square_matcher, boards_first, log_probs),
            torch.from_numpy(meta),
            str(self.config.get("decode", "argmax")),
            bool(self.config.get("predicts_to_move")),
            flipped,
            prior=self.position_prior,
            margin=read_margins(self.margin_reader, margins),
            context=self.square_context,
        )


def _pixels(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def check_boards(count: int, seed: int = 0) -> list[tuple[Image.Image, chess.Board]]:
    """`count` boards rendered in `CHECK_STYLE`, with their positions."""
    from chessvlm.rendering import render_board, sample_render_params
    from chessvlm.sources import synthetic_positions

    rng = random.Random(seed)
    boards = []
    for position in synthetic_positions(count, f"export-check-{seed}"):
        board = chess.Board(position.fen)
        boards.append((render_board(board, sample_render_params(CHECK_STYLE, rng)), board))
    return boards


def check_export(reader: Reader, exported: OnnxReader, count: int, batch: int = 25) -> CheckResult:
    """Read `count` rendered boards with torch and with the ONNX graphs: the largest
    differences in boxes and probabilities (on the same crops), and how many boards get the
    same FEN through each runtime's whole pipeline."""
    differences = np.zeros(3)
    same_fen = 0
    boards = check_boards(count)
    with tqdm(total=count, desc="checking ONNX against torch", unit="board") as progress:
        for start in range(0, count, batch):
            images = [image.convert("RGB") for image, _ in boards[start : start + batch]]
            scenes = np.stack([scene_array(image, LOCATOR_SIZE) for image in images])
            boxes = locate(reader.model, torch.from_numpy(scenes).permute(0, 3, 1, 2)).numpy()
            crops = np.stack(
                [
                    crop_board(image, box, reader.image_size)
                    for image, box in zip(images, boxes, strict=True)
                ]
            )
            squares, meta = _torch_probabilities(reader, crops)
            onnx_squares, onnx_meta = exported.probabilities(crops)
            batch_differences = [
                np.abs(exported.locate(scenes) - boxes).max(),
                np.abs(onnx_squares - squares).max(),
                np.abs(onnx_meta - meta).max(),
            ]
            differences = np.maximum(differences, batch_differences)
            torch_readings = _read_torch(reader, images)
            onnx_readings = exported.read_images(images)
            same_fen += sum(
                mine.board.board_fen() == theirs.board.board_fen()
                and mine.flipped == theirs.flipped
                for mine, theirs in zip(torch_readings, onnx_readings, strict=True)
            )
            progress.update(len(images))
    return CheckResult(count, *(float(value) for value in differences), same_fen)


@torch.inference_mode()
def _torch_probabilities(reader: Reader, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    squares, meta = _ReaderProbabilities(reader)(torch.from_numpy(_pixels(crops)))
    return squares.numpy(), meta.numpy()


def _read_torch(reader: Reader, images: Sequence[Image.Image]) -> list[BoardReading]:
    from chessvlm.reader.read import read_images

    scenes = [scene_array(image, LOCATOR_SIZE) for image in images]
    return read_images(reader, images, scenes)
