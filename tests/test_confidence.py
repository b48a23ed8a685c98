"""Board confidence, the squares worth checking, and legality in words."""

from __future__ import annotations

import chess
import pytest

from chessvlm.confidence import board_confidence, legality, uncertain_squares


def test_board_confidence_is_the_chance_that_every_square_is_right():
    assert board_confidence([1.0] * 64) == pytest.approx(1.0)
    assert board_confidence([1.0] * 62 + [0.5, 0.8]) == pytest.approx(0.4)
    assert board_confidence([0.0] + [1.0] * 63) < 1e-9


def test_uncertain_squares_are_named_least_sure_first():
    board = chess.Board()
    probabilities = [1.0] * 64
    probabilities[chess.E2] = 0.6
    probabilities[chess.E4] = 0.3
    probabilities[chess.A1] = 0.95
    assert uncertain_squares(board, probabilities, 0.9) == [
        {"square": "e4", "read": ".", "probability": 0.3},
        {"square": "e2", "read": "P", "probability": 0.6},
    ]


def test_legality_says_why_a_position_is_illegal():
    assert legality(chess.Board()) == []
    no_black_king = chess.Board("8/8/8/8/8/8/P7/K7 w - - 0 1")
    assert legality(no_black_king) == ["black has no king"]
    pawn_on_back_rank = chess.Board("P3k3/8/8/8/8/8/8/4K3 w - - 0 1")
    assert legality(pawn_on_back_rank) == ["a pawn stands on rank 1 or 8"]
    checked_not_to_move = chess.Board("4k3/8/8/8/8/8/4R3/4K3 b - - 0 1")
    checked_not_to_move.turn = chess.WHITE
    assert legality(checked_not_to_move) == ["the side not to move is in check"]
