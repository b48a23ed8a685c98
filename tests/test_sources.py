"""Position sources: synthetic games (metadata, variety, determinism), conversions round trips
on generated positions, and reading the seed's two on-disk layouts."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice

import chess
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from seed_layouts import (
    ROWS,
    hf_table,
    image_bytes,
    write_arrow_layout,
    write_csv_layout,
    write_parquet_layout,
)

from chessvlm.errors import InputError
from chessvlm.positions import (
    answer_text,
    board_from_compact,
    board_from_fen,
    board_from_seed_json,
    compact_rows,
    parse_answer,
    seed_json,
)
from chessvlm.sources import (
    RawSample,
    checked_board,
    count_samples,
    find_splits,
    iter_samples,
    iter_synthetic_positions,
    placement_key,
    sample_board,
    synthetic_positions,
)

N_POSITIONS = 3000


@pytest.fixture(scope="module")
def positions():
    return synthetic_positions(N_POSITIONS, seed=11)


@pytest.fixture(scope="module")
def boards(positions):
    return [position.board for position in positions]


def _position_key(board: chess.Board) -> str:
    """FEN without the move clocks: what every representation must preserve."""
    return " ".join(board.fen().split()[:4])


# --------------------------------------------------------------------------- synthetic games


def test_synthetic_positions_are_deterministic_for_a_seed():
    first = synthetic_positions(200, seed=5)
    assert synthetic_positions(200, seed=5) == first
    assert synthetic_positions(200, seed=6) != first


def test_synthetic_positions_are_distinct_legal_and_reached_by_their_last_move(positions, boards):
    assert len({placement_key(board) for board in boards}) == len(boards)
    for position, board in zip(positions, boards, strict=True):
        assert board.is_valid(), position.fen
        moved = board.piece_at(position.move.to_square)
        # The side that just moved is the side not to move now.
        assert moved is not None and moved.color != board.turn, position


def test_synthetic_positions_carry_real_varied_metadata(boards):
    turns = Counter(board.turn for board in boards)
    assert min(turns.values()) > 0.4 * len(boards)
    castling = Counter(board.castling_xfen() for board in boards)
    assert {"KQkq", "-"} <= set(castling) and len(castling) >= 8
    with_ep = [board for board in boards if board.has_legal_en_passant()]
    assert 5 <= len(with_ep) < 0.1 * len(boards)
    assert all(board.fen().split()[3] != "-" for board in with_ep)
    assert any(board.fullmove_number > 40 for board in boards)
    assert any(board.halfmove_clock > 10 for board in boards)


def test_synthetic_positions_span_openings_to_bare_endgames(positions, boards):
    counts = Counter(chess.popcount(board.occupied) for board in boards)
    assert min(counts) <= 3 and max(counts) == 32
    assert len(counts) >= 28
    # No phase dominates: middlegames and endgames are both well represented.
    assert sum(n for pieces, n in counts.items() if pieces <= 10) > 0.15 * N_POSITIONS
    assert sum(n for pieces, n in counts.items() if 11 <= pieces <= 24) > 0.3 * N_POSITIONS
    promoted = [
        board
        for board in boards
        if any(
            len(board.pieces(chess.QUEEN, color)) > 1 or len(board.pieces(chess.KNIGHT, color)) > 2
            for color in chess.COLORS
        )
    ]
    assert len(promoted) >= 10
    assert any(
        chess.Move.from_uci(p.last_move).promotion for p in positions if len(p.last_move) == 5
    )


def test_bare_kings_positions_occur():
    stream = iter_synthetic_positions(seed=3)
    assert any(chess.popcount(next(stream).board.occupied) == 2 for _ in range(2000))


def test_streams_sharing_an_exclusion_set_never_repeat_a_board():
    seen: set = set()
    first = list(islice(iter_synthetic_positions("a", seen), 300))
    second = list(islice(iter_synthetic_positions("b", seen), 300))
    keys = [placement_key(p.board) for p in first + second]
    assert len(set(keys)) == 600
    # The opening position of the second stream's games was already taken by the first.
    assert not {p.fen for p in first} & {p.fen for p in second}


# --------------------------------------------------------------------------- conversions


def test_seed_json_round_trips_on_generated_positions(boards):
    for board in boards:
        data = seed_json(board)
        assert _position_key(board_from_seed_json(data)) == _position_key(board)
        assert json.loads(json.dumps(data)) == data
        meta = data["metadata"]
        assert meta["to_move"] == ("white" if board.turn else "black")
        assert (meta["en_passant"] or "-") == board.fen().split()[3]
        letters = "".join(meta["castling_rights"]["white"] + meta["castling_rights"]["black"])
        assert (letters or "-") == board.castling_xfen()


def test_fen_and_compact_round_trips_on_generated_positions(boards):
    for board in boards:
        assert board_from_fen(board.fen()) == board
        placement = board_from_compact({"board": compact_rows(board)})
        assert placement.board_fen() == board.board_fen()
        assert board_from_fen(board.board_fen()).board_fen() == board.board_fen()


def test_answers_parse_back_to_the_position(boards):
    for board in boards[:500]:
        compact = parse_answer(answer_text(board, "compact"), "compact")
        assert compact.valid_json and compact.board.board_fen() == board.board_fen()
        seed = parse_answer(answer_text(board, "seed"), "seed")
        assert seed.valid_json and _position_key(seed.board) == _position_key(board)


# --------------------------------------------------------------------------- checked boards


@pytest.mark.parametrize(
    ("fields", "fen"),
    [
        (("w", "KQkq", "-"), "r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1"),
        (("white", "", ""), "r3k2r/8/8/8/8/8/8/R3K2R w - - 0 1"),
        (("Black", "-", None), "r3k2r/8/8/8/8/8/8/R3K2R b - - 0 1"),
        (("b", "Kq", "-"), "r3k2r/8/8/8/8/8/8/R3K2R b Kq - 0 1"),
    ],
)
def test_checked_board_reads_metadata_variants(fields, fen):
    assert checked_board("r3k2r/8/8/8/8/8/8/R3K2R", "x", *fields).fen() == fen


def test_checked_board_keeps_a_legal_en_passant_square():
    board = checked_board("4k3/8/8/8/3pP3/8/8/4K3", "x", "b", "-", "e3")
    assert board.fen() == "4k3/8/8/8/3pP3/8/8/4K3 b - e3 0 1"


@pytest.mark.parametrize(
    ("fen", "fields", "problem"),
    [
        ("", ("w", "-", "-"), "empty FEN"),
        ("rnbqkbnr/ppp/8", ("w", "-", "-"), "invalid FEN"),
        ("4k3/8/8/8/8/8/8/4KK2", ("w", "-", "-"), "white has 2 kings"),
        ("4k3/8/8/8/8/8/8/P3K3", ("w", "-", "-"), "pawn on rank 1 or 8"),
        ("4k3/8/8/8/8/8/8/4K3", ("x", "-", "-"), "active_color 'x'"),
        ("4k3/8/8/8/8/8/8/4K3", ("w", "KX", "-"), "castling_rights 'KX'"),
        ("4k3/8/8/8/8/8/8/4K3", ("w", "-", "e4"), "en passant square 'e4'"),
        ("8/8/8/8/8/8/8/8 w - - 0 1", (None, None, None), "white has 0 kings"),
    ],
)
def test_checked_board_names_the_problem(fen, fields, problem):
    with pytest.raises(InputError, match=f"^data.csv:7: .*{problem}"):
        checked_board(fen, "data.csv:7", *fields)


# --------------------------------------------------------------------------- seed layouts


def _expected_fens():
    return [
        "r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1",
        "4k3/8/8/8/3pP3/8/8/4K3 b - e3 0 1",
        "6k1/5ppp/8/8/8/8/5PPP/3R2K1 w - - 0 1",
    ]


def test_csv_layout_is_read_with_real_metadata(tmp_path):
    write_csv_layout(tmp_path)
    splits = find_splits("csv", tmp_path)
    assert list(splits) == ["train", "val", "test"]
    samples = list(iter_samples("csv", "val", splits["val"]))
    assert [sample_board(s).fen() for s in samples] == _expected_fens()
    assert [s.index for s in samples] == [0, 1, 2]
    assert samples[1].where == f"{tmp_path / 'validation.csv'}:3"
    assert samples[1].best_continuation == "d4e3"
    assert samples[0].image_file == str(
        tmp_path / "validation" / "images" / "validation_000000.png"
    )
    assert count_samples("csv", splits["train"]) == 3


def test_single_csv_file_takes_its_split_from_its_name_or_the_option(tmp_path):
    write_csv_layout(tmp_path, splits=("test",))
    assert find_splits("csv", tmp_path / "test.csv") == {"test": [tmp_path / "test.csv"]}
    renamed = tmp_path / "puzzles.csv"
    (tmp_path / "test.csv").rename(renamed)
    assert find_splits("csv", renamed, split="train") == {"train": [renamed]}
    with pytest.raises(InputError, match="cannot tell which split"):
        find_splits("csv", renamed)


@pytest.mark.parametrize("writer", [write_parquet_layout, write_arrow_layout])
def test_hf_layouts_are_read_with_real_metadata(tmp_path, writer):
    writer(tmp_path)
    splits = find_splits("hf", tmp_path)
    assert list(splits) == ["train", "val", "test"]
    samples = list(iter_samples("hf", "test", splits["test"]))
    assert [sample_board(s).fen() for s in samples] == _expected_fens()
    assert all(s.image.startswith(b"\xff\xd8") for s in samples)  # JPEG bytes
    assert samples[2].where.endswith("row 2")
    assert count_samples("hf", splits["test"]) == 3


def test_hf_image_given_by_path_is_resolved_next_to_the_data(tmp_path):
    table = hf_table(ROWS[:1])
    image_type = table.schema.field("image").type
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "board.png").write_bytes(image_bytes())
    table = table.set_column(
        0, "image", pa.array([{"bytes": None, "path": "board.png"}], type=image_type)
    )
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    (sample,) = iter_samples("hf", "test", find_splits("hf", tmp_path)["test"])
    assert sample.image is None and sample.image_file == str(tmp_path / "data" / "board.png")


def test_unknown_and_missing_columns_are_named(tmp_path):
    (tmp_path / "test.csv").write_text("image_path,fen,colour\nx.png,8/8/8/8/8/8/8/8,w\n")
    with pytest.raises(InputError, match=r"test.csv:1: missing column\(s\) active_color.*"):
        list(iter_samples("csv", "test", [tmp_path / "test.csv"]))
    with pytest.raises(InputError, match=r"unknown column\(s\) colour"):
        list(iter_samples("csv", "test", [tmp_path / "test.csv"]))
    pq.write_table(hf_table().append_column("extra", pa.array([1, 2, 3])), tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"t.parquet: unknown column\(s\) extra"):
        list(iter_samples("hf", "test", [tmp_path / "t.parquet"]))


def test_malformed_csv_row_is_reported_when_used(tmp_path):
    write_csv_layout(tmp_path, splits=("test",))
    with (tmp_path / "test.csv").open("a") as handle:
        handle.write("only,three,fields\n")
    samples = list(iter_samples("csv", "test", [tmp_path / "test.csv"]))
    with pytest.raises(InputError, match=r"test.csv:5: expected 6 fields"):
        sample_board(samples[-1])


def test_corrupt_parquet_file_is_named(tmp_path):
    (tmp_path / "test.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"test.parquet: cannot read parquet data"):
        list(iter_samples("hf", "test", [tmp_path / "test.parquet"]))


def test_raw_sample_problems_surface_with_their_row():
    sample = RawSample("test", 0, "f.parquet row 9", "8/8/8/8/8/8/8/8", "w", "-", "-", None)
    with pytest.raises(InputError, match=r"^f.parquet row 9: impossible position"):
        sample_board(sample)
