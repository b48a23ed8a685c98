"""Board images: both render paths agree, orientation and colours are right, styles sample."""

from __future__ import annotations

import dataclasses
import io
import random
from collections import Counter

import chess
import numpy as np
import pytest
from PIL import Image

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.pieces import PIECE_SETS
from chessvlm.rendering import (
    STYLES,
    THEMES,
    RenderJob,
    RenderParams,
    encode_image,
    image_extension,
    is_held_out,
    render_board,
    render_board_svg,
    render_many,
    sample_render_params,
    save_image,
    square_origin,
)

# Every piece type of both colours, castled white king, so a swap or mirror shows.
ITALIAN = "r1bqk2r/pppp1ppp/2n2n2/2b1p3/2B1P3/3P1N2/PPP2PPP/RNBQ1RK1 b kq - 2 5"
SIZE = 160  # 20 px squares: small enough for the SVG path to stay fast
PNG_SETS = {name for name, source in PIECE_SETS.items() if source.package == "chessboard-image"}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def square_means(diff: np.ndarray, size: int) -> np.ndarray:
    """Mean absolute difference of each 8x8 grid cell (rows top to bottom)."""
    px = size // 8
    return diff.reshape(8, px, 8, px, -1).mean(axis=(1, 3, 4))


def lone_piece(symbol: str, square: chess.Square) -> chess.Board:
    board = chess.Board(None)
    board.set_piece_at(square, chess.Piece.from_symbol(symbol))
    return board


@pytest.mark.parametrize("piece_set", list(PIECE_SETS))
def test_fast_path_draws_the_same_board_as_the_svg_path(piece_set: str) -> None:
    board = chess.Board(ITALIAN)
    params = RenderParams(
        piece_set, "green", SIZE, flipped=True, coordinates=True, highlight_move=True
    )
    last_move = chess.Move.from_uci("e1g1")
    diff = np.abs(
        pixels(render_board(board, params, last_move))
        - pixels(render_board_svg(board, params, last_move))
    )
    # SVG sets differ only by rounding. PNG sets are resampled by PIL (Lanczos) in one path
    # and by cairo in the other; a different piece or an empty square differs by >= 13.
    limit = 8.0 if piece_set in PNG_SETS else 1.0
    assert square_means(diff, SIZE).max() <= limit
    if piece_set not in PNG_SETS:
        assert diff.max() <= 8


@pytest.mark.parametrize("flipped", [False, True])
def test_svg_reference_orientation_matches_python_chess(flipped: bool) -> None:
    # The cburnett SVG path is python-chess's own drawing: a white king on a1 must be
    # bottom-left from white's side and top-right from black's side.
    params = RenderParams("cburnett", "brown", SIZE, flipped=flipped)
    empty = pixels(render_board_svg(chess.Board(None), params))
    changed = square_means(
        np.abs(pixels(render_board_svg(lone_piece("K", chess.A1), params)) - empty), SIZE
    )
    row, column = np.unravel_index(changed.argmax(), changed.shape)
    assert (row, column) == ((0, 7) if flipped else (7, 0))
    assert np.count_nonzero(changed) == 1


@pytest.mark.parametrize("piece_set", list(PIECE_SETS))
def test_flipped_board_puts_a1_top_right(piece_set: str) -> None:
    for flipped, expected in ((True, (0, 7)), (False, (7, 0))):
        params = RenderParams(piece_set, "blue", 224, flipped=flipped)
        empty = pixels(render_board(chess.Board(None), params))
        king = pixels(render_board(lone_piece("K", chess.A1), params))
        changed = square_means(np.abs(king - empty), 224)
        rows, columns = np.nonzero(changed)
        assert set(zip(rows.tolist(), columns.tolist(), strict=True)) == {expected}


def test_each_square_shows_its_own_piece() -> None:
    # Compositing must put every piece on its square: compare with single-piece renders.
    board = chess.Board(ITALIAN)
    params = RenderParams("merida", "wood", 224, flipped=True)
    full = pixels(render_board(board, params))
    px = 224 // 8
    for square, piece in board.piece_map().items():
        alone = pixels(render_board(lone_piece(piece.symbol(), square), params))
        x, y = square_origin(square, 224, flipped=True)
        assert np.array_equal(full[y : y + px, x : x + px], alone[y : y + px, x : x + px])


@pytest.mark.parametrize("size", [224, 256, 384, 512])
def test_sizes(size: int) -> None:
    image = render_board(chess.Board(), RenderParams(size=size, coordinates=True))
    assert image.mode == "RGB" and image.size == (size, size)


@pytest.mark.parametrize("size", [230, 16, 4096])
def test_bad_sizes_are_refused(size: int) -> None:
    with pytest.raises(ChessVLMError, match="multiple of 8"):
        RenderParams(size=size)


@pytest.mark.parametrize("flipped", [False, True])
def test_coordinates_are_drawn_inside_the_edge_squares(flipped: bool) -> None:
    plain = RenderParams("cburnett", "brown", 224, flipped=flipped)
    labelled = dataclasses.replace(plain, coordinates=True)
    board = chess.Board(None)
    changed = square_means(
        np.abs(pixels(render_board(board, labelled)) - pixels(render_board(board, plain))), 224
    )
    # Ranks in the left column, files in the bottom row: 15 squares, grid unchanged.
    expected = np.zeros((8, 8), dtype=bool)
    expected[:, 0] = True
    expected[7, :] = True
    assert np.array_equal(changed > 0, expected)


def test_last_move_highlight() -> None:
    board = chess.Board()
    move = board.push_san("e4")
    on = RenderParams(highlight_move=True)
    off = RenderParams(highlight_move=False)
    base = pixels(render_board(board, off, move))
    assert np.array_equal(base, pixels(render_board(board, on)))  # no move given
    changed = square_means(np.abs(pixels(render_board(board, on, move)) - base), 224)
    rows, columns = np.nonzero(changed)
    assert set(zip(rows.tolist(), columns.tolist(), strict=True)) == {(6, 4), (4, 4)}


def test_seed_and_simple_styles_are_fixed() -> None:
    rng = random.Random(0)
    for _ in range(20):
        seed = sample_render_params("seed", rng)
        assert (seed.piece_set, seed.size, seed.flipped, seed.coordinates) == (
            "cburnett",
            512,
            False,
            False,
        )
        assert image_extension(seed) == ".png"
        assert sample_render_params("simple", rng).size == 224


def test_mixed_style_covers_the_variety() -> None:
    rng = random.Random(1)
    samples = [sample_render_params("mixed", rng) for _ in range(600)]
    assert {p.piece_set for p in samples} == set(PIECE_SETS)
    assert {p.theme for p in samples} == set(THEMES)
    assert all(224 <= p.size <= 512 and p.size % 8 == 0 for p in samples)
    assert {min(p.size for p in samples), max(p.size for p in samples)} == {224, 512}
    counts = Counter((p.flipped, p.coordinates, p.jpeg_quality is not None) for p in samples)
    flipped = sum(n for (f, _, _), n in counts.items() if f) / len(samples)
    jpeg = sum(n for (_, _, j), n in counts.items() if j) / len(samples)
    assert 0.4 < flipped < 0.6
    assert 0.2 < jpeg < 0.4
    # Orientation stays readable: every flipped board carries coordinates, half the others.
    assert all(p.coordinates for p in samples if p.flipped)
    upright = [p.coordinates for p in samples if not p.flipped]
    assert 0.4 < sum(upright) / len(upright) < 0.6


def test_sampling_is_deterministic_and_styles_can_hold_out() -> None:
    first = [sample_render_params("mixed", random.Random(7)) for _ in range(3)]
    again = [sample_render_params("mixed", random.Random(7)) for _ in range(3)]
    assert first == again
    held_out = dataclasses.replace(STYLES["mixed"], piece_sets=("merida",), sizes=(448, 512))
    params = [sample_render_params(held_out, random.Random(i)) for i in range(30)]
    assert {p.piece_set for p in params} == {"merida"}
    assert {p.size for p in params} <= {448, 512}


def test_held_out_styles_share_parts_but_no_combination() -> None:
    def looks(style: str) -> list[RenderParams]:
        return [sample_render_params(style, random.Random(i)) for i in range(1500)]

    seen, held_out = looks("mixed-seen"), looks("mixed-held-out")
    for part in ("piece_set", "theme", "size"):
        values = {getattr(p, part) for p in held_out}
        assert values == {getattr(p, part) for p in seen}, part
        assert len(values) > 1, part
    seen_combinations = {(p.piece_set, p.theme, p.size) for p in seen}
    held_out_combinations = {(p.piece_set, p.theme, p.size) for p in held_out}
    assert not seen_combinations & held_out_combinations
    assert all(is_held_out(*combination) for combination in held_out_combinations)


def test_styles_that_cannot_draw_are_refused() -> None:
    with pytest.raises(ChessVLMError, match="at least one"):
        dataclasses.replace(STYLES["mixed"], themes=())
    with pytest.raises(ChessVLMError, match="combinations must be"):
        dataclasses.replace(STYLES["mixed"], combinations="some")


def test_unknown_names_are_user_errors() -> None:
    with pytest.raises(ChessVLMError, match="unknown style 'fancy'"):
        sample_render_params("fancy", random.Random(0))
    with pytest.raises(ChessVLMError, match="unknown piece set"):
        dataclasses.replace(STYLES["mixed"], piece_sets=("nope",))
    with pytest.raises(ChessVLMError, match="unknown board theme"):
        RenderParams(theme="nope")


def test_style_name() -> None:
    params = RenderParams("merida", "green", 224, flipped=True, coordinates=True)
    assert params.name == "merida/green/224/coords/flip"
    jpeg = RenderParams("kaneo", "blue", 512, highlight_move=True, jpeg_quality=80)
    assert jpeg.name == "kaneo/blue/512/lastmove/jpeg80"


def test_save_png_is_lossless_and_jpeg_is_close(tmp_path) -> None:
    image = render_board(chess.Board(), RenderParams())
    png_params = RenderParams()
    save_image(image, tmp_path / "a.png", png_params)
    assert np.array_equal(pixels(Image.open(tmp_path / "a.png")), pixels(image))
    jpeg_params = RenderParams(jpeg_quality=90)
    assert image_extension(jpeg_params) == ".jpg"
    save_image(image, tmp_path / "a.jpg", jpeg_params)
    with Image.open(tmp_path / "a.jpg") as decoded:
        assert decoded.format == "JPEG"
        assert np.abs(pixels(decoded) - pixels(image)).mean() < 3
    with pytest.raises(ValueError, match="extension"):
        save_image(image, tmp_path / "b.png", jpeg_params)
    with pytest.raises(ValueError, match="quality"):
        encode_image(image, "jpeg")


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_png_encoding_is_valid_and_lossless(mode: str) -> None:
    image = render_board(chess.Board(), RenderParams("maestro", size=256)).convert(mode)
    data = encode_image(image, "png")
    Image.open(io.BytesIO(data)).verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.mode == mode and decoded.size == image.size
        assert np.array_equal(pixels(decoded), pixels(image))


@pytest.mark.parametrize("workers", [1, 2])
def test_render_many_writes_every_job_in_order(tmp_path, workers: int) -> None:
    rng = random.Random(3)
    board = chess.Board()
    jobs = []
    for index in range(10):
        params = sample_render_params("simple", rng)
        path = tmp_path / f"{index}{image_extension(params)}"
        jobs.append(RenderJob(board.fen(), params, str(path)))
        board.push(rng.choice(list(board.legal_moves)))
    done = list(render_many(iter(jobs), workers=workers, chunk_size=3))
    assert done == jobs
    for job in jobs:
        expected = render_board(chess.Board(job.fen), job.params)
        assert np.array_equal(pixels(Image.open(job.path)), pixels(expected))


@pytest.mark.parametrize("workers", [1, 2])
def test_render_many_names_the_image_of_a_bad_fen(tmp_path, workers: int) -> None:
    good = [RenderJob(chess.STARTING_FEN, RenderParams(), str(tmp_path / f"{i}.png")) for i in "ab"]
    bad = RenderJob("not a fen", RenderParams(), str(tmp_path / "x.png"))
    with pytest.raises(InputError, match=r"x\.png: cannot render 'not a fen'"):
        list(render_many([*good, bad], workers=workers, chunk_size=1))
