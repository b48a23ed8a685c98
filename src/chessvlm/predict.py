"""`chessvlm predict`: positions from board images, with a reader checkpoint or a VLM.

The model folder decides the path: a reader checkpoint (`reader.json`) reads boards with the
fast reader; anything else is loaded as a Qwen2-VL model or adapter and asked the prompt it
was trained with. Either way each image gives a placement; the metadata an image cannot show
comes from the user's flags, and each result says where every part came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import chess

from chessvlm.errors import ChessVLMError, ConfigError, InputError
from chessvlm.positions import board_with_metadata, compact_rows, seed_json
from chessvlm.reader.images import iter_loaded, open_board_image

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


@dataclass
class Metadata:
    """The user's metadata flags; None means 'not given'."""

    to_move: str | None = None
    castling: str | None = None
    en_passant: str | None = None


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
    from chessvlm.reader.read import CONFIG_FILE, WEIGHTS_FILE, is_reader_checkpoint

    folder = Path(model)
    if is_reader_checkpoint(folder):
        yield from _reader_placements(model, sources, batch_size, decode, flipped)
    elif flipped is not None:
        raise ConfigError("orientation", "applies to reader checkpoints; a VLM reads it itself")
    elif folder.is_dir() and not any((folder / name).is_file() for name in VLM_FILES):
        raise ChessVLMError(
            f"{model}: neither a reader checkpoint ({CONFIG_FILE} and {WEIGHTS_FILE}) nor a "
            f"VLM folder ({' or '.join(VLM_FILES)})"
        )
    else:
        yield from _vlm_placements(model, sources, batch_size, max_new_tokens)


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
            continue
        notes = {
            "placement": f"board reader {model}",
            "orientation": _orientation_note(reading, given=flipped is not None),
        }
        placement = Placement(
            reading.board,
            notes,
            reading.black_to_move_probability,
            box=reading.box,
            orientation_probability=None
            if flipped is not None
            else _confidence(reading.flipped_probability),
        )
        yield str(source), placement, None


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
    from chessvlm.generation import default_max_new_tokens, generate_answers
    from chessvlm.modeling import load_model_and_processor, pinned_image_size, resolve_model
    from chessvlm.prompts import PROMPTS

    run_config = resolve_model(model).run_config
    target = run_config.get("target", "compact")
    # A base model never trained here has no prompt of its own: it is asked the compact one.
    prompt = run_config.get("prompt") or PROMPTS[target]
    # A VLM trained on boards cropped to their labelled box sees each image cut to the board
    # the shipped reader locates, as `chessvlm evaluate` does; others see whole images.
    crop = plan_crop(None, run_config, model)
    locator = None
    if crop.reader is not None:
        from chessvlm.reader import read as reader_module

        locator = reader_module.load_reader(crop.reader)
    vlm, processor = load_model_and_processor(model)
    options = {
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens or default_max_new_tokens(target),
        "image_size": pinned_image_size(processor),
    }
    items = zip(sources, iter_loaded(sources, open_board_image, lookahead=batch_size), strict=True)
    while chunk := list(islice(items, batch_size)):
        images = [image for _, (image, _) in chunk if image is not None]
        boxes: list[list[float] | None] = [None] * len(images)
        if locator is not None and images:
            images, boxes = crop_boards(locator, images)
        answers = iter(
            generate_answers(vlm, processor, images, prompt, **options) if images else []
        )
        located = iter(boxes)
        for source, (image, error) in chunk:
            if image is None:
                yield str(source), None, error
                continue
            placement, error = _vlm_placement(next(answers).answer, target, str(source), model)
            box = next(located)
            if placement is not None and box is not None:
                placement.box = tuple(box)
                placement.notes["board_crop"] = f"the model read the {crop.description}"
            yield str(source), placement, error


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


def reading_fields(placement: Placement) -> dict[str, object]:
    """What a JSON result adds from the reader: the board's box in the image and the
    probability of the orientation (absent when the model gave none or the user set it)."""
    fields: dict[str, object] = {}
    if placement.box is not None:
        fields["board_box"] = [round(value, 1) for value in placement.box]
    if placement.orientation_probability is not None:
        fields["orientation_probability"] = round(placement.orientation_probability, 4)
    return fields


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
        result = {"image": source, "position": seed_json(board), "fen": board.fen()}
        return json.dumps({**result, **(extra or {}), "notes": notes})
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
