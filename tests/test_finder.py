"""The board finder: boards found with their corners, in reading order, in scenes of every
kind; nothing found in pictures without a chess board."""

from __future__ import annotations

import chess
import numpy as np
import pytest
from PIL import Image

import chessvlm.finder
from chessvlm.finder import (
    FinderSettings,
    FoundBoard,
    board_pixels,
    box_iou,
    checkerboard_shades,
    find_board_near,
    find_boards,
    fit_grid,
    located_board,
    reading_order,
    to_gray,
)
from chessvlm.rendering import RenderParams, board_box, render_board
from chessvlm.scenes import scene_stream

# The target: every corner within 1/8 of a square of the truth.
CORNER_TOLERANCE = 0.125


def corner_error(found: FoundBoard, corners) -> float:
    """The largest corner distance along x or y, in squares."""
    truth = np.asarray(corners)
    side = float(np.linalg.norm(truth[1] - truth[0])) / 8
    return float(np.abs(np.asarray(found.corners) - truth).max()) / side


def checkerboard(cells: int, cell: int, canvas: tuple[int, int] = (640, 480)) -> Image.Image:
    """A plain `cells` x `cells` checkered pattern of `cell`-pixel squares on white."""
    pattern = (np.add.outer(np.arange(cells), np.arange(cells)) % 2).astype(np.uint8)
    board = np.kron(pattern, np.ones((cell, cell), np.uint8)) * 140 + 90
    image = np.full((canvas[1], canvas[0]), 255, np.uint8)
    image[20 : 20 + cells * cell, 30 : 30 + cells * cell] = board
    return Image.fromarray(image).convert("RGB")


# Margin 0: a board cut to its squares, where the warp repeats the edge past the image.
@pytest.mark.parametrize(("square", "margin"), [(12, 9), (40, 30), (90, 5), (64, 0)])
def test_a_board_on_a_page_is_found_with_its_corners(square, margin):
    params = RenderParams(size=8 * square, margin=(margin, 2 * margin, 3 * margin, margin))
    image = render_board(chess.Board(), params)
    (found,) = find_boards(image)
    left, top, right, bottom = board_box(params)
    truth = [(left, top), (right, top), (right, bottom), (left, bottom)]
    assert corner_error(found, truth) <= CORNER_TOLERANCE
    assert found.score > 0.8 and found.square_size == pytest.approx(square, rel=0.02)


@pytest.mark.parametrize("kind", ["screenshot", "multi", "page"])
def test_every_board_of_a_scene_is_found_in_reading_order(kind):
    draw = scene_stream(3, "held-out")
    for _ in range(2):
        scene = draw(kind)
        found = find_boards(scene.image)
        assert len(found) == len(scene.boards), kind
        for board, label in zip(found, scene.boards, strict=True):
            assert corner_error(board, label.corners) <= CORNER_TOLERANCE


def test_a_turned_scan_is_found_with_its_turned_corners():
    params = RenderParams(size=240, margin=(60, 60, 60, 60))
    image = render_board(chess.Board(), params).rotate(
        3, Image.Resampling.BICUBIC, fillcolor="white"
    )
    (found,) = find_boards(image)
    (x0, y0), (x1, y1), _, _ = found.corners
    # Turned counter-clockwise by 3 degrees: the top edge rises to the right.
    assert np.degrees(np.arctan2(y0 - y1, x1 - x0)) == pytest.approx(3, abs=0.3)
    assert found.square_size == pytest.approx(30, rel=0.02)


@pytest.mark.parametrize(
    "picture",
    [
        Image.new("RGB", (800, 600), "white"),
        Image.new("RGBA", (300, 300), (0, 0, 0, 0)).convert("RGB"),
        checkerboard(10, 30),  # a draughts board
        checkerboard(12, 20),
        checkerboard(7, 40),
        checkerboard(6, 40),
    ],
    ids=["blank", "transparent", "draughts", "12x12", "7x7", "6x6"],
)
def test_pictures_without_a_chess_board_give_none(picture):
    assert find_boards(picture) == []


def test_a_plain_8x8_checkerboard_is_a_board():
    (found,) = find_boards(checkerboard(8, 30))
    assert box_iou(found.box, (30, 20, 270, 260)) > 0.97


def test_a_pattern_going_on_out_of_step_past_the_squares_is_no_board():
    # A ninth row repeating the first: the grid of corners fits only one 8 x 8 window, and
    # the row beyond it still alternates (against the board's step), as the squares of a
    # hatched board do beyond a grid placed one square off.
    pattern = (np.add.outer(np.arange(8), np.arange(8)) % 2).astype(np.uint8)
    rows = np.vstack([pattern[:1], pattern])
    image = np.full((480, 640), 255, np.uint8)
    image[20 : 20 + 9 * 30, 30 : 30 + 8 * 30] = (
        np.kron(rows, np.ones((30, 30), np.uint8)) * 140 + 90
    )
    assert find_boards(Image.fromarray(image).convert("RGB")) == []


def test_two_rows_of_corners_dragged_off_by_pieces_do_not_tilt_the_grid():
    rows, columns = np.divmod(np.arange(49), 7)
    truth = np.stack([100 + 30.0 * (columns + 1), 50 + 30.0 * (rows + 1)], axis=1)
    refined = truth + np.random.default_rng(0).normal(0, 0.3, truth.shape)
    refined[rows >= 5, 1] -= 3.5  # an eighth of a square up, as a row of pieces pulls them
    fit = fit_grid(columns, rows, refined, square=30.0)
    design = np.stack([columns, rows, np.ones(49)], axis=1)
    least_squares, *_ = np.linalg.lstsq(design, refined)
    assert fit.kept == 49
    assert np.abs(design @ fit.affine.T - truth).max() < 0.6
    # The plain fit the grid used to get: the board's bottom edge a tenth of a square high.
    assert np.abs(design @ least_squares - truth).max() > 2


def test_a_chunk_of_corners_numbered_a_square_off_does_not_lose_the_grid():
    # Arrows and pieces on a small board can break the links between corners, so that a
    # part of the grid is numbered one column off: a least-squares fit through them keeps
    # too few corners, the fit by medians keeps the rest.
    rows, columns = np.divmod(np.arange(49), 7)
    truth = np.stack([100 + 12.0 * (columns + 1), 50 + 12.0 * (rows + 1)], axis=1)
    refined = truth + np.random.default_rng(1).normal(0, 0.3, truth.shape)
    slipped = (columns >= 3) & (rows <= 2)
    refined[slipped, 0] += 12.0
    design = np.stack([columns, rows, np.ones(49)], axis=1)
    least_squares, *_ = np.linalg.lstsq(design, refined)
    close = np.hypot(*(design @ least_squares - refined).T) / 12.0 <= 0.2
    assert close.sum() < FinderSettings().min_corners  # the plain fit alone would give up
    fit = fit_grid(columns, rows, refined, square=12.0)
    assert fit.kept == 49 - slipped.sum()
    assert np.abs(design @ fit.affine.T - truth).max() < 0.6


@pytest.mark.parametrize(("piece_set", "theme"), [("cburnett", "blue"), ("alpha", "brown")])
def test_a_hatched_board_enlarged_from_low_resolution_is_found_to_a_twentieth_of_a_square(
    piece_set, theme
):
    # Refined on the image itself, the hatching and the pixel steps pull these corners
    # 0.1-0.12 square off; refined again on the board blurred, 0.01.
    params = RenderParams(
        piece_set=piece_set,
        theme=theme,
        size=472,
        texture="hatch",
        lowres=20,
        upscale="nearest",
        margin=(30, 30, 30, 30),
    )
    (found,) = find_boards(render_board(chess.Board(), params))
    left, top, right, bottom = board_box(params)
    truth = [(left, top), (right, top), (right, bottom), (left, bottom)]
    assert corner_error(found, truth) <= 0.05


# A crowded middlegame under three arrows on a hatched board, with text all round it.
CROWDED = chess.Board("r2qk1nr/pbpp1p1p/1pn1p1p1/8/4PP2/PPN2N1P/2PPB1P1/b1BQ1K1R w - - 0 1")
ARROWS = ((chess.A7, chess.H6, "blue"), (chess.C1, chess.D4, "red"), (chess.E5, chess.G1, "green"))


def crowded_hatched_page(theme: str) -> tuple[Image.Image, list[tuple[float, float]]]:
    params = RenderParams(
        theme=theme, size=216, texture="hatch", arrows=ARROWS, background="page", margin=(40,) * 4
    )
    left, top, right, bottom = board_box(params)
    return render_board(CROWDED, params), [
        (left, top),
        (right, top),
        (right, bottom),
        (left, bottom),
    ]


def test_a_crowded_hatched_board_is_told_from_the_text_by_its_bare_squares(monkeypatch):
    # Pieces of both colours on most squares pull the mean contrast of the squares down to
    # the text's; the bare squares' shades still differ by tens of grey levels.
    image, truth = crowded_hatched_page("pink")
    (found,) = find_boards(image)
    assert corner_error(found, truth) <= CORNER_TOLERANCE
    monkeypatch.setattr(chessvlm.finder, "_bare_contrast", lambda shades: 0.0)
    assert find_boards(image) == []


def test_corners_no_grid_fits_under_hatching_are_refined_again_on_the_board_blurred():
    image, truth = crowded_hatched_page("blue")
    (found,) = find_boards(image)
    assert corner_error(found, truth) <= CORNER_TOLERANCE


def test_of_two_placements_with_as_many_corners_seen_the_one_in_place_scores_higher():
    params = RenderParams(size=320, margin=(40, 40, 80, 40))
    image = render_board(chess.Board(), params)
    (found,) = find_boards(image)
    level = to_gray(image)
    score, _ = chessvlm.finder.corner_scores(level, 3)
    one_down = FoundBoard(tuple((x, y + 40) for x, y in found.corners), found.score, 0.0)
    in_place = chessvlm.finder._corner_response(score, found, 1.0, 3)
    # Six rows of corners are shared; the grid one square down has its last on the margin.
    assert in_place > 1.25 * chessvlm.finder._corner_response(score, one_down, 1.0, 3)


def test_negative_scenes_give_no_board():
    draw = scene_stream(5, "held-out")
    for _ in range(6):
        scene = draw("negative")
        assert find_boards(scene.image) == [], scene.kind


def _fractions(box, image: Image.Image) -> tuple[float, ...]:
    width, height = image.size
    return (box[0] / width, box[1] / height, box[2] / width, box[3] / height)


@pytest.mark.parametrize("margin", [(20, 10, 20, 30), (0, 0, 0, 0)])
def test_a_picture_of_one_board_is_taken_where_the_locator_puts_it(monkeypatch, margin):
    params = RenderParams(size=320, margin=margin)
    image = render_board(chess.Board(), params)
    left, top, right, bottom = board_box(params)

    def no_search(*_):
        raise AssertionError("the corner search ran")

    monkeypatch.setattr(chessvlm.finder, "_pyramid", no_search)
    (found,) = find_boards(image, locate=lambda picture: _fractions(board_box(params), picture))
    assert found.found_by == "locator"
    truth = [(left, top), (right, top), (right, bottom), (left, bottom)]
    assert corner_error(found, truth) <= 0.01
    assert found.score >= 0.8 and found.contrast > 20


@pytest.mark.parametrize(
    ("picture", "box"),
    [
        (Image.new("RGB", (400, 400), "white"), (0, 0, 400, 400)),
        (checkerboard(10, 30, (360, 340)).crop((30, 20, 330, 320)), (30, 30, 270, 270)),
        (checkerboard(8, 30, (720, 300)), (30, 20, 270, 260)),  # too wide a picture
        (checkerboard(8, 30, (400, 400)), (30, 20, 270, 260)),  # a board in a corner of it
    ],
    ids=["blank", "draughts", "wide picture", "small in the picture"],
)
def test_the_locator_is_trusted_only_for_a_checkerboard_filling_the_picture(picture, box):
    assert located_board(picture, lambda image: _fractions(box, image)) is None


def test_checkerboard_shades_tell_a_board_from_a_blank():
    image = render_board(chess.Board(), RenderParams(size=256))
    contrast, agreement = checkerboard_shades(to_gray(image))
    assert contrast > 20 and agreement > 0.8
    assert checkerboard_shades(np.full((128, 128), 200, np.uint8)) == (0.0, 0.0)


def test_reading_order_is_rows_then_columns():
    def board(left: float, top: float) -> FoundBoard:
        corners = ((left, top), (left + 80, top), (left + 80, top + 80), (left, top + 80))
        return FoundBoard(corners, 1.0, 50.0)

    second_row = board(10, 200)
    first_row_right, first_row_left = board(300, 15), board(20, 10)
    ordered = reading_order([second_row, first_row_right, first_row_left])
    assert ordered == [first_row_left, first_row_right, second_row]


def test_board_pixels_cut_straight_and_turned_boards_to_their_squares():
    board = chess.Board("8/8/8/8/8/8/8/8 w - - 0 1")
    params = RenderParams(size=160, margin=(40, 40, 40, 40))
    straight = render_board(board, params)
    turned = straight.rotate(2, Image.Resampling.BICUBIC, fillcolor="white")
    for image in (straight, turned):
        (found,) = find_boards(image)
        pixels = board_pixels(image, found, 64).astype(int)
        # 8 px squares: the a8 corner square is light, b8 dark, as rendered.
        assert pixels[4, 4].sum() > pixels[4, 12].sum() + 100
        assert pixels.shape == (64, 64, 3)


@pytest.mark.parametrize("off", [(-0.3, 0.2, 0.25, -0.1), (0.05, -0.05, 0.0, 0.1), (0, 0, 0, 0)])
def test_a_board_is_found_near_a_box_a_locator_put_a_fraction_of_a_square_off(off):
    params = RenderParams(size=320, margin=(24, 40, 16, 8))  # squares of 40 px
    image = render_board(chess.Board(), params)
    truth = board_box(params)
    located = [edge + 40 * shift for edge, shift in zip(truth, off, strict=True)]
    found = find_board_near(image, located)
    assert found is not None and found.found_by == "corners"
    assert max(abs(a - b) for a, b in zip(found.box, truth, strict=True)) <= 0.05 * 40
    # As the whole-image search finds it, in the image's pixels (not the searched part's).
    (everywhere,) = find_boards(image)
    assert found.box == pytest.approx(everywhere.box, abs=0.5)


def test_nothing_is_found_near_a_box_without_a_board():
    image = checkerboard(8, 30, canvas=(640, 480))  # the board at (30, 20)-(270, 260)
    assert find_board_near(image, (30, 20, 270, 260)) is not None
    assert find_board_near(image, (350, 200, 590, 440)) is None  # blank page there
    assert find_board_near(image, (30, 20, 30, 260)) is None  # no box at all
    assert find_board_near(Image.new("RGB", (300, 300), "white"), (30, 20, 270, 260)) is None
