"""Hand-made metric cases: every number below is worked out by hand from the boards."""

import json

import chess
import pytest

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.metrics import (
    MAIN_FIGURES,
    compute_metrics,
    infer_target,
    read_labels,
    read_predictions,
)
from chessvlm.positions import SQUARE_CLASSES, answer_text, compact_rows, seed_json

START = chess.Board()
KINGS = chess.Board("4k3/8/8/8/8/8/8/4K3 w - - 0 1")  # 2 pieces, 62 empty squares
# White to move, all castling rights, en passant on d6 possible (e5xd6).
EP = chess.Board("rnbqkbnr/pp2pppp/8/2ppP3/8/8/PPPP1PPP/RNBQKBNR w KQkq d6 0 3")
BLACK_KINGS = chess.Board("8/8/4k3/8/8/4K3/8/8 b - - 0 1")


def label(id_: str, board: chess.Board, style: str, flipped: bool) -> dict:
    return {"id": id_, "fen": board.fen(), "style": style, "flipped": flipped}


def compact(rows: list[str]) -> str:
    return json.dumps({"board": rows})


def edited_rows(board: chess.Board, square: str, symbol: str) -> list[str]:
    edited = board.copy()
    piece = chess.Piece.from_symbol(symbol) if symbol != "." else None
    edited.set_piece_at(chess.parse_square(square), piece)
    return compact_rows(edited)


@pytest.fixture
def compact_case() -> tuple[list[dict], list[dict]]:
    labels = [
        label("exact", START, "plain", False),
        label("one_off", START, "plain", True),
        label("garbage", KINGS, "wood/green/224", False),
        label("truncated", KINGS, "wood/brown/448/coords/flip", True),
        label("wrapped", KINGS, "wood", False),
        label("two_kings", KINGS, "wood", False),
    ]
    wrapped = f"Sure! ```json\n{compact(compact_rows(KINGS))}\n``` Hope this helps."
    predictions = [
        {"id": "exact", "answer": answer_text(START, "compact"), "answer_tokens": 78},
        {"id": "one_off", "answer": compact(edited_rows(START, "e2", ".")), "answer_tokens": 78},
        {"id": "garbage", "answer": "I see a", "answer_tokens": 10, "truncated": True},
        {"id": "truncated", "answer": '{"board": ["4k3", "8", '},
        {"id": "wrapped", "answer": wrapped, "answer_tokens": 90},
        {"id": "two_kings", "answer": compact(edited_rows(KINGS, "a1", "K"))},
    ]
    return labels, predictions


def test_compact_headline_figures(compact_case):
    labels, predictions = compact_case
    m = compute_metrics(labels, predictions, "compact", elapsed_seconds=3.0)
    assert m["target"] == "compact"
    assert m["n_samples"] == 6
    assert m["n_parsed"] == 4
    assert m["valid_json_rate"] == 4 / 6
    # two_kings parses but has two white kings; one_off is still legal.
    assert m["valid_position_rate"] == 3 / 6
    assert m["exact_json_match"] == 2 / 6
    assert m["fen_accuracy"] == 2 / 6
    assert m["exact_board_match"] == 2 / 6
    # Right squares: 64 + 63 + 0 + 0 + 64 + 63.
    assert m["per_square_accuracy"] == 254 / 384
    assert m["per_square_accuracy_parsed_only"] == 254 / 256
    # Empty squares: 32 + 32 + 4 * 62.
    assert m["all_empty_baseline"] == 312 / 384
    # Occupied squares 32 + 32 + 4 * 2, read right: 32 + 31 + 0 + 0 + 2 + 2.
    assert m["occupied_square_accuracy"] == 67 / 72
    assert m["mean_wrong_squares"] == 130 / 6
    assert m["boards_with_at_most_one_error"] == 4 / 6
    assert m["error_counts"] == {"invalid_json": 1, "no_json": 1}
    assert m["answer_tokens"] == {"mean": 64.0, "median": 78.0, "max": 90, "n": 4, "truncated": 1}
    assert m["boards_per_second"] == 2.0
    assert m["metadata_accuracy"] is None
    json.dumps(m)  # JSON-serialisable


def test_compact_confusion_and_classes(compact_case):
    labels, predictions = compact_case
    m = compute_metrics(labels, predictions, "compact")
    index = {symbol: i for i, symbol in enumerate(SQUARE_CLASSES)}
    confusion = m["confusion_matrix"]
    assert confusion["classes"] == list(SQUARE_CLASSES)
    counts = confusion["counts"]
    assert len(counts) == 13 and all(len(row) == 13 for row in counts)
    assert sum(map(sum, counts)) == 4 * 64  # parsed answers only
    assert counts[index["."]][index["."]] == 32 + 32 + 62 + 61
    assert counts[index["."]][index["K"]] == 1  # the extra king on a1
    assert counts[index["P"]][index["P"]] == 15
    assert counts[index["P"]][index["."]] == 1  # the missing e2 pawn
    assert counts[index["K"]][index["K"]] == 4
    unparsed = dict(zip(SQUARE_CLASSES, confusion["unparsed_by_true_class"], strict=True))
    assert unparsed == {**dict.fromkeys(SQUARE_CLASSES, 0), ".": 124, "K": 2, "k": 2}
    per_class = m["per_class"]
    assert per_class["."] == {"precision": 187 / 188, "recall": 187 / 312, "support": 312}
    assert per_class["P"] == {"precision": 1.0, "recall": 15 / 16, "support": 16}
    assert per_class["K"] == {"precision": 4 / 5, "recall": 4 / 6, "support": 6}
    assert per_class["k"] == {"precision": 1.0, "recall": 4 / 6, "support": 6}
    square_accuracy = m["square_accuracy"]
    assert square_accuracy[chess.A1] == 3 / 6  # two unparsed, one extra king
    assert square_accuracy[chess.E2] == 3 / 6  # two unparsed, one missing pawn
    assert square_accuracy[chess.H5] == 1 - 2 / 6  # only the two unparsed answers


def test_compact_breakdowns(compact_case):
    labels, predictions = compact_case
    m = compute_metrics(labels, predictions, "compact")
    # Rendered styles (piece-set/theme/size/options) are grouped by piece set.
    assert set(m["by_style"]) == {"plain", "wood"}
    plain, wood = m["by_style"]["plain"], m["by_style"]["wood"]
    assert set(plain) == set(MAIN_FIGURES)
    assert plain["n_samples"] == 2
    assert plain["per_square_accuracy"] == 127 / 128
    assert plain["exact_board_match"] == 1 / 2
    assert wood["n_samples"] == 4
    assert wood["valid_json_rate"] == 2 / 4
    assert wood["per_square_accuracy"] == 127 / 256
    assert wood["per_square_accuracy_parsed_only"] == 127 / 128
    orientation = m["by_orientation"]
    assert set(orientation) == {"white_bottom", "black_bottom"}
    assert orientation["black_bottom"]["n_samples"] == 2  # one_off, truncated
    assert orientation["black_bottom"]["per_square_accuracy"] == 63 / 128
    assert orientation["white_bottom"]["per_square_accuracy"] == 191 / 256


def test_breakdowns_absent_when_labels_do_not_record_them():
    labels = [{"id": "a", "fen": START.fen()}]
    m = compute_metrics(labels, [{"id": "a", "answer": "nothing"}], "compact")
    assert m["by_style"] is None and m["by_orientation"] is None
    assert m["per_square_accuracy_parsed_only"] is None
    assert m["per_square_accuracy"] == 0.0


def test_seed_target_metadata_and_bad_answers():
    good = seed_json(EP)
    shuffled = json.loads(json.dumps(good))
    shuffled["pieces"].reverse()
    shuffled["metadata"]["castling_rights"]["white"] = ["Q", "K"]
    duplicate = json.loads(json.dumps(good))
    duplicate["pieces"].append(dict(duplicate["pieces"][0]))  # a second piece on a1
    wrong_metadata = json.loads(json.dumps(good))
    wrong_metadata["metadata"].update(
        to_move="black", castling_rights={"white": [], "black": []}, en_passant=None
    )
    extra_key = {**good, "comment": "looks like a Sicilian"}
    inconsistent = seed_json(BLACK_KINGS)
    inconsistent["pieces"][0]["value"] = 4
    labels = [
        label("exact", EP, "plain", False),
        label("duplicate", EP, "plain", False),
        label("metadata", EP, "plain", False),
        label("extra", EP, "plain", False),
        label("inconsistent", BLACK_KINGS, "plain", False),
    ]
    predictions = [
        {"id": "exact", "answer": json.dumps(shuffled, indent=2)},
        {"id": "duplicate", "answer": json.dumps(duplicate)},
        {"id": "metadata", "answer": json.dumps(wrong_metadata)},
        {"id": "extra", "answer": json.dumps(extra_key)},
        {"id": "inconsistent", "answer": json.dumps(inconsistent)},
    ]
    m = compute_metrics(labels, predictions, "seed")
    assert m["valid_json_rate"] == 5 / 5
    assert m["n_parsed"] == 3
    assert m["error_counts"] == {"duplicate_square": 1, "inconsistent_piece": 1}
    assert m["exact_json_match"] == 1 / 5  # order does not matter; extra keys do
    assert m["fen_accuracy"] == 2 / 5  # exact and extra: placement and all metadata right
    assert m["exact_board_match"] == 3 / 5
    assert m["valid_position_rate"] == 3 / 5
    assert m["per_square_accuracy"] == 192 / 320
    assert m["per_square_accuracy_parsed_only"] == 1.0
    assert m["metadata_accuracy"] == {
        "side_to_move": 2 / 5,
        "castling_rights": 2 / 5,
        "en_passant": 2 / 5,
        # White to move, no castling, no en passant: right only for the black-kings sample's
        # castling and en passant, and for the four white-to-move samples' side.
        "constant_baseline": {"side_to_move": 4 / 5, "castling_rights": 1 / 5, "en_passant": 1 / 5},
    }


def test_placement_only_labels_take_metadata_from_their_fields():
    fields = {"active_color": "w", "castling_rights": "KQkq", "en_passant_target_square": "d6"}
    labels = [{"id": "a", "fen": EP.board_fen(), **fields}]
    m = compute_metrics(labels, [{"id": "a", "answer": answer_text(EP, "seed")}], "seed")
    assert m["exact_json_match"] == m["fen_accuracy"] == 1.0
    assert m["metadata_accuracy"]["en_passant"] == 1.0


def test_fen_predictions_from_any_system():
    labels = [label("start", START, "plain", False), label("ep", EP, "plain", False)]
    labels.append(label("bad", KINGS, "plain", False))
    predictions = [
        {"id": "start", "fen": START.board_fen()},  # placement only
        {"id": "ep", "fen": EP.fen()},
        {"id": "bad", "fen": "not a fen"},
    ]
    m = compute_metrics(labels, predictions, "compact")
    assert m["valid_json_rate"] == 2 / 3
    assert m["exact_json_match"] == m["fen_accuracy"] == m["exact_board_match"] == 2 / 3
    assert m["error_counts"] == {"bad_fen": 1}
    seed = compute_metrics(labels, predictions, "seed")
    # A placement-only FEN states no metadata, so it cannot match the seed target's FEN.
    assert seed["exact_json_match"] == seed["fen_accuracy"] == 1 / 3
    assert seed["exact_board_match"] == 2 / 3
    assert seed["metadata_accuracy"]["side_to_move"] == 1 / 3


def test_seconds_fields_give_boards_per_second():
    labels = [label(str(i), START, "plain", False) for i in range(4)]
    predictions = [{"id": str(i), "answer": "x", "seconds": 0.5} for i in range(4)]
    assert compute_metrics(labels, predictions, "compact")["boards_per_second"] == 2.0
    del predictions[0]["seconds"]
    m = compute_metrics(labels, predictions, "compact")
    assert m["boards_per_second"] is None and m["answer_tokens"] is None


def test_mismatched_ids_are_named():
    labels = [label(f"s{i}", START, "plain", False) for i in range(3)]
    predictions = [{"id": "s0", "answer": "x"}, {"id": "s1", "answer": "x"}]
    with pytest.raises(ChessVLMError, match=r"1 labels have no prediction \(s2\)"):
        compute_metrics(labels, predictions, "compact")
    extra = [*predictions, {"id": "s2", "answer": "x"}, {"id": "zz", "answer": "x"}]
    with pytest.raises(ChessVLMError, match=r"1 predictions match no label \(zz\)"):
        compute_metrics(labels, extra, "compact")
    with pytest.raises(ChessVLMError, match=r"predictions repeat 1 ids \(s0\)"):
        compute_metrics(labels, [*predictions, predictions[0]], "compact")


def test_partial_scoring_counts_missing_and_errored_samples():
    labels = [label(f"s{i}", START, "plain", False) for i in range(3)]
    predictions = [
        {"id": "s0", "answer": answer_text(START, "compact")},
        {"id": "s1", "answer": None, "error": "missing_image"},
    ]
    m = compute_metrics(labels, predictions, "compact", allow_missing=True)
    assert m["error_counts"] == {"missing_image": 1, "missing_prediction": 1}
    assert m["per_square_accuracy"] == 64 / 192
    assert m["valid_json_rate"] == 1 / 3


def test_bad_labels_and_target():
    answer_x = [{"id": "a", "answer": "x"}]
    with pytest.raises(ChessVLMError, match="unknown target"):
        compute_metrics([label("a", START, "p", False)], answer_x, "verbose")
    with pytest.raises(InputError, match=r"labels sample 0 \(id a\): invalid FEN"):
        compute_metrics([{"id": "a", "fen": "zz w - - 0 1"}], answer_x, "seed")
    with pytest.raises(InputError, match=r"sample 0 \(id a\): impossible position"):
        compute_metrics([{"id": "a", "fen": "8/8/8/8/8/8/8/8 w - - 0 1"}], answer_x, "seed")
    with pytest.raises(InputError, match=r"record 0: prediction a has no 'answer', 'fen' or"):
        compute_metrics([label("a", START, "p", False)], [{"id": "a", "seconds": 1}], "compact")
    with pytest.raises(InputError, match="sample 0 has no 'id' or no 'fen'"):
        compute_metrics([{"id": "a"}], answer_x, "compact")
    with pytest.raises(ChessVLMError, match="no labels"):
        compute_metrics([], [], "compact")


def test_readers(tmp_path):
    vlm = tmp_path / "test.json"
    turns = [
        {"from": "user", "value": "<image>\nRead the board."},
        {"from": "assistant", "value": answer_text(START, "seed")},
    ]
    record = {"id": "a", "image": "a.png", "conversations": turns, "fen": START.fen()}
    vlm.write_text(json.dumps([{**record, "target": "seed"}]))
    assert read_labels(vlm)[0]["id"] == "a"
    assert infer_target(read_labels(vlm)) == "seed"
    vlm.write_text(json.dumps([{**record, "conversations": turns[:1]}]))
    with pytest.raises(InputError, match=r"record 0 .*conversations"):
        read_labels(vlm)
    jsonl = tmp_path / "test.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "image_path": "a.png", "fen": START.fen()}) + "\n")
    assert infer_target(read_labels(jsonl)) == "compact"
    with pytest.raises(ChessVLMError, match="mix targets"):
        infer_target([{"target": "seed"}, {"target": "compact"}])
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "a"')
    with pytest.raises(InputError, match=r"broken\.json:1: not valid JSON"):
        read_labels(broken)
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text('{"id": "a", "answer": "x"}\n{"id": "b", "seconds": 1}\n')
    with pytest.raises(InputError, match=r"predictions.jsonl:2: prediction b has no 'answer'"):
        read_predictions(predictions)
    predictions.write_text('{"answer": "x"}\n')
    with pytest.raises(InputError, match=r"predictions.jsonl:1: prediction has no 'id'"):
        read_predictions(predictions)
