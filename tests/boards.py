"""Positions for tests: boards reached by random legal play."""

from __future__ import annotations

import random

import chess


def random_play_boards(count: int, rng: random.Random, max_plies: int = 120) -> list[chess.Board]:
    """`count` boards, each after 0..`max_plies` random legal plies from the start position.

    Long games reach every side to move, lost castling rights, en passant squares and
    promotions, so conversions are tested on the metadata as well as the placement.
    """
    boards = []
    for _ in range(count):
        board = chess.Board()
        for _ in range(rng.randint(0, max_plies)):
            moves = list(board.legal_moves)
            if not moves:
                break
            board.push(rng.choice(moves))
        boards.append(board)
    return boards
