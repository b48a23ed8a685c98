"""Conversions between boards, FEN, the seed JSON and the compact answer; answer parsing."""

from __future__ import annotations

import json
import random

import chess
import pytest
from boards import random_play_boards

from chessvlm.positions import (
    SQUARE_CLASSES,
    AnswerError,
    answer_text,
    board_from_fen,
    board_from_seed_json,
    board_with_metadata,
    compact_rows,
    is_legal_position,
    parse_answer,
    screen_symbols,
    seed_json,
    seed_validity_errors,
    square_symbols,
)

START = chess.STARTING_FEN


def test_seed_json_of_start_position_matches_the_spec_schema():
    data = seed_json(chess.Board())
    assert list(data) == ["pieces", "metadata"]
    assert data["pieces"][0] == {
        "piece": "white_rook",
        "square": "a1",
        "color": "white",
        "type": "rook",
        "value": 5,
    }
    assert [p["square"] for p in data["pieces"][:9]] == [
        "a1",
        "b1",
        "c1",
        "d1",
        "e1",
        "f1",
        "g1",
        "h1",
        "a2",
    ]
    assert data["metadata"] == {
        "to_move": "white",
        "castling_rights": {"white": ["K", "Q"], "black": ["k", "q"]},
        "en_passant": None,
        "material": {"white": 39, "black": 39},
        "material_balance": 0,
    }


def test_metadata_is_the_positions_own():
    board = chess.Board("r3k2r/8/8/3pP3/8/8/8/R3K2R w Kq d6 0 1")
    meta = seed_json(board)["metadata"]
    assert meta["to_move"] == "white"
    assert meta["castling_rights"] == {"white": ["K"], "black": ["q"]}
    assert meta["en_passant"] == "d6"
    assert meta["material"] == {"white": 11, "black": 11}


def test_compact_rows_read_from_rank_8_as_white_sees_them():
    assert compact_rows(chess.Board()) == [
        "r n b q k b n r",
        "p p p p p p p p",
        ". . . . . . . .",
        ". . . . . . . .",
        ". . . . . . . .",
        ". . . . . . . .",
        "P P P P P P P P",
        "R N B Q K B N R",
    ]
    assert json.loads(answer_text(chess.Board(), "compact")) == {
        "board": compact_rows(chess.Board())
    }


def test_screen_symbols_follow_the_picture_in_both_orientations():
    board = chess.Board("4k3/8/8/8/8/8/8/R3K2n w - - 0 1")
    upright, flipped = screen_symbols(board, False), screen_symbols(board, True)
    assert upright[4] == "k" and upright[56] == "R" and upright[63] == "n"  # e8, a1, h1
    # Black at the bottom: the picture turns by 180 degrees, h1 at the top left.
    assert flipped[0] == "n" and flipped[7] == "R" and flipped[59] == "k"
    assert flipped == upright[::-1]


@pytest.mark.parametrize("seed", [1, 2])
def test_round_trips_are_lossless_on_thousands_of_positions(seed):
    for board in random_play_boards(1500, random.Random(seed)):
        fen = board.fen()
        assert board_from_fen(fen).fen() == fen
        # The seed schema carries no move counters: everything else survives.
        position = fen.rsplit(" ", 2)[0]
        assert board_from_seed_json(seed_json(board)).fen().rsplit(" ", 2)[0] == position
        parsed_seed = parse_answer(answer_text(board, "seed"), "seed")
        assert parsed_seed.board.fen().rsplit(" ", 2)[0] == position
        parsed_compact = parse_answer(answer_text(board, "compact"), "compact")
        assert parsed_compact.board.board_fen() == board.board_fen()
        assert square_symbols(parsed_compact.board) == square_symbols(board)


def test_random_play_covers_the_metadata():
    boards = random_play_boards(1500, random.Random(3))
    assert {b.turn for b in boards} == {chess.WHITE, chess.BLACK}
    assert any(seed_json(b)["metadata"]["en_passant"] for b in boards)
    assert len({b.castling_xfen() for b in boards}) > 3


def test_square_symbols_are_in_python_chess_order():
    symbols = square_symbols(chess.Board())
    assert symbols[chess.A1] == "R" and symbols[chess.E8] == "k" and symbols[chess.E4] == "."
    assert set(symbols) <= set(SQUARE_CLASSES)


def test_board_with_metadata_merges_labels_into_a_placement():
    placement = board_from_fen("r3k2r/8/8/8/8/8/8/R3K2R")
    board = board_with_metadata(placement, "b", "KQkq", "-")
    assert board.fen() == "r3k2r/8/8/8/8/8/8/R3K2R b KQkq - 0 1"
    # Rights the placement cannot have are dropped from the board itself, not only from its
    # FEN, so that python-chess does not call the position's castling rights bad.
    moved = board_with_metadata(board_from_fen("8/b1r5/5R2/6K1/1k6/8/3N4/8"), "w", "KQkq")
    assert moved.castling_rights == chess.BB_EMPTY
    assert moved.status() == chess.STATUS_VALID


@pytest.mark.parametrize(
    "text",
    [
        '```json\n{"board": ["r n b q k b n r", "p p p p p p p p", ". . . . . . . .", '
        '". . . . . . . .", ". . . . . . . .", ". . . . . . . .", "P P P P P P P P", '
        '"R N B Q K B N R"]}\n```',
        'Here is the position: {"board": ["rnbqkbnr", "pppppppp", "........", "........", '
        '"........", "........", "PPPPPPPP", "RNBQKBNR"]} Hope it helps.',
        '  {"board": [" r n b q k b n r ", "p  p p p p p p p", ". . . . . . . .", '
        '". . . . . . . .", ". . . . . . . .", ". . . . . . . .", "P P P P P P P P", '
        '"R N B Q K B N R"]}  ',
    ],
)
def test_parsing_is_tolerant_of_fences_prose_and_whitespace(text):
    parsed = parse_answer(text, "compact")
    assert parsed.valid_json and parsed.errors == []
    assert parsed.board.board_fen() == chess.Board().board_fen()


def _compact(rows):
    return json.dumps({"board": rows})


FULL = compact_rows(chess.Board())


@pytest.mark.parametrize(
    ("text", "valid_json", "code"),
    [
        ("I cannot see a board.", False, "no_json"),
        ('{"board": ["r n b q k b n r", "p p p', False, "invalid_json"),
        ('{"position": "start"}', False, "wrong_shape"),
        (_compact(FULL[:7]), True, "wrong_rank_count"),
        (_compact([*FULL[:7], "R N B Q K B N"]), True, "wrong_rank_length"),
        (_compact([*FULL[:7], "R N B Q K B N X"]), True, "unknown_piece"),
    ],
)
def test_compact_parse_errors_are_named(text, valid_json, code):
    parsed = parse_answer(text, "compact")
    assert parsed.valid_json is valid_json
    assert parsed.board is None
    assert parsed.error_codes == [code]


def _seed_with(pieces, **metadata):
    data = seed_json(chess.Board())
    data["pieces"] = pieces
    data["metadata"].update(metadata)
    return json.dumps(data)


KING = {"piece": "white_king", "square": "e1", "color": "white", "type": "king", "value": 0}


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (_seed_with([KING, dict(KING)]), "duplicate_square"),
        (_seed_with([{**KING, "piece": "white_emperor"}]), "unknown_piece"),
        (_seed_with([{**KING, "square": "e9"}]), "bad_square"),
        (_seed_with([{**KING, "color": "black"}]), "inconsistent_piece"),
        (_seed_with([{"square": "e1"}]), "wrong_shape"),
        (_seed_with([KING], to_move="green"), "bad_metadata"),
        (_seed_with([KING], en_passant="z9"), "bad_metadata"),
        (_seed_with([KING], castling_rights={"white": ["X"], "black": []}), "bad_metadata"),
    ],
)
def test_seed_parse_errors_are_named(text, code):
    parsed = parse_answer(text, "seed")
    assert parsed.valid_json and parsed.board is None
    assert parsed.error_codes == [code]


def test_target_shape_is_enforced_and_detected():
    compact = answer_text(chess.Board(), "compact")
    assert parse_answer(compact, "seed").error_codes == ["wrong_shape"]
    assert parse_answer(compact).board.board_fen() == chess.Board().board_fen()
    assert parse_answer(answer_text(chess.Board(), "seed")).board.fen() == START


def test_bad_fen_is_a_named_error():
    with pytest.raises(AnswerError) as error:
        board_from_fen("rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNX")
    assert error.value.code == "bad_fen"


def test_seed_validity_checks():
    assert seed_validity_errors(chess.Board()) == []
    board = board_from_fen("kk6/8/8/8/8/8/8/P7")
    errors = seed_validity_errors(board)
    assert "white has 0 kings" in errors and "black has 2 kings" in errors
    assert "pawn on rank 1 or 8" in errors
    nine_pawns = board_from_fen("4k3/pppppppp/p7/8/8/8/8/4K3")
    assert "black has 9 pawns" in seed_validity_errors(nine_pawns)


def test_legality_uses_cleaned_castling_rights():
    assert is_legal_position(chess.Board())
    # Castling rights without the rook are cleaned, not held against the position.
    assert is_legal_position(board_with_metadata(board_from_fen("4k3/8/8/8/8/8/8/4K3"), "w", "KQ"))
    # The side not to move is in check: illegal.
    assert not is_legal_position(board_from_fen("4k3/4R3/8/8/8/8/8/4K3 w - - 0 1"))
