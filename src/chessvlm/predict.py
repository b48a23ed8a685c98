"""`chessvlm predict`: positions from board images, with a reader checkpoint or a VLM.

The model folder decides the path: a reader checkpoint (`reader.json`) reads boards with the
fast reader; anything else is loaded as a Qwen2-VL model or adapter and asked the prompt it
was trained with. By default the board finder (`chessvlm.finder`) first finds every board
in each screenshot, page or PDF page (`chessvlm.pages`) and each is read from its crop;
`detect=False` reads each image as one board cropped to its squares, as before the finder.
Either way each board gives a placement; the metadata an image cannot show comes from the
user's flags, and each result says where every part came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import chess

from chessvlm.confidence import board_confidence, legality, uncertain_squares
from chessvlm.errors import ChessVLMError, ConfigError, InputError
from chessvlm.pages import DEFAULT_DPI, PDF_SUFFIX, Page, iter_pages
from chessvlm.positions import board_with_metadata, compact_rows, seed_json
from chessvlm.reader.images import iter_loaded, open_board_image

if TYPE_CHECKING:
    from chessvlm.reader.read import BoardReading

FORMATS = ("json", "fen", "compact")
# A model folder, a chessvlm checkpoint or a LoRA adapter has one of these; a hub id is no folder.
VLM_FILES = ("config.json", "adapter_config.json", "chessvlm_config.json")
CASTLING_INFERRED = (
    "consistent with the placement: every king and rook still on its original square is "
    "assumed unmoved (an image cannot show castling rights; pass --castling to set them)"
)
EN_PASSANT_DEFAULT = "none: an image cannot show it (pass --en-passant to set it)"
TO_MOVE_ASSUMED = "white, assumed: the image does not show it (pass --to-move to set it)"


@dataclass
class Placement:
    """What a model read from one image: the pieces, plus what it knows of the rest."""

    board: chess.Board
    notes: dict[str, str] = field(default_factory=dict)
    black_to_move_probability: float | None = None
    # The reader's: where the squares are in the image (pixels: left, top, right, bottom) and
    # the probability of the orientation it reports.
    box: tuple[float, float, float, float] | None = None
    orientation_probability: float | None = None
    # The reader's probability of what it read on each square (a1 first), for confidence.
    square_probabilities: tuple[float, ...] = ()
    # The finder's: the squares' four corners in the image (tl, tr, br, bl).
    corners: tuple[tuple[float, float], ...] | None = None


class NoBoardFound(InputError):
    """A picture in which the finder saw no chess board."""


BoardResult = tuple[Placement | None, ChessVLMError | None]


@dataclass
class PageResult:
    """What one page (an image, or a PDF page) gave: a result per board found, in reading
    order, or the error that stopped the page (`NoBoardFound` when it shows no board)."""

    page: Page
    boards: list[BoardResult]
    error: ChessVLMError | None = None


@dataclass
class Metadata:
    """The user's metadata flags; None means 'not given'."""

    to_move: str | None = None
    castling: str | None = None
    en_passant: str | None = None


def predict_pages(
    model: str,
    paths: Sequence[str],
    *,
    detect: bool = True,
    dpi: int = DEFAULT_DPI,
    done: frozenset[str] = frozenset(),
    batch_size: int = 32,
    decode: str | None = None,
    max_new_tokens: int | None = None,
    flipped: bool | None = None,
) -> Iterator[PageResult]:
    """Read every board of every page of `paths` (images and PDFs) with the model folder
    `model`, one page at a time, in order. With `detect` the finder cuts out each board;
    without it each image is read as one board cropped to its squares (PDFs are refused).
    Pages whose id is in `done` are skipped (a resumed run)."""
    if not detect:
        yield from _undetected_pages(
            model, paths, done, batch_size, decode, max_new_tokens, flipped
        )
        return
    from chessvlm.finder import find_boards

    read_crops, locate = _crop_reader(model, batch_size, decode, max_new_tokens, flipped)
    for page in iter_pages(paths, dpi=dpi, done=done):
        if page.id in done:
            continue
        if page.image is None:
            yield PageResult(page, [], page.error)
            continue
        found = find_boards(page.image, locate=locate)
        if not found:
            yield PageResult(page, [], NoBoardFound(page.id, "no board found"))
            continue
        results = read_crops(page, found)
        for (placement, _), board in zip(results, found, strict=True):
            # A reader gives the box and corners of the board it read (exact corners where
            # it read a located board again); a VLM reads the found board's.
            if placement is not None and placement.box is None:
                placement.box = board.box
                placement.corners = board.corners
        yield PageResult(page, results)


def _undetected_pages(
    model: str,
    paths: Sequence[str],
    done: frozenset[str],
    batch_size: int,
    decode: str | None,
    max_new_tokens: int | None,
    flipped: bool | None,
) -> Iterator[PageResult]:
    images = [path for path in paths if path not in done]
    for path in images:
        if path.lower().endswith(PDF_SUFFIX):
            problem = "a PDF page is no board cropped to its squares: leave out --no-detect"
            yield PageResult(Page(path, None), [], InputError(path, problem))
    boards = [path for path in images if not path.lower().endswith(PDF_SUFFIX)]
    results = predict_images(
        model,
        boards,
        batch_size=batch_size,
        decode=decode,
        max_new_tokens=max_new_tokens,
        flipped=flipped,
    )
    for source, placement, error in results:
        if placement is None:
            yield PageResult(Page(source, None), [], error)
        else:
            yield PageResult(Page(source, None), [(placement, None)])


def _crop_reader(
    model: str,
    batch_size: int,
    decode: str | None,
    max_new_tokens: int | None,
    flipped: bool | None,
):
    """A function reading the boards found in one page ((image, found boards) -> a
    `BoardResult` per board), and the reader's board locator for the finder (None for a
    VLM)."""
    from PIL import Image

    from chessvlm.finder import board_pixels
    from chessvlm.reader.read import (
        is_reader_checkpoint,
        load_reader,
        locate_board,
        read_found_boards,
    )

    if not is_reader_checkpoint(model):
        _check_vlm_folder(model, flipped)
        read_images = _vlm_image_reader(model, batch_size, max_new_tokens)

        def read_with_vlm(page: Page, found) -> list[BoardResult]:
            crops = [
                Image.fromarray(board_pixels(page.image, board, round(8 * board.square_size)))
                for board in found
            ]
            names = [f"{page.id} board {index}" for index in range(1, len(found) + 1)]
            return read_images(crops, names, "board the finder found")

        return read_with_vlm, None
    reader = load_reader(model)

    def read_with_reader(page: Page, found) -> list[BoardResult]:
        readings = read_found_boards(reader, page.image, found, decode, flipped)
        return [
            (reader_placement(reading, model, orientation_given=flipped), None)
            for reading in readings
        ]

    return read_with_reader, partial(locate_board, reader)


def predict_images(
    model: str,
    sources: Sequence[str],
    *,
    batch_size: int = 32,
    decode: str | None = None,
    max_new_tokens: int | None = None,
    flipped: bool | None = None,
) -> Iterator[tuple[str, Placement | None, ChessVLMError | None]]:
    """Read each image with the model folder `model` (reader checkpoint or VLM), in order.

    Yields `(source, placement, None)`, or `(source, None, error)` for an image that cannot be
    read, without stopping the others. `flipped` (reader only) states that black (True) or
    white (False) is at the bottom of every image instead of letting the reader decide.
    """
    from chessvlm.reader.read import is_reader_checkpoint

    if is_reader_checkpoint(model):
        yield from _reader_placements(model, sources, batch_size, decode, flipped)
    else:
        _check_vlm_folder(model, flipped)
        yield from _vlm_placements(model, sources, batch_size, max_new_tokens)


def _check_vlm_folder(model: str, flipped: bool | None) -> None:
    """Refuse what a VLM cannot take: a stated orientation, a folder that is no model."""
    from chessvlm.reader.read import CONFIG_FILE, WEIGHTS_FILE

    folder = Path(model)
    if flipped is not None:
        raise ConfigError("orientation", "applies to reader checkpoints; a VLM reads it itself")
    if folder.is_dir() and not any((folder / name).is_file() for name in VLM_FILES):
        raise ChessVLMError(
            f"{model}: neither a reader checkpoint ({CONFIG_FILE} and {WEIGHTS_FILE}) nor a "
            f"VLM folder ({' or '.join(VLM_FILES)})"
        )


def _reader_placements(
    model: str,
    sources: Sequence[str],
    batch_size: int,
    decode: str | None,
    flipped: bool | None,
) -> Iterator[tuple[str, Placement | None, ChessVLMError | None]]:
    from chessvlm.reader.read import load_reader, predict_boards

    reader = load_reader(model)
    known = [flipped] * len(sources)
    results = predict_boards(reader, sources, batch_size=batch_size, decode=decode, flipped=known)
    for source, reading, error in results:
        if reading is None:
            yield str(source), None, error
        else:
            yield str(source), reader_placement(reading, model, orientation_given=flipped), None


def reader_placement(
    reading: BoardReading, model: str, *, orientation_given: bool | None = None
) -> Placement:
    """What the reader checkpoint `model` read on one board, with notes on where each part
    came from; `orientation_given` is the side the user stated (None: the reader's own)."""
    given = orientation_given is not None
    notes = {
        "placement": f"board reader {model}",
        "orientation": _orientation_note(reading, given=given),
    }
    return Placement(
        reading.board,
        notes,
        reading.black_to_move_probability,
        box=reading.box,
        orientation_probability=None if given else _confidence(reading.flipped_probability),
        square_probabilities=reading.square_probabilities,
        corners=reading.corners,
    )


def _orientation_note(reading, *, given: bool) -> str:
    side = "black" if reading.flipped else "white"
    if given:
        return f"{side} at the bottom (from --orientation)"
    probability = _confidence(reading.flipped_probability)
    if not reading.orientation_shown:
        return (
            f"{side} at the bottom, a guess (probability {probability:.3f}): the board shows "
            "neither pawns nor coordinates, so it looks the same from either side; pass "
            "--orientation white or --orientation black to say which side is at the bottom"
        )
    return f"{side} at the bottom (probability {probability:.3f})"


def _vlm_placements(
    model: str, sources: Sequence[str], batch_size: int, max_new_tokens: int | None
) -> Iterator[tuple[str, Placement | None, ChessVLMError | None]]:
    from chessvlm.evaluation import crop_boards, plan_crop
    from chessvlm.modeling import resolve_model

    # A VLM trained on boards cropped to their labelled box sees each image cut to the board
    # the shipped reader locates, at its exact corners, as `chessvlm evaluate` does; others
    # see whole images.
    crop = plan_crop(None, resolve_model(model).run_config, model)
    locator = None
    if crop.reader is not None:
        from chessvlm.reader import read as reader_module

        locator = reader_module.load_reader(crop.reader)
    read_images = _vlm_image_reader(model, batch_size, max_new_tokens)
    items = zip(sources, iter_loaded(sources, open_board_image, lookahead=batch_size), strict=True)
    while chunk := list(islice(items, batch_size)):
        images = [image for _, (image, _) in chunk if image is not None]
        boxes: list[list[float] | None] = [None] * len(images)
        if locator is not None and images:
            images, boxes = crop_boards(locator, images)
        names = [str(source) for source, (image, _) in chunk if image is not None]
        described = crop.description if locator is not None else None
        results = iter(zip(read_images(images, names, described), boxes, strict=True))
        for source, (image, error) in chunk:
            if image is None:
                yield str(source), None, error
                continue
            (placement, error), box = next(results)
            if placement is not None and box is not None:
                placement.box = tuple(box)
            yield str(source), placement, error


def _vlm_image_reader(model: str, batch_size: int, max_new_tokens: int | None):
    """Load a VLM once; return a function asking it about a list of board images (named by
    `names` in errors), which gives a `BoardResult` each (`crop`, when not None, says what
    the images show)."""
    from chessvlm.generation import default_max_new_tokens, generate_answers
    from chessvlm.modeling import load_model_and_processor, pinned_image_size, resolve_model
    from chessvlm.prompts import PROMPTS

    run_config = resolve_model(model).run_config
    target = run_config.get("target", "compact")
    # A base model never trained here has no prompt of its own: it is asked the compact one.
    prompt = run_config.get("prompt") or PROMPTS[target]
    vlm, processor = load_model_and_processor(model)
    options = {
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens or default_max_new_tokens(target),
        "image_size": pinned_image_size(processor),
    }

    def read(images: list, names: list[str], crop: str | None) -> list[BoardResult]:
        answers = generate_answers(vlm, processor, images, prompt, **options) if images else []
        results = []
        for answer, name in zip(answers, names, strict=True):
            placement, error = _vlm_placement(answer.answer, target, name, model)
            if placement is not None and crop is not None:
                placement.notes["board_crop"] = f"the model read the {crop}"
            results.append((placement, error))
        return results

    return read


def _vlm_placement(
    answer: str, target: str, source: str, model: str
) -> tuple[Placement | None, ChessVLMError | None]:
    from chessvlm.positions import parse_answer

    parsed = parse_answer(answer, target)
    if parsed.board is None:
        codes = ", ".join(parsed.error_codes)
        return None, InputError(
            source, f"the model's answer is not a board ({codes}): {answer[:200]!r}"
        )
    return Placement(parsed.board, {"placement": f"VLM {model} ({target} answer)"}), None


def _confidence(probability: float) -> float:
    return max(probability, 1.0 - probability)


def complete_position(placement: Placement, flags: Metadata) -> tuple[chess.Board, dict[str, str]]:
    """The placement with side to move, castling rights and en passant square, and a note on
    where each came from: the flags first, then what the model read, then safe defaults."""
    notes = dict(placement.notes)
    if flags.to_move:
        to_move = flags.to_move
        notes["to_move"] = "from --to-move"
    elif placement.black_to_move_probability is not None:
        black = placement.black_to_move_probability
        to_move = "b" if black > 0.5 else "w"
        notes["to_move"] = (
            f"read from the image (probability {_confidence(black):.3f}): in the reader's "
            "training data the side to move showed in the image"
        )
    else:
        to_move = "w"
        notes["to_move"] = TO_MOVE_ASSUMED
    if flags.castling:
        castling = flags.castling
        notes["castling_rights"] = "from --castling"
    else:
        # python-chess keeps only the rights whose king and rook are on their original squares.
        castling = "KQkq"
        notes["castling_rights"] = CASTLING_INFERRED
    en_passant = flags.en_passant or "-"
    notes["en_passant"] = "from --en-passant" if flags.en_passant else EN_PASSANT_DEFAULT
    return board_with_metadata(placement.board, to_move, castling, en_passant), notes


def reading_fields(
    placement: Placement, board: chess.Board, uncertain_below: float
) -> dict[str, object]:
    """What a JSON result adds to the position `board` completed from `placement`: the
    board's box (and corners) in the image, the probability of the orientation (absent when
    the model gave none or the user set it), the board's confidence and the squares read
    with a probability under `uncertain_below` (reader only), and whether the position is
    legal, with python-chess's reasons when it is not."""
    fields: dict[str, object] = {}
    if placement.box is not None:
        fields["board_box"] = [round(value, 1) for value in placement.box]
    if placement.corners is not None:
        fields["corners"] = [[round(x, 1), round(y, 1)] for x, y in placement.corners]
    if placement.orientation_probability is not None:
        fields["orientation_probability"] = round(placement.orientation_probability, 4)
    if placement.square_probabilities:
        probabilities = placement.square_probabilities
        fields["confidence"] = round(board_confidence(probabilities), 4)
        fields["uncertain_squares"] = uncertain_squares(board, probabilities, uncertain_below)
    problems = legality(board)
    fields["legal"] = not problems
    if problems:
        fields["illegal_because"] = problems
    return fields


def result_record(
    source: str, board: chess.Board, notes: dict[str, str], extra: dict[str, object] | None
) -> dict[str, object]:
    """One board's JSON result: the image, the seed's position JSON, the FEN, the `extra`
    fields (e.g. `reading_fields`) and where each part of the position came from."""
    result = {"image": source, "position": seed_json(board), "fen": board.fen()}
    return {**result, **(extra or {}), "notes": notes}


def format_result(
    source: str,
    board: chess.Board,
    notes: dict[str, str],
    fmt: str,
    *,
    with_name: bool,
    extra: dict[str, object] | None = None,
) -> str:
    """One image's result in `fmt`: a JSON line (with the `extra` fields, e.g.
    `reading_fields`), or a FEN / compact answer (prefixed by the image name and a tab when
    several images are read)."""
    if fmt == "json":
        return json.dumps(result_record(source, board, notes, extra))
    if fmt == "fen":
        text = board.fen()
    elif fmt == "compact":
        text = json.dumps({"board": compact_rows(board)})
    else:
        raise ChessVLMError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    return f"{source}\t{text}" if with_name else text


def check_flags(flags: Metadata) -> None:
    """Reject metadata flags that are not FEN fields, before any model is loaded."""
    if flags.to_move not in (None, "w", "b"):
        raise ConfigError("to_move", f"must be w or b, not {flags.to_move!r}")
    castling = flags.castling
    if castling is not None and castling != "-" and (not castling or set(castling) - set("KQkq")):
        raise ConfigError(
            "castling", f"must be a FEN castling field like KQkq or -, not {castling!r}"
        )
    square = flags.en_passant
    if square not in (None, "-") and (
        square not in chess.SQUARE_NAMES
        or chess.square_rank(chess.parse_square(square)) not in (2, 5)
    ):
        raise ConfigError("en_passant", f"must be a square on rank 3 or 6 like e3, not {square!r}")
