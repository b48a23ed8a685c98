"""Board images: both render paths agree, orientation and colours are right, styles sample."""

from __future__ import annotations

import dataclasses
import io
import math
import random
from collections import Counter

import chess
import numpy as np
import pytest
from PIL import Image

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.pieces import PIECE_SETS, available_piece_sets
from chessvlm.rendering import (
    HELD_OUT_LOOKS,
    STYLES,
    THEMES,
    RenderJob,
    RenderParams,
    board_box,
    encode_image,
    held_out_designs,
    image_extension,
    image_size,
    inner_held_out_designs,
    is_held_out,
    plain_look,
    render_board,
    render_board_svg,
    render_many,
    sample_render_params,
    save_image,
    square_origin,
    style_piece_sets,
)

# Every piece type of both colours, castled white king, so a swap or mirror shows.
ITALIAN = "r1bqk2r/pppp1ppp/2n2n2/2b1p3/2B1P3/3P1N2/PPP2PPP/RNBQ1RK1 b kq - 2 5"
SIZE = 160  # 20 px squares: small enough for the SVG path to stay fast
PNG_SETS = {name for name, source in PIECE_SETS.items() if source.format == "png"}
AVAILABLE = available_piece_sets()
# A few sets of each kind of art (and both formats), so the file stays fast with 100+ sets.
REPRESENTATIVE = sorted(
    {"cburnett", "merida", "alpha"}
    | {
        next(n for n in AVAILABLE if PIECE_SETS[n].kind == kind)
        for kind in {PIECE_SETS[n].kind for n in AVAILABLE}
    }
    | {next(n for n in AVAILABLE if n in PNG_SETS and PIECE_SETS[n].package != "chessboard-image")}
)


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


@pytest.mark.parametrize("piece_set", REPRESENTATIVE)
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


@pytest.mark.parametrize("piece_set", REPRESENTATIVE)
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


@pytest.mark.parametrize("size", [16, 4096, 230.0])
def test_bad_sizes_are_refused(size: int) -> None:
    with pytest.raises(ChessVLMError, match="whole number between 64 and 2048"):
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
    samples = [sample_render_params("mixed", rng) for _ in range(4000)]
    assert {p.piece_set for p in samples} == set(AVAILABLE)
    assert {p.theme for p in samples} == set(THEMES)
    assert all(224 <= p.size <= 519 for p in samples)
    assert {min(p.size for p in samples), max(p.size for p in samples) // 8 * 8} == {224, 512}
    odd = sum(p.size % 8 != 0 for p in samples) / len(samples)
    assert 0.15 < odd < 0.3
    for field, value, low, high in (
        ("margin", (0, 0, 0, 0), 0.28, 0.42),
        ("frame", "none", 0.22, 0.38),
        ("arrows", (), 0.15, 0.25),
        ("texture", "none", 0.18, 0.28),
        ("grayscale", False, 0.07, 0.13),
        ("lowres", 0, 0.11, 0.19),
    ):
        rate = sum(getattr(p, field) != value for p in samples) / len(samples)
        assert low < rate < high, field
    for field, values in (
        ("coordinate_font", {"chess", "sans", "serif", "mono", "sans-bold"}),
        ("frame", {"none", "line", "thick", "bevel", "wood"}),
        ("texture", {"none", "wood", "marble", "hatch"}),
        ("background", {"plain", "page", "window"}),
        ("upscale", {"nearest", "bilinear", "bicubic", "lanczos"}),
    ):
        assert {getattr(p, field) for p in samples} == values, field
    assert {p.coordinate_mode for p in samples} == {"none", "inside", "outside"}
    counts = Counter((p.flipped, p.coordinates, p.jpeg_quality is not None) for p in samples)
    flipped = sum(n for (f, _, _), n in counts.items() if f) / len(samples)
    jpeg = sum(n for (_, _, j), n in counts.items() if j) / len(samples)
    assert 0.4 < flipped < 0.6
    assert 0.2 < jpeg < 0.4
    # Most flipped boards show no coordinates (orientation is read from the pieces), and
    # coordinates are as frequent on both orientations, so they give no hint by themselves.
    flipped_plain = [not p.coordinates for p in samples if p.flipped]
    assert sum(flipped_plain) / len(flipped_plain) >= 0.5
    upright = [p.coordinates for p in samples if not p.flipped]
    assert 0.3 < sum(upright) / len(upright) < 0.5


def test_sampling_is_deterministic_and_styles_can_hold_out() -> None:
    first = [sample_render_params("mixed", random.Random(7)) for _ in range(3)]
    again = [sample_render_params("mixed", random.Random(7)) for _ in range(3)]
    assert first == again
    held_out = dataclasses.replace(STYLES["mixed"], piece_sets=("merida",), sizes=(448, 512))
    params = [sample_render_params(held_out, random.Random(i)) for i in range(30)]
    assert {p.piece_set for p in params} == {"merida"}
    assert {p.size // 8 * 8 for p in params} <= {448, 512}  # odd sides: 1-7 px more


def test_held_out_styles_share_parts_but_no_combination() -> None:
    def looks(style: str) -> list[RenderParams]:
        return [sample_render_params(style, random.Random(i)) for i in range(1500)]

    seen, held_out = looks("mixed-seen"), looks("mixed-held-out")
    # Combinations are over the drawn size, before an odd side adds 1-7 pixels.
    for part in ("piece_set", "theme", "size"):
        values = {getattr(p, part) for p in held_out}
        assert values == {getattr(p, part) for p in seen}, part
        assert len(values) > 1, part
    seen_combinations = {(p.piece_set, p.theme, p.size // 8 * 8) for p in seen}
    held_out_combinations = {(p.piece_set, p.theme, p.size // 8 * 8) for p in held_out}
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


# --------------------------------------------------------------------------- board looks

LOOKS = {
    "margin": {"margin": (10, 20, 30, 5), "background_colour": "#262421"},
    "page": {"margin": (40, 30, 40, 50), "background": "page"},
    "window": {"margin": (20, 40, 20, 10), "background": "window"},
    "line": {"frame": "line"},
    "thick": {"frame": "thick"},
    "bevel": {"frame": "bevel"},
    "wood-frame": {"frame": "wood"},
    "outside": {"coordinates": True, "coordinate_place": "outside"},
    "outside-serif": {
        "coordinates": True,
        "coordinate_place": "outside",
        "coordinate_font": "serif",
    },
    "inside-sans": {"coordinates": True, "coordinate_font": "sans"},
    "inside-mono": {"coordinates": True, "coordinate_font": "mono"},
    "check": {"show_check": True},
    "selected": {"selected": True},
    "arrows": {"arrows": ((12, 28, "green"), (6, 21, "blue"))},
    "circles": {"circles": ((36, "red"), (0, "yellow"))},
    "wood": {"texture": "wood"},
    "marble": {"texture": "marble"},
    "hatch": {"texture": "hatch"},
    "grayscale": {"grayscale": True},
    "lowres": {"lowres": 14, "upscale": "nearest"},
    "lowres-lanczos": {"lowres": 20, "upscale": "lanczos"},
    "odd-size": {"size": 229},
}
CHECKED = chess.Board("rnb1kbnr/pppp1ppp/8/4p3/5PPq/8/PPPPP2P/RNBQKBNR w KQkq - 1 3")


@pytest.mark.parametrize("look", list(LOOKS))
def test_each_look_renders_and_changes_the_image(look: str) -> None:
    plain = RenderParams("merida", "brown", 224, flipped=True)
    params = dataclasses.replace(plain, **LOOKS[look])
    image = render_board(CHECKED, params)
    assert image.mode == "RGB" and image.size == image_size(params)
    before = render_board(CHECKED, plain)
    assert image.size != before.size or not np.array_equal(pixels(image), pixels(before))
    assert params.name != plain.name  # the style label names the look
    if look != "odd-size":
        with pytest.raises(ChessVLMError, match="only plain looks"):
            render_board_svg(CHECKED, params)
    inside = params.coordinate_mode == "inside"
    assert plain_look(params) == dataclasses.replace(plain, size=params.size, coordinates=inside)


@pytest.mark.parametrize(
    "look", ["margin", "page", "window", "thick", "wood-frame", "outside", "outside-serif"]
)
def test_board_box_holds_exactly_the_plain_board(look: str) -> None:
    # Margins, frames and outside coordinates go around the board: the box is the plain board.
    plain = RenderParams("alpha", "green", 232, flipped=True, highlight_move=True)
    params = dataclasses.replace(plain, **LOOKS[look])
    move = chess.Move.from_uci("g1f3")
    image = render_board(CHECKED, params, move)
    x0, y0, x1, y1 = board_box(params)
    assert (x1 - x0, y1 - y0) == (232, 232)
    assert x0 >= 0 and y0 >= 0 and x1 <= image.width and y1 <= image.height
    crop = image.crop((int(x0), int(y0), int(x1), int(y1)))
    assert np.array_equal(pixels(crop), pixels(render_board(CHECKED, plain, move)))
    if look.startswith("outside"):
        assert params.coordinate_mode == "outside" and image.size == image_size(params)
        assert image.width > 232 and image.height > 232


@pytest.mark.parametrize(
    "look", ["page", "bevel", "outside", "wood", "marble", "hatch", "odd-size", "lowres"]
)
@pytest.mark.parametrize("flipped", [False, True])
def test_a_piece_stays_inside_its_square(look: str, flipped: bool) -> None:
    params = dataclasses.replace(
        RenderParams("cburnett", "blue", 237, flipped=flipped), **LOOKS[look]
    )
    side = params.size
    empty = pixels(render_board(chess.Board(None), params))
    for square in (chess.A1, chess.E4, chess.H8, chess.C7, chess.G2):
        changed = np.abs(pixels(render_board(lone_piece("q", square), params)) - empty).sum(2)
        ys, xs = np.nonzero(changed > 0)
        x0, y0 = (int(v) for v in board_box(params)[:2])
        sx, sy = square_origin(square, side, flipped)
        # The square's far edges: the next boundary, round((i + 1) * side / 8).
        column, row = round(sx * 8 / side), round(sy * 8 / side)
        ex, ey = (2 * (column + 1) * side + 8) // 16, (2 * (row + 1) * side + 8) // 16
        assert len(xs) > 0
        assert xs.min() >= x0 + sx and xs.max() < x0 + ex, square
        assert ys.min() >= y0 + sy and ys.max() < y0 + ey, square


def test_boards_of_any_side_split_into_rounded_squares() -> None:
    for size in (229, 250, 301):
        edges = [square_origin(chess.square(i, 7), size, False)[0] for i in range(8)]
        assert edges == [math.floor(i * size / 8 + 0.5) for i in range(8)]
        assert edges != [i * (size // 8) for i in range(8)]
        assert render_board(chess.Board(), RenderParams(size=size)).size == (size, size)
    # Multiples of 8 keep whole squares.
    assert square_origin(chess.E4, 224, False) == (4 * 28, 4 * 28)


def test_check_glow_selected_square_and_arrows_land_where_they_should() -> None:
    params = RenderParams("cburnett", "brown", 224)
    base = pixels(render_board(CHECKED, params))
    glow = square_means(
        np.abs(pixels(render_board(CHECKED, dataclasses.replace(params, show_check=True))) - base),
        224,
    )
    assert set(zip(*np.nonzero(glow), strict=True)) == {(7, 4)}  # the white king on e1
    selected = dataclasses.replace(params, selected=True)
    cells = square_means(np.abs(pixels(render_board(CHECKED, selected)) - base), 224)
    ((row, column),) = zip(*np.nonzero(cells), strict=True)
    assert CHECKED.color_at(chess.square(column, 7 - row)) == chess.WHITE
    arrow = dataclasses.replace(params, arrows=((chess.E2, chess.E4, "green"),))
    cells = square_means(np.abs(pixels(render_board(CHECKED, arrow)) - base), 224)
    # Drawn over the pawn on e2, up the e-file, nowhere else.
    assert cells[6, 4] > 0 and cells[5, 4] > 0 and cells[4, 4] > 0
    assert not cells[:, :3].any() and not cells[:, 6:].any()


# --------------------------------------------------------------------------- style splits


def _draws(style: str, count: int) -> list[RenderParams]:
    return [sample_render_params(style, random.Random(i)) for i in range(count)]


def _held_looks(params: RenderParams) -> set[str]:
    values = {
        "theme": {params.theme},
        "texture": {params.texture},
        "coordinate_font": {params.coordinate_font} if params.coordinates else set(),
        "frame": {params.frame},
        "arrow_colour": {c for *_, c in (*params.arrows, *params.circles)},
        "background": {params.background} if any(params.margin) else set(),
        "upscale": {params.upscale} if params.lowres else set(),
    }
    return {f"{k}={v}" for k, vs in values.items() for v in vs if v in HELD_OUT_LOOKS[k]}


def test_held_out_designs_stay_those_every_unseen_figure_was_measured_on() -> None:
    # Adding piece sets reorders designs by checksum within a kind; a new design that would
    # displace a held-out one changes the unseen test set, so it must be a deliberate change.
    assert held_out_designs() == {
        "anarcandy", "cardinal", "cases", "companion", "dominical", "fantasy", "firi",
        "icpieces", "kaneo", "kosal", "maestro", "magnetic", "staunton-3d", "staunty",
        "unifont-glyphs", "whitney",
    }  # fmt: skip


def test_leave_designs_out_styles_split_designs_and_looks() -> None:
    held = held_out_designs()
    designs = {source.design for source in PIECE_SETS.values()}
    assert 1 / 6 < len(held) / len(designs) < 1 / 3.5
    kinds = {}
    for source in PIECE_SETS.values():
        kinds.setdefault(source.kind, set()).add(source.design)
    for kind, members in kinds.items():
        if len(members) > 1:
            assert members & held, kind  # every kind has a held-out design
    seen, held_out = _draws("designs-seen", 1500), _draws("designs-held-out", 600)
    assert not any(PIECE_SETS[p.piece_set].design in held for p in seen)
    assert all(PIECE_SETS[p.piece_set].design in held for p in held_out)
    assert not any(_held_looks(p) for p in seen)
    assert sum(bool(_held_looks(p)) for p in held_out) / len(held_out) > 0.7
    looks = set().union(*map(_held_looks, held_out))
    assert {f"{k}={v}" for k, vs in HELD_OUT_LOOKS.items() for v in vs} == looks
    assert set(style_piece_sets("designs-seen")) | set(style_piece_sets("designs-held-out")) == set(
        AVAILABLE
    )
    assert style_piece_sets("mixed") == AVAILABLE


def test_the_inner_pair_splits_the_seen_designs_again_and_keeps_to_the_seen_looks() -> None:
    held, inner = held_out_designs(), inner_held_out_designs()
    assert not held & inner
    kinds = {}
    for source in PIECE_SETS.values():
        kinds.setdefault(source.kind, set()).add(source.design)
    for kind, members in kinds.items():
        if len(members - held) > 1:
            assert (members - held) & inner, kind  # every kind has an inner held-out design
    seen = {source.design for source in PIECE_SETS.values()} - held
    assert 1 / 6 < len(inner) / len(seen) < 1 / 3.5
    train, tune = _draws("designs-inner-seen", 1500), _draws("designs-inner-held-out", 600)
    for params in train:
        assert PIECE_SETS[params.piece_set].design not in held | inner
    assert all(PIECE_SETS[p.piece_set].design in inner for p in tune)
    assert not any(_held_looks(p) for p in (*train, *tune))
    # Between them they draw what designs-seen draws, and nothing of designs-held-out.
    pair = set(style_piece_sets("designs-inner-seen")) | set(
        style_piece_sets("designs-inner-held-out")
    )
    assert pair == set(style_piece_sets("designs-seen"))
    with pytest.raises(ChessVLMError, match="designs"):
        dataclasses.replace(STYLES["mixed"], designs="inner")
    assert inner_held_out_designs() == {
        "adventurer", "alpha", "california", "chap", "chess7", "cmf", "lucena", "mark", "maya",
        "noto-symbols2-glyphs", "nutbolt", "santa", "slics", "usual", "yahoo",
    }  # fmt: skip
