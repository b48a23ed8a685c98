"""Reader checkpoints and batched reading.

A reader checkpoint is a folder with `reader.json` (what was built, how it decodes, what it
scored on validation) and `reader.safetensors` (the weights); an ensemble's (`members` in
`reader.json`, `chessvlm.reader.ensemble`) holds its readers' weights under `members.<i>.`.
Reading locates each board in its image, cuts out its squares and decodes the network's
outputs into positions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import chess
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.finder import FoundBoard, board_pixels, find_board_near
from chessvlm.io import (
    atomic_write_bytes,
    atomic_write_json,
)
from chessvlm.positions import SQUARE_CLASSES
from chessvlm.reader.context import SquareContext, default_square_context, with_context
from chessvlm.reader.images import (
    SOURCE_SIZE,
    crop_board,
    iter_loaded,
    load_scene,
    scene_array,
    usable_box,
)
from chessvlm.reader.margin import MarginReader, cut_margins, default_margin_reader, margin_evidence
from chessvlm.reader.matching import SquareMatcher, default_square_matcher, with_look_alikes
from chessvlm.reader.model import (
    LOCATOR_SIZE,
    META_OUTPUTS,
    BoardReader,
    ReaderEnsemble,
    ReaderSpec,
    decode_squares,
    set_zoom_views,
    to_square_order,
)
from chessvlm.reader.orientation import (
    PositionPrior,
    combined_flipped_probability,
    default_position_prior,
)
from chessvlm.reader.storage import expanded, stored

WEIGHTS_FILE = "reader.safetensors"
CONFIG_FILE = "reader.json"
DECODERS = ("argmax", "chess_rules")
# What the network computes in when reading: `auto` is bfloat16 where the CPU computes it
# natively (`native_bfloat16`), else float32.
PRECISIONS = ("auto", "float32", "bfloat16")
_BFLOAT16_INSTRUCTIONS = ("amx_bf16", "avx512_bf16")
# A board whose least sure square is read under `RECUT_BELOW`, cut where the locator put it,
# is read again at the exact corners the board finder's corner search finds there, where they
# lie more than `RECUT_MOVE` of a square from the located box (`read_unsure_again`). A box a
# tenth of a square off costs whole boards; chosen on boards of the seen designs
# (docs/reader.md).
RECUT_BELOW = 0.9
RECUT_MOVE = 0.02
# The checkpoint layout this code writes and reads (2: the board locator and the coordinates
# output were added).
CHECKPOINT_FORMAT = 2


@dataclass
class BoardReading:
    """One board read by the reader.

    `board` holds the placement in standard orientation only (white to move, no castling):
    metadata is not in the image and is the caller's to add. `black_to_move_probability` is
    None unless the checkpoint learned the side to move (`Reader.predicts_to_move`).
    `coordinates_probability` is that of coordinates drawn in the edge squares,
    `outside_coordinates_probability` that of coordinates printed outside them (0 where the
    margin was not read: boards read without their image); `box` is where
    the squares are in the image, in its pixels (left, top, right, bottom), when it was located,
    and `corners` the board finder's corners there (`chessvlm.finder.FoundBoard`), where it
    gave them.
    `square_probabilities` gives, per square (python-chess order, a1 first), the probability
    of the piece (or emptiness) read there.
    """

    board: chess.Board
    flipped: bool
    flipped_probability: float
    black_to_move_probability: float | None
    min_square_confidence: float
    coordinates_probability: float
    box: tuple[float, float, float, float] | None = None
    square_probabilities: tuple[float, ...] = ()
    outside_coordinates_probability: float = 0.0
    corners: tuple[tuple[float, float], ...] | None = None

    @property
    def orientation_shown(self) -> bool:
        """Whether the board shows which side is at the bottom: pawns (which way they stand,
        and where) or coordinates, on the squares or outside them. Without either, a board
        from black's side is the exact picture of the mirrored position from white's, and the
        orientation is a guess."""
        coordinates = max(self.coordinates_probability, self.outside_coordinates_probability)
        return bool(self.board.pawns) or coordinates > 0.5


@dataclass
class Reader:
    """A loaded reader checkpoint, ready to read boards; `position_prior` says which side is
    at the bottom in place of the meta head (`chessvlm.reader.orientation`), `margin_reader`
    joins it where the board's image is at hand (`chessvlm.reader.margin`), and
    `square_context` weighs in on each square from the rest of the board
    (`chessvlm.reader.context`), and `square_matcher` from the squares that look like it or
    unlike it (`chessvlm.reader.matching`). `precision` is what the square network computes
    in (`run_network`). Located boards read with a square under `recut_below` are read
    again at their exact corners (`read_unsure_again`; 0 never does)."""

    model: BoardReader | ReaderEnsemble
    config: dict[str, Any]
    path: Path
    position_prior: PositionPrior | None = None
    margin_reader: MarginReader | None = None
    square_context: SquareContext | None = None
    square_matcher: SquareMatcher | None = None
    precision: str = "float32"
    recut_below: float = RECUT_BELOW

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


def save_checkpoint(
    model: BoardReader | ReaderEnsemble,
    out: Path,
    config: dict[str, Any],
    *,
    storage: str = "float32",
) -> None:
    """Write `reader.safetensors` then `reader.json` (stamped with `CHECKPOINT_FORMAT` and
    the weights' `storage`, one of `STORAGES`), each atomically; loading turns the weights
    back into float32."""
    tensors = stored(model.trainable_state_dict(), storage)
    atomic_write_bytes(out / WEIGHTS_FILE, save_safetensors(tensors))
    stamped = {"format": CHECKPOINT_FORMAT, **config, "weights_storage": storage}
    atomic_write_json(out / CONFIG_FILE, stamped)


def is_reader_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a reader checkpoint folder (as opposed to a VLM)."""
    return (Path(path) / CONFIG_FILE).is_file() and (Path(path) / WEIGHTS_FILE).is_file()


def load_reader(path: str | Path, *, fold: bool = True, precision: str = "auto") -> Reader:
    """Load a reader checkpoint folder for inference (eval mode, CPU), its input
    normalisation and batch norms folded into the convolutions
    (`BoardReader.fold_for_inference`) unless `fold` is False (the model as trained, for
    comparison). `precision` is one of `PRECISIONS` (`compute_precision`)."""
    path = Path(path)
    precision = compute_precision(precision)
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
    model = _network(config, path)
    tensors = expanded(load_safetensors((path / WEIGHTS_FILE).read_bytes()))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [name for name in missing if name in model.trainable_state_dict()]
    if missing or unexpected:
        raise ChessVLMError(f"{path / WEIGHTS_FILE}: weights do not fit {CONFIG_FILE}")
    try:
        set_zoom_views(model, config.get("zoom_views", []))
    except ChessVLMError as error:
        raise InputError(str(path / CONFIG_FILE), str(error)) from None
    prepare_for_cpu(model)
    model.eval()
    if fold:
        model.fold_for_inference()
    return Reader(
        model=model,
        config=config,
        path=path,
        position_prior=default_position_prior(),
        margin_reader=default_margin_reader(),
        square_context=default_square_context(),
        square_matcher=default_square_matcher(),
        precision=precision,
    )


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 AMX-BF16 or AVX512-BF16). Where it
    does, the reader's network reads about 1.6x faster in bfloat16 with the same readings
    (docs/reader.md). Elsewhere oneDNN emulates bfloat16 (AVX512 CPUs without these
    instructions among them, which torch's own bfloat16 check accepts), several times slower
    than float32; ARM's bfloat16 was never measured here, so it reads in float32."""
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(name, False) for name in _BFLOAT16_INSTRUCTIONS)


def compute_precision(precision: str) -> str:
    """`precision` (one of `PRECISIONS`) as `float32` or `bfloat16`: `auto` is bfloat16 where
    the CPU computes it natively (`native_bfloat16`)."""
    if precision not in PRECISIONS:
        raise ChessVLMError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16() else "float32"
    return precision


def computing_in(precision: str) -> torch.autocast:
    """The context in which the networks compute in `precision` (`float32` or `bfloat16`,
    as `compute_precision` gives it): CPU autocast to bfloat16, or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")


def _network(config: dict[str, Any], path: Path) -> BoardReader | ReaderEnsemble:
    """The untrained network `config` describes: one reader, or an ensemble of `members`."""
    spec = ReaderSpec.from_dict(config["spec"])
    # Weights in the file replace the encoder's, so a pretrained ViT is fetched only when the
    # checkpoint left it out (frozen).
    pretrained = spec.freeze_encoder and spec.clip_model is not None
    members = config.get("members", 1)
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise InputError(str(path / CONFIG_FILE), f"'members' must be a count >= 1: {members!r}")
    if members == 1:
        return BoardReader(spec, pretrained=pretrained)
    readers = [BoardReader(spec, pretrained=pretrained) for _ in range(members)]
    escalation = _escalation(config, path / CONFIG_FILE)
    try:
        return ReaderEnsemble(readers, **escalation)
    except ChessVLMError as error:
        raise InputError(str(path / CONFIG_FILE), str(error)) from None


def _escalation(config: dict[str, Any], config_path: Path) -> dict[str, Any]:
    """`ReaderEnsemble`'s `always` and `unsure_below` as `reader.json` gives them
    (`always_members`, `unsure_below`); absent: every member reads every board."""
    if "always_members" not in config:
        return {}
    always, unsure_below = config["always_members"], config.get("unsure_below", 1.0)
    if not isinstance(always, int) or isinstance(always, bool):
        raise InputError(str(config_path), f"'always_members' must be a count: {always!r}")
    if not isinstance(unsure_below, int | float) or isinstance(unsure_below, bool):
        raise InputError(
            str(config_path), f"'unsure_below' must be a probability: {unsure_below!r}"
        )
    return {"always": always, "unsure_below": float(unsure_below)}


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(str(path), f"cannot read ({error})") from None
    if not isinstance(data, dict) or "spec" not in data:
        raise InputError(str(path), "not a reader config (no 'spec')")
    return data


def prepare_for_cpu(model: BoardReader) -> None:
    # Channels-last convolutions ran about 1.7x faster on this CPU (bench/bench_reader.py).
    if model.spec.encoder == "cnn":
        model.to(memory_format=torch.channels_last)


def read_arrays(
    reader: Reader,
    arrays: Sequence[np.ndarray] | torch.Tensor,
    decode: str | None = None,
    flipped: Sequence[bool | None] | None = None,
    margins: np.ndarray | None = None,
) -> list[BoardReading]:
    """Read a batch of boards already cut to their squares (`load_board_image` arrays, or
    uint8 N x 3 x S x S).

    `flipped` gives, per board, a known orientation (True: black at the bottom) that replaces
    the predicted one, or None to use the prediction. `margins` (`cut_margins`, aligned with
    the boards) lets coordinates printed outside the boards weigh in on their orientation.
    """
    if isinstance(arrays, torch.Tensor):
        batch = arrays
    else:
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    log_probs, meta = run_network(reader.model, batch, reader.precision)
    log_probs = with_look_alikes(reader.square_matcher, batch, log_probs)
    return decode_outputs(
        log_probs,
        meta,
        decode or reader.decode,
        reader.predicts_to_move,
        flipped,
        prior=reader.position_prior,
        margin=read_margins(reader.margin_reader, margins),
        context=reader.square_context,
    )


def read_margins(
    margin_reader: MarginReader | None, margins: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`margin_evidence` of the boards' margins, or None where either is missing."""
    if margin_reader is None or margins is None:
        return None
    return margin_evidence(margin_reader, margins)


def read_images(
    reader: Reader,
    images: Sequence[Image.Image],
    scenes: Sequence[np.ndarray],
    decode: str | None = None,
    flipped: Sequence[bool | None] | None = None,
) -> list[BoardReading]:
    """Read whole images (`load_scene`'s image and scene): locate each board, cut out its
    squares, read them. Each reading's `box` is in the image file's pixels."""
    boxes = locate_in_images(reader, images, scenes)
    crops, margins = cut_views(images, boxes, reader.image_size)
    readings = read_arrays(reader, crops, decode, flipped, margins)
    read = crop_reading(reader, decode)
    return with_exact_corners(
        read, readings, images, boxes, reader.image_size, flipped, reader.recut_below
    )


# What reads boards cut to their squares: (crops, known orientations or None, their margins
# or None) -> readings. `crop_reading` makes one of a loaded reader; an ONNX export and the
# web app's batcher are others.
ReadCrops = Callable[
    [Sequence[np.ndarray], Sequence[bool | None] | None, np.ndarray | None], list[BoardReading]
]


def crop_reading(reader: Reader, decode: str | None = None) -> ReadCrops:
    """`read_arrays` with `reader` and `decode`, as a `ReadCrops`."""
    return lambda crops, flipped, margins: read_arrays(reader, crops, decode, flipped, margins)


def with_exact_corners(
    read: ReadCrops,
    readings: Sequence[BoardReading],
    images: Sequence[Image.Image],
    boxes: Sequence[Sequence[float]],
    size: int,
    flipped: Sequence[bool | None] | None = None,
    recut_below: float = RECUT_BELOW,
) -> list[BoardReading]:
    """`readings` of `images` cut at their located `boxes` (fractions) to `size` pixels, the
    unsure ones read again at their exact corners (`read_unsure_again`), each `box` (and
    `corners`, where the corner search gave them) in the image file's pixels."""
    pixel_boxes = [loaded_pixel_box(image, box) for image, box in zip(images, boxes, strict=True)]
    again = read_unsure_again(
        read, readings, images, pixel_boxes, size, flipped, recut_below=recut_below
    )
    readings, boxes = list(readings), list(boxes)
    for index, reading, board in again:
        readings[index] = reading
        boxes[index] = loaded_fraction_box(images[index], board.box)
        reading.corners = image_pixel_corners(images[index], board.corners)
    return with_image_boxes(readings, images, boxes)


def read_unsure_again(
    read: ReadCrops,
    readings: Sequence[BoardReading],
    images: Sequence[Image.Image],
    boxes: Sequence[Sequence[float]],
    size: int,
    flipped: Sequence[bool | None] | None = None,
    located: Sequence[bool] | None = None,
    recut_below: float = RECUT_BELOW,
) -> list[tuple[int, BoardReading, FoundBoard]]:
    """The boards among `readings` (of `images`, cut at `boxes`, in the images' pixels) read
    with a square under `recut_below`, read again with `read` at the exact corners the
    board finder's corner search finds near their box (`find_exact_cuts`): (index, reading,
    the `FoundBoard` read) each. `located` marks the boxes a locator gave (default: all);
    the others are the corner search's own already.

    The locator's boxes are a few hundredths of a square off, and a box off by a tenth
    costs whole boards; the corner search takes a few milliseconds, so it runs only on the
    boards the reader is unsure of (docs/reader.md has the figures)."""
    cuts = find_exact_cuts(readings, images, boxes, size, located, recut_below)
    if not cuts.indices:
        return []
    flips = [flipped[index] for index in cuts.indices] if flipped is not None else None
    again = read(cuts.crops, flips, cuts.margins)
    return list(zip(cuts.indices, again, cuts.boards, strict=True))


@dataclass
class ExactCuts:
    """Boards to read again (`find_exact_cuts`): their places among the readings, the boards
    at their exact corners, and what is read of each (`cut_at_corners`)."""

    indices: list[int]
    boards: list[FoundBoard]
    crops: list[np.ndarray]
    margins: np.ndarray | None


def find_exact_cuts(
    readings: Sequence[BoardReading],
    images: Sequence[Image.Image],
    boxes: Sequence[Sequence[float]],
    size: int,
    located: Sequence[bool] | None = None,
    recut_below: float = RECUT_BELOW,
) -> ExactCuts:
    """`read_unsure_again`'s corner search and cutting, without the reading (the web app
    runs it on a decoding thread and reads the cuts in its batches)."""
    marks = list(located) if located is not None else [True] * len(readings)
    indices, boards = [], []
    for index, (reading, image, box) in enumerate(zip(readings, images, boxes, strict=True)):
        if marks[index] and worth_reading_again(reading, recut_below):
            board = exact_corners(image, box)
            if board is not None:
                indices.append(index)
                boards.append(board)
    if not indices:
        return ExactCuts([], [], [], None)
    crops, margins = cut_at_corners([images[i] for i in indices], boards, size)
    return ExactCuts(indices, boards, crops, margins)


def worth_reading_again(reading: BoardReading, recut_below: float = RECUT_BELOW) -> bool:
    """Whether a board read from a located box is unsure enough for the corner search
    (`find_exact_cuts`): a square read under `recut_below`."""
    return reading.min_square_confidence < recut_below


def exact_corners(image: Image.Image, box: Sequence[float]) -> FoundBoard | None:
    """The board a locator put at `box` (the image's pixels) at the exact corners the corner
    search finds there (`find_board_near`), where they lie more than `RECUT_MOVE` of a
    square from `box`; None where they do not or none is found."""
    board = find_board_near(image, box)
    if board is None:
        return None
    square = max(box[2] - box[0], box[3] - box[1]) / 8
    moved = max(abs(found - given) for found, given in zip(board.box, box, strict=True))
    return board if moved > RECUT_MOVE * square else None


def cut_at_corners(
    images: Sequence[Image.Image], boards: Sequence[FoundBoard], size: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """What is read of each image's board (`FoundBoard`, in the image's pixels): its squares
    cut out at its corners (`board_pixels`) and the margins outside its box."""
    pairs = list(zip(images, boards, strict=True))
    crops = [board_pixels(image, board, size) for image, board in pairs]
    boxes = [loaded_fraction_box(image, board.box) for image, board in pairs]
    return crops, cut_margins(images, boxes)


def loaded_pixel_box(image: Image.Image, box: Sequence[float]) -> tuple[float, float, float, float]:
    """A box in fractions of `image` in its pixels as loaded (a JPEG can be decoded smaller
    than its file: `image_pixel_box` gives the file's)."""
    width, height = image.size
    return (box[0] * width, box[1] * height, box[2] * width, box[3] * height)


def loaded_fraction_box(
    image: Image.Image, box: Sequence[float]
) -> tuple[float, float, float, float]:
    """A box in `image`'s pixels as loaded as fractions of it (`loaded_pixel_box` undone)."""
    width, height = image.size
    return (box[0] / width, box[1] / height, box[2] / width, box[3] / height)


def image_pixel_corners(
    image: Image.Image, corners: Sequence[Sequence[float]]
) -> tuple[tuple[float, float], ...]:
    """Points in `image`'s pixels as loaded in its file's pixels (`image_pixel_box`)."""
    width, height = image.info.get(SOURCE_SIZE, image.size)
    return tuple((x * width / image.width, y * height / image.height) for x, y in corners)


def locate_in_images(
    reader: Reader, images: Sequence[Image.Image], scenes: Sequence[np.ndarray]
) -> list[tuple[float, float, float, float]]:
    """Each image's board box from the locator (fractions of the image; `usable_box`)."""
    located = locate(reader.model, torch.from_numpy(np.stack(scenes)).permute(0, 3, 1, 2))
    return [usable_box(box, image) for image, box in zip(images, located.tolist(), strict=True)]


def cut_boards(
    images: Sequence[Image.Image], boxes: Sequence[Sequence[float]], size: int
) -> list[np.ndarray]:
    """Each image's box resampled to `size` x `size` (`crop_board`)."""
    return [crop_board(image, box, size) for image, box in zip(images, boxes, strict=True)]


def cut_views(
    images: Sequence[Image.Image], boxes: Sequence[Sequence[float]], size: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """What is read of each image at its box: the squares (`cut_boards`) and the margins
    outside them (`cut_margins`)."""
    return cut_boards(images, boxes, size), cut_margins(images, boxes)


def with_image_boxes(
    readings: list[BoardReading],
    images: Sequence[Image.Image],
    boxes: Sequence[Sequence[float]],
) -> list[BoardReading]:
    """`readings` with each `box` (fractions) set in its image file's pixels."""
    for reading, image, box in zip(readings, images, boxes, strict=True):
        reading.box = image_pixel_box(image, box)
    return readings


def image_pixel_box(image: Image.Image, box: Sequence[float]) -> tuple[float, float, float, float]:
    """A box in fractions of `image` (left, top, right, bottom) in its file's pixels."""
    width, height = image.info.get(SOURCE_SIZE, image.size)
    return (box[0] * width, box[1] * height, box[2] * width, box[3] * height)


def read_found_boards(
    reader: Reader,
    image: Image.Image,
    found: Sequence[FoundBoard],
    decode: str | None = None,
    flipped: bool | None = None,
) -> list[BoardReading]:
    """Read the boards the board finder found in `image` (`chessvlm.finder.FoundBoard`s),
    each cut out at its corners; a board the locator found (`found_by` "locator") that reads
    unsure is read again at its exact corners (`read_unsure_again`). Each reading's `box`
    and `corners` are those of the board it read, in the image."""
    if not found:
        return []
    images, flips = [image] * len(found), [flipped] * len(found)
    read = crop_reading(reader, decode)
    crops, margins = cut_at_corners(images, found, reader.image_size)
    readings = read(crops, flips, margins)
    boxes = [board.box for board in found]
    located = [board.found_by == "locator" for board in found]
    boards = list(found)
    again = read_unsure_again(
        read,
        readings,
        images,
        boxes,
        reader.image_size,
        flips,
        located,
        reader.recut_below,
    )
    for index, reading, board in again:
        readings[index], boards[index] = reading, board
    for reading, board in zip(readings, boards, strict=True):
        reading.box, reading.corners = board.box, board.corners
    return readings


def fraction_box(image: Image.Image, box: Sequence[float]) -> tuple[float, float, float, float]:
    """A box in `image`'s file pixels as fractions of the image (`image_pixel_box` undone)."""
    width, height = image.info.get(SOURCE_SIZE, image.size)
    return (box[0] / width, box[1] / height, box[2] / width, box[3] / height)


def locate_board(reader: Reader, image: Image.Image) -> tuple[float, float, float, float]:
    """`locate_boards` for one image: the finder's `locate`."""
    return locate_boards(reader, [image])[0]


def locate_boards(
    reader: Reader, images: Sequence[Image.Image]
) -> list[tuple[float, float, float, float]]:
    """Where each image's board squares are, as fractions of the image (left, top, right,
    bottom): the reader's locator, for any model that reads cropped boards (e.g. a VLM).
    Each box is `usable_box`: inside the image, or all of it where no board was found."""
    if not images:
        return []
    scenes = np.stack([scene_array(image, LOCATOR_SIZE) for image in images])
    boxes = locate(reader.model, torch.from_numpy(scenes).permute(0, 3, 1, 2))
    return [usable_box(box, image) for image, box in zip(images, boxes.tolist(), strict=True)]


@torch.inference_mode()
def locate(model: BoardReader | ReaderEnsemble, scenes: torch.Tensor) -> torch.Tensor:
    """uint8 whole images N x 3 x L x L -> the boards' boxes N x 4 (fractions of the image)."""
    pixels = scenes.float().div_(255.0).contiguous(memory_format=torch.channels_last)
    return model.locator(pixels)


@torch.inference_mode()
def run_network(
    model: BoardReader | ReaderEnsemble, batch: torch.Tensor, precision: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 boards -> (square log-probabilities B x 64 x 13 in image order, meta probabilities),
    float32 whichever `precision` (`float32` or `bfloat16`) the network computes in."""
    images = batch.float().div_(255.0).contiguous(memory_format=torch.channels_last)
    with computing_in(precision):
        square_logits, meta_logits = model(images)
    return square_logits.float().log_softmax(dim=-1), meta_logits.float().sigmoid()


def decode_outputs(
    log_probs: torch.Tensor,
    meta: torch.Tensor,
    decode: str,
    with_to_move: bool,
    known_flips: Sequence[bool | None] | None = None,
    *,
    prior: PositionPrior | None = None,
    margin: tuple[torch.Tensor, torch.Tensor] | None = None,
    context: SquareContext | None = None,
) -> list[BoardReading]:
    """The network's outputs (`run_network`) as readings: each board turned to the standard
    square order by its known orientation, or else, where a prior is given, by `prior`'s
    evidence from the squares read joined by the coordinates view's, and by the coordinates
    outside the board where `margin` is (`combined_flipped_probability`); by the meta head's
    where none is. Where `context` is given, each square's reading then weighs what the
    rest of the board says about it (`with_context`)."""
    if decode not in DECODERS:
        raise ChessVLMError(f"unknown decoding {decode!r}; choose from {', '.join(DECODERS)}")
    readings = []
    known_flips = known_flips or [None] * len(log_probs)
    meta = meta.clone()
    head = META_OUTPUTS.index("flipped")
    meta[:, head] = combined_flipped_probability(meta, prior, log_probs, margin)
    outside = margin[0].tolist() if margin is not None else [0.0] * len(log_probs)
    named_metas = [dict(zip(META_OUTPUTS, row, strict=True)) for row in meta.tolist()]
    flips = [
        named["flipped"] > 0.5 if known is None else known
        for named, known in zip(named_metas, known_flips, strict=True)
    ]
    squares = [
        to_square_order(cells, flipped, dim=0)
        for cells, flipped in zip(log_probs, flips, strict=True)
    ]
    in_square_order = with_context(context, torch.stack(squares)) if squares else []
    outputs = zip(in_square_order, named_metas, flips, outside, strict=True)
    for in_squares, named, flipped, shown_outside in outputs:
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
                square_probabilities=tuple(chosen.squeeze(1).exp().tolist()),
                outside_coordinates_probability=shown_outside,
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


@dataclass
class _LocatedBatch:
    """A batch whose boards are located and being cut out on the cropping thread."""

    pending: list[_Pending]
    images: list[Image.Image]
    boxes: list[tuple[float, float, float, float]]
    views: Future[tuple[list[np.ndarray], np.ndarray]] | None


def predict_boards(
    reader: Reader,
    sources: Sequence[str | Path],
    *,
    batch_size: int = 64,
    workers: int = 2,
    decode: str | None = None,
    flipped: Sequence[bool | None] | None = None,
) -> Iterator[tuple[str | Path, BoardReading | None, InputError | None]]:
    """Read image files in batches, as `read_images` reads them: `(source, reading, None)`
    or `(source, None, error)` each, in input order; a bad file gives its error and the
    others go on. `flipped`, aligned with `sources`, gives known orientations (see
    `read_arrays`).

    Files are decoded `workers` threads ahead, and each batch's boards are cut out on a
    thread of their own while the network reads the batch before: the network's thread
    then only locates and reads (bench/bench_read_speed.py)."""
    load = partial(load_scene, size=reader.image_size, scene_size=LOCATOR_SIZE)
    loaded = iter_loaded(sources, load, workers=workers, lookahead=2 * batch_size)
    flips = flipped if flipped is not None else [None] * len(sources)
    items = (
        (source, views, error, known)
        for source, (views, error), known in zip(sources, loaded, flips, strict=True)
    )
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crop") as cropper:
        previous: _LocatedBatch | None = None
        for pending in _batches(items, batch_size):
            located = _locate_batch(reader, pending, cropper)
            if previous is not None:
                yield from _read_batch(reader, previous, decode)
            previous = located
        if previous is not None:
            yield from _read_batch(reader, previous, decode)


def _batches(items: Iterable[_Pending], batch_size: int) -> Iterator[list[_Pending]]:
    """Items in lists holding `batch_size` decoded images each (and the errors between)."""
    pending: list[_Pending] = []
    for item in items:
        pending.append(item)
        if sum(entry[1] is not None for entry in pending) >= batch_size:
            yield pending
            pending = []
    if pending:
        yield pending


def _locate_batch(
    reader: Reader, pending: list[_Pending], cropper: ThreadPoolExecutor
) -> _LocatedBatch:
    views = [entry[1] for entry in pending if entry[1] is not None]
    images = [image for image, _ in views]
    if not images:
        return _LocatedBatch(pending, [], [], None)
    boxes = locate_in_images(reader, images, [scene for _, scene in views])
    cut = cropper.submit(cut_views, images, boxes, reader.image_size)
    return _LocatedBatch(pending, images, boxes, cut)


def _read_batch(
    reader: Reader, batch: _LocatedBatch, decode: str | None
) -> Iterator[tuple[str | Path, BoardReading | None, InputError | None]]:
    readings: Iterator[BoardReading] = iter([])
    if batch.views is not None:
        flips = [known for _, views, _, known in batch.pending if views is not None]
        crops, margins = batch.views.result()
        read = read_arrays(reader, crops, decode, flips, margins)
        readings = iter(
            with_exact_corners(
                crop_reading(reader, decode),
                read,
                batch.images,
                batch.boxes,
                reader.image_size,
                flips,
                reader.recut_below,
            )
        )
    for source, views, error, _ in batch.pending:
        yield source, (next(readings) if views is not None else None), error


# --------------------------------------------------------------------------- training
