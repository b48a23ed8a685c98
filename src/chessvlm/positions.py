"""Chess positions in every form the project uses, and the parsing of model answers.

Forms: a `chess.Board` (the one in-memory representation), FEN, the seed's position JSON
(SPEC: exact keys, order and values) and the compact answer `{"board": [8 ranks]}`.
Square order everywhere is python-chess's: a1, b1, ..., h1, a2, ..., h8.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import chess

from chessvlm.errors import ChessVLMError

TARGETS = ("compact", "seed")

COLOR_NAMES = {chess.WHITE: "white", chess.BLACK: "black"}
PIECE_TYPE_NAMES = {
    chess.PAWN: "pawn",
    chess.KNIGHT: "knight",
    chess.BISHOP: "bishop",
    chess.ROOK: "rook",
    chess.QUEEN: "queen",
    chess.KING: "king",
}
PIECE_VALUES = {
    chess.PAWN: 1,
    chess.KNIGHT: 3,
    chess.BISHOP: 3,
    chess.ROOK: 5,
    chess.QUEEN: 9,
    chess.KING: 0,
}
EMPTY = "."
# The 13 square classes: empty, then white and black pieces in FEN letters.
SQUARE_CLASSES = (EMPTY, "P", "N", "B", "R", "Q", "K", "p", "n", "b", "r", "q", "k")

_PIECE_BY_NAME = {
    f"{COLOR_NAMES[color]}_{PIECE_TYPE_NAMES[piece_type]}": chess.Piece(piece_type, color)
    for color in chess.COLORS
    for piece_type in chess.PIECE_TYPES
}
_CASTLING_LETTERS = {
    chess.WHITE: (("K", chess.BB_H1), ("Q", chess.BB_A1)),
    chess.BLACK: (("k", chess.BB_H8), ("q", chess.BB_A8)),
}
_CODE_FENCE = re.compile(r"```(?:json)?")


class AnswerError(ChessVLMError):
    """A position that cannot be read, with a stable machine-readable `code`.

    Codes: no_json, invalid_json, wrong_shape, wrong_rank_count, wrong_rank_length,
    unknown_piece, bad_square, duplicate_square, inconsistent_piece, bad_metadata, bad_fen.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ParsedAnswer:
    """The result of reading a model's answer.

    `valid_json` is true when the text holds a JSON object of the target's shape; `board` is
    set only when, in addition, every square and piece in it makes sense (placement, plus the
    metadata the answer states for the seed target).
    """

    valid_json: bool
    board: chess.Board | None
    errors: list[AnswerError] = field(default_factory=list)
    data: Any = None

    @property
    def error_codes(self) -> list[str]:
        """The codes of the errors found, in order."""
        return [error.code for error in self.errors]


def piece_name(piece: chess.Piece) -> str:
    """The seed's name for a piece, e.g. `white_rook`."""
    return f"{COLOR_NAMES[piece.color]}_{PIECE_TYPE_NAMES[piece.piece_type]}"


def castling_letters(board: chess.Board, color: chess.Color) -> list[str]:
    """The castling rights that `color` really has, kingside first (e.g. `["K", "Q"]`)."""
    rights = board.clean_castling_rights()
    return [letter for letter, rook_square in _CASTLING_LETTERS[color] if rights & rook_square]


def en_passant_square(board: chess.Board) -> str | None:
    """The en passant square, only when an en passant capture is legal (as `board.fen()` does)."""
    if board.ep_square is None or not board.has_legal_en_passant():
        return None
    return chess.square_name(board.ep_square)


def material(board: chess.Board, color: chess.Color) -> int:
    """Material of one side with P=1 N=3 B=3 R=5 Q=9, kings excluded."""
    return sum(
        PIECE_VALUES[piece_type] * len(board.pieces(piece_type, color))
        for piece_type in chess.PIECE_TYPES
    )


def seed_json(board: chess.Board) -> dict:
    """The seed's position JSON: pieces in square order and the position's real metadata."""
    pieces = [
        {
            "piece": piece_name(piece),
            "square": chess.square_name(square),
            "color": COLOR_NAMES[piece.color],
            "type": PIECE_TYPE_NAMES[piece.piece_type],
            "value": PIECE_VALUES[piece.piece_type],
        }
        for square, piece in sorted(board.piece_map().items())
    ]
    white, black = material(board, chess.WHITE), material(board, chess.BLACK)
    metadata = {
        "to_move": COLOR_NAMES[board.turn],
        "castling_rights": {
            "white": castling_letters(board, chess.WHITE),
            "black": castling_letters(board, chess.BLACK),
        },
        "en_passant": en_passant_square(board),
        "material": {"white": white, "black": black},
        "material_balance": white - black,
    }
    return {"pieces": pieces, "metadata": metadata}


def compact_rows(board: chess.Board) -> list[str]:
    """The compact answer's 8 ranks, rank 8 first, as white sees them: `"r . b q k b n r"`."""
    return [
        " ".join(square_symbol(board, chess.square(file, rank)) for file in range(8))
        for rank in range(7, -1, -1)
    ]


def square_symbol(board: chess.Board, square: chess.Square) -> str:
    """FEN letter of the piece on `square`, or `.` when it is empty."""
    piece = board.piece_at(square)
    return piece.symbol() if piece else EMPTY


def square_symbols(board: chess.Board) -> list[str]:
    """The 64 square symbols in python-chess square order (a1 first)."""
    return [square_symbol(board, square) for square in chess.SQUARES]


def screen_symbols(board: chess.Board, flipped: bool) -> list[str]:
    """The 64 square symbols in the order an image shows them: top row first, left to right.

    `flipped` means black is at the bottom, which turns the picture by 180 degrees.
    """
    top_down = [
        square_symbol(board, chess.square(file, rank))
        for rank in range(7, -1, -1)
        for file in range(8)
    ]
    return top_down[::-1] if flipped else top_down


def answer_text(board: chess.Board, target: str) -> str:
    """The answer a model is trained to emit for `board` in the `target` format."""
    if target == "compact":
        return json.dumps({"board": compact_rows(board)})
    if target == "seed":
        return json.dumps(seed_json(board), indent=2)
    raise ChessVLMError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")


def board_from_fen(fen: str) -> chess.Board:
    """A board from a full FEN or from its placement field alone (then white to move, no rights)."""
    text = fen.strip()
    try:
        if " " in text:
            return chess.Board(text)
        board = chess.Board(None)
        board.set_board_fen(text)
        return board
    except ValueError as error:
        raise AnswerError("bad_fen", f"invalid FEN {fen!r}: {error}") from None


def board_with_metadata(
    placement: chess.Board,
    active_color: str = "w",
    castling_rights: str = "-",
    en_passant: str = "-",
) -> chess.Board:
    """`placement`'s pieces with the given FEN metadata fields (side, castling, en passant).

    Castling rights the placement cannot have are dropped, as python-chess's FEN does.
    """
    fields = [placement.board_fen(), active_color or "w", castling_rights or "-", en_passant or "-"]
    board = board_from_fen(" ".join(fields) + " 0 1")
    # python-chess keeps every right a FEN names and drops the impossible ones only when it
    # writes a FEN, so `status()` would call the position's castling rights bad.
    board.castling_rights = board.clean_castling_rights()
    return board


def seed_validity_errors(board: chess.Board) -> list[str]:
    """The seed's sanity checks on a placement: kings, pawn and piece counts, pawns on ranks 1/8."""
    errors = []
    for color in chess.COLORS:
        name = COLOR_NAMES[color]
        kings = len(board.pieces(chess.KING, color))
        if kings != 1:
            errors.append(f"{name} has {kings} kings")
        pawns = len(board.pieces(chess.PAWN, color))
        if pawns > 8:
            errors.append(f"{name} has {pawns} pawns")
        pieces = chess.popcount(board.occupied_co[color])
        if pieces > 16:
            errors.append(f"{name} has {pieces} pieces")
    if board.pawns & chess.BB_BACKRANKS:
        errors.append("pawn on rank 1 or 8")
    return errors


def is_legal_position(board: chess.Board) -> bool:
    """Whether python-chess accepts the position (`is_valid()` after cleaning castling rights)."""
    cleaned = board.copy(stack=False)
    cleaned.castling_rights = cleaned.clean_castling_rights()
    return cleaned.is_valid()


def parse_answer(text: str, target: str | None = None) -> ParsedAnswer:
    """Read a model's answer in the compact or seed format (`target=None` detects which).

    Tolerant of code fences, text around the JSON and whitespace; strict about meaning: every
    problem is reported as an `AnswerError` with a distinct code, never raised.
    """
    try:
        data = extract_json_object(text)
    except AnswerError as error:
        return ParsedAnswer(valid_json=False, board=None, errors=[error])
    shape = _answer_shape(data)
    if shape is None or (target is not None and shape != target):
        expected = target or "compact or seed"
        error = AnswerError("wrong_shape", f"JSON object is not a {expected} answer")
        return ParsedAnswer(valid_json=False, board=None, errors=[error], data=data)
    reader = board_from_compact if shape == "compact" else board_from_seed_json
    try:
        board = reader(data)
    except AnswerError as error:
        return ParsedAnswer(valid_json=True, board=None, errors=[error], data=data)
    return ParsedAnswer(valid_json=True, board=board, data=data)


def extract_json_object(text: str) -> Any:
    """The first JSON object in `text`, skipping code fences and any prose around it."""
    cleaned = _CODE_FENCE.sub("", text)
    decoder = json.JSONDecoder()
    first_error: json.JSONDecodeError | None = None
    for match in re.finditer(r"\{", cleaned):
        try:
            data, _ = decoder.raw_decode(cleaned, match.start())
        except json.JSONDecodeError as error:
            first_error = first_error or error
            continue
        if isinstance(data, dict):
            return data
    if first_error is None:
        raise AnswerError("no_json", "no JSON object in the answer")
    raise AnswerError("invalid_json", f"answer is not valid JSON ({first_error.msg})")


def _answer_shape(data: Any) -> str | None:
    if isinstance(data, dict) and isinstance(data.get("board"), list):
        return "compact"
    if (
        isinstance(data, dict)
        and isinstance(data.get("pieces"), list)
        and isinstance(data.get("metadata"), dict)
    ):
        return "seed"
    return None


def board_from_compact(data: dict) -> chess.Board:
    """The placement stated by a compact answer (white to move, no castling: it states none)."""
    rows = data["board"]
    if len(rows) != 8:
        raise AnswerError("wrong_rank_count", f"expected 8 ranks, got {len(rows)}")
    board = chess.Board(None)
    for index, row in enumerate(rows):
        rank = 7 - index
        if not isinstance(row, str):
            raise AnswerError("wrong_shape", f"rank {rank + 1} is not a string")
        symbols = row.split() if any(c.isspace() for c in row.strip()) else list(row.strip())
        if len(symbols) != 8:
            raise AnswerError(
                "wrong_rank_length", f"rank {rank + 1} has {len(symbols)} squares, expected 8"
            )
        for file, symbol in enumerate(symbols):
            if symbol == EMPTY:
                continue
            if symbol not in SQUARE_CLASSES:
                raise AnswerError("unknown_piece", f"unknown piece {symbol!r} on rank {rank + 1}")
            board.set_piece_at(chess.square(file, rank), chess.Piece.from_symbol(symbol))
    return board


def board_from_seed_json(data: dict) -> chess.Board:
    """The position stated by a seed-schema answer, metadata included."""
    board = chess.Board(None)
    for entry in data["pieces"]:
        square, piece = _seed_piece(entry)
        if board.piece_at(square) is not None:
            raise AnswerError("duplicate_square", f"two pieces on {chess.square_name(square)}")
        board.set_piece_at(square, piece)
    _apply_seed_metadata(board, data["metadata"])
    return board


def _seed_piece(entry: Any) -> tuple[chess.Square, chess.Piece]:
    if not isinstance(entry, dict) or "piece" not in entry or "square" not in entry:
        raise AnswerError("wrong_shape", f"piece entry {entry!r} lacks 'piece' or 'square'")
    piece = _PIECE_BY_NAME.get(entry["piece"]) if isinstance(entry["piece"], str) else None
    if piece is None:
        raise AnswerError("unknown_piece", f"unknown piece name {entry['piece']!r}")
    name = entry["square"]
    if not isinstance(name, str) or name not in chess.SQUARE_NAMES:
        raise AnswerError("bad_square", f"bad square {name!r}")
    stated = {
        "color": COLOR_NAMES[piece.color],
        "type": PIECE_TYPE_NAMES[piece.piece_type],
        "value": PIECE_VALUES[piece.piece_type],
    }
    for key, expected in stated.items():
        if key in entry and entry[key] != expected:
            raise AnswerError(
                "inconsistent_piece", f"{entry['piece']} on {name} has {key} {entry[key]!r}"
            )
    return chess.parse_square(name), piece


def _apply_seed_metadata(board: chess.Board, metadata: dict) -> None:
    to_move = metadata.get("to_move", "white")
    if to_move not in ("white", "black"):
        raise AnswerError("bad_metadata", f"to_move is {to_move!r}")
    board.turn = to_move == "white"
    rights = metadata.get("castling_rights") or {}
    if not isinstance(rights, dict):
        raise AnswerError("bad_metadata", f"castling_rights is {rights!r}")
    letters = ""
    for color in chess.COLORS:
        stated = rights.get(COLOR_NAMES[color]) or []
        allowed = {letter.upper() for letter, _ in _CASTLING_LETTERS[color]}
        if not isinstance(stated, list) or not {str(s).upper() for s in stated} <= allowed:
            raise AnswerError("bad_metadata", f"castling rights {stated!r}")
        for letter, _ in _CASTLING_LETTERS[color]:
            if letter.upper() in {str(s).upper() for s in stated}:
                letters += letter
    board.set_castling_fen(letters or "-")
    en_passant = metadata.get("en_passant")
    if en_passant is not None and en_passant not in chess.SQUARE_NAMES:
        raise AnswerError("bad_metadata", f"en_passant is {en_passant!r}")
    board.ep_square = chess.parse_square(en_passant) if en_passant else None
