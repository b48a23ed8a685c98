"""Scoring the finder on scenes: matching, corner error, the figures, the command."""

from __future__ import annotations

import json

import pytest

from chessvlm.cli import main
from chessvlm.detection import corner_error_squares, match_boards, scene_metrics
from chessvlm.scenes import write_scenes

SQUARE = [(0, 0), (80, 0), (80, 80), (0, 80)]  # a board of 10 px squares


def shifted(dx: float, dy: float = 0.0) -> list[tuple[float, float]]:
    return [(x + dx, y + dy) for x, y in SQUARE]


def test_boards_match_by_overlap():
    far, near = shifted(200), shifted(3)
    assert match_boards([far, near], [SQUARE]) == [(1, 0)]
    assert match_boards([shifted(50)], [SQUARE]) == []


def test_corner_error_is_in_squares():
    assert corner_error_squares(shifted(1.25, -0.5), SQUARE) == pytest.approx(0.125)


def test_scene_metrics_count_found_false_and_missed_boards():
    start = "rnbqkbnr/pppppppp/8/8/8/8/PPPPPPPP/RNBQKBNR"
    empty = "8/8/8/8/8/8/8/8"
    page = [{"corners": SQUARE, "fen": start}, {"corners": shifted(200), "fen": empty}]
    scenes = [{"kind": "page", "boards": page}, {"kind": "negative-text", "boards": []}]
    found_one = {"corners": shifted(1), "fen": start}
    predictions = [
        {"seconds": 0.1, "boards": [found_one], "exact_crop_fens": [start, "8/8/8/8/8/8/8/K7"]},
        {"seconds": 0.1, "boards": [{"corners": SQUARE, "fen": start}], "exact_crop_fens": []},
    ]
    metrics = scene_metrics(scenes, predictions)
    assert (metrics["boards"], metrics["boards_found"], metrics["recall"]) == (2, 1, 0.5)
    assert metrics["recall_in_place"] == 0.5
    assert metrics["false_boards"] == 1 and metrics["false_board_rate_on_negatives"] == 1.0
    assert metrics["corner_error_squares_max"] == pytest.approx(0.1)
    assert metrics["pages_all_found_in_reading_order"] == 0.0
    assert metrics["per_square_accuracy_found_boards"] == 1.0
    assert metrics["per_square_accuracy_all_boards"] == 0.5
    assert metrics["scenes_per_second"] == pytest.approx(10.0)


def test_finder_evaluate_command(tmp_path, capsys):
    write_scenes(tmp_path / "scenes", 2, seed=7, designs="held-out")
    args = ["finder", "evaluate", "--scenes", str(tmp_path / "scenes"), "--out"]
    assert main([*args, str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["scenes"] == 2 and "recall" in capsys.readouterr().out
    lines = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert main([*args, str(tmp_path / "run")]) == 0  # resumes: nothing added
    assert (tmp_path / "run" / "predictions.jsonl").read_text().splitlines() == lines


def test_finder_tune_compares_the_settings_and_marks_the_shipped_ones(tmp_path, capsys):
    write_scenes(tmp_path / "scenes", 2, seed=1, designs="seen", kind="screenshot")
    assert main(["finder", "tune", "--scenes", str(tmp_path / "scenes")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("quadrant") and len(lines) == 1 + 8
    assert sum(line.endswith("<- shipped") for line in lines) == 1
