"""Synthetic scenes: deterministic, labelled with every board's corners and FEN, drawn from
the seen or the held-out designs only, and written resumably."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chessvlm.errors import ChessVLMError
from chessvlm.pieces import PIECE_SETS
from chessvlm.positions import board_from_fen
from chessvlm.rendering import held_out_designs
from chessvlm.scenes import LABELS_FILE, SCREEN_SIZE, scene_stream, write_scenes


def test_the_same_seed_draws_the_same_scenes():
    first, second = scene_stream(1, "seen")("page"), scene_stream(1, "seen")("page")
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert first.boards == second.boards


@pytest.mark.parametrize("designs", ["seen", "held-out"])
def test_scenes_draw_only_their_side_of_the_design_split(designs):
    draw = scene_stream(2, designs)
    looks = [board.look for _ in range(4) for board in draw("multi").boards]
    held = [PIECE_SETS[look.split("/")[0]].design in held_out_designs() for look in looks]
    assert all(held) if designs == "held-out" else not any(held)


def test_a_style_can_replace_the_split_s_own_and_is_checked():
    draw = scene_stream(2, "seen", style="designs-held-out")
    looks = [board.look for _ in range(3) for board in draw("multi").boards]
    assert looks and all(
        PIECE_SETS[look.split("/")[0]].design in held_out_designs() for look in looks
    )
    with pytest.raises(ChessVLMError, match="unknown style 'plain'"):
        scene_stream(2, "seen", style="plain")


def test_labels_give_each_board_its_squares():
    scene = scene_stream(4, "held-out")("screenshot")
    assert scene.image.size == SCREEN_SIZE
    (board,) = scene.boards
    (x0, y0), (x1, top_right_y), (x2, y2), (bottom_left_x, y3) = board.corners
    assert (top_right_y, bottom_left_x) == (y0, x0) and (x2, y2) == (x1, y3)
    assert x1 - x0 == pytest.approx(y3 - y0)
    assert 12 * 8 <= x1 - x0 <= SCREEN_SIZE[1]
    board_from_fen(board.fen)
    # The squares alternate inside the labelled corners: a1's colour differs from b1's.
    side = (x1 - x0) / 8
    grey = np.asarray(scene.image.convert("L"), dtype=float)
    corner = [grey[round(y0 + side * 0.1), round(x0 + side * (c + 0.1))] for c in range(2)]
    assert abs(corner[0] - corner[1]) > 10


def test_negatives_hold_no_board_and_kinds_are_checked():
    draw = scene_stream(0, "seen")
    scenes = [draw("negative") for _ in range(5)]
    assert all(scene.boards == [] and scene.kind.startswith("negative-") for scene in scenes)
    with pytest.raises(ChessVLMError, match="scene kind must be one of"):
        draw("poster")
    with pytest.raises(ChessVLMError, match="designs must be one of"):
        scene_stream(0, "all")


def test_written_scenes_resume(tmp_path):
    write_scenes(tmp_path, 2, seed=3, designs="seen")
    first = (tmp_path / LABELS_FILE).read_text()
    write_scenes(tmp_path, 3, seed=3, designs="seen")
    lines = [json.loads(line) for line in (tmp_path / LABELS_FILE).read_text().splitlines()]
    assert (tmp_path / LABELS_FILE).read_text().startswith(first)
    assert [line["id"] for line in lines] == ["scene_000000", "scene_000001", "scene_000002"]
    for line in lines:
        assert (tmp_path / line["image_path"]).is_file()
