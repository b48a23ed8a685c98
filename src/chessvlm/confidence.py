"""How sure a reading is, and whether the position it gives can happen in a game.

`board_confidence` is the probability that all 64 squares were read right, taking the
reader's per-square probabilities as independent: one doubtful square pulls the board
down, which is what a user checking the answer needs to know. `uncertain_squares` names the
squares worth a second look, and `legality` says, in words, what python-chess finds wrong
with a position (`chess.Board.status()`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import chess

from chessvlm.positions import square_symbol

DEFAULT_UNCERTAIN_BELOW = 0.9
# python-chess's status flags, in words (the racing-kings ones never apply to chess; a flag
# a later python-chess adds is named after itself).
_STATUS_WORDS = {
    chess.STATUS_NO_WHITE_KING: "white has no king",
    chess.STATUS_NO_BLACK_KING: "black has no king",
    chess.STATUS_TOO_MANY_KINGS: "a side has more than one king",
    chess.STATUS_TOO_MANY_WHITE_PAWNS: "white has more than 8 pawns",
    chess.STATUS_TOO_MANY_BLACK_PAWNS: "black has more than 8 pawns",
    chess.STATUS_PAWNS_ON_BACKRANK: "a pawn stands on rank 1 or 8",
    chess.STATUS_TOO_MANY_WHITE_PIECES: "white has more than 16 pieces",
    chess.STATUS_TOO_MANY_BLACK_PIECES: "black has more than 16 pieces",
    chess.STATUS_BAD_CASTLING_RIGHTS: "the castling rights do not fit the kings and rooks",
    chess.STATUS_INVALID_EP_SQUARE: "the en passant square does not fit the pawns",
    chess.STATUS_OPPOSITE_CHECK: "the side not to move is in check",
    chess.STATUS_EMPTY: "the board is empty",
    chess.STATUS_TOO_MANY_CHECKERS: "the king is checked by more than two pieces",
    chess.STATUS_IMPOSSIBLE_CHECK: "the king is checked in a way no last move allows",
}


def board_confidence(square_probabilities: Sequence[float]) -> float:
    """The probability that every square was read right: the product of the 64."""
    return math.exp(sum(math.log(max(p, 1e-12)) for p in square_probabilities))


def uncertain_squares(
    board: chess.BaseBoard, square_probabilities: Sequence[float], below: float
) -> list[dict[str, object]]:
    """The squares read with probability under `below`, least sure first: the square's
    name, what was read there (a FEN letter or "." for empty) and its probability."""
    doubtful = [
        (probability, square)
        for square, probability in enumerate(square_probabilities)
        if probability < below
    ]
    return [
        {
            "square": chess.square_name(square),
            "read": square_symbol(board, square),
            "probability": round(probability, 4),
        }
        for probability, square in sorted(doubtful)
    ]


def legality(board: chess.Board) -> list[str]:
    """What python-chess finds wrong with the position, in words; empty when it is legal."""
    status = board.status()
    return [
        _STATUS_WORDS.get(flag, str(flag.name).lower().replace("_", " "))
        for flag in chess.Status
        if flag and status & flag
    ]
