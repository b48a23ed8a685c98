"""The board finder: every chess board in a screenshot, a page or a scan, with its corners.

A chess board is the one common picture with an 8x8 checkerboard of squares: inside it, the
7 x 7 points where four squares meet are "X-corners", where the two squares on one diagonal
are light and the two on the other dark. Pieces stand in the middle of their squares, so the
corners of the squares stay visible whatever the piece design. The finder

1. measures, at every pixel of an image pyramid (squares of 8-11 px at some level), how
   much it looks like an X-corner: the mean of the diagonal quadrants minus the mean of the
   other two, less how unlike each other the two quadrants of a diagonal are (which rules
   out edges, L-corners and text);
2. keeps the local maxima, links each to its neighbours about one square away on the right
   and below whose sign is opposite (light and dark swap from one corner to the next), and
   numbers each linked group on a grid;
3. takes the 7 x 7 windows of a group holding most of the 49 corners, refines the corners
   with OpenCV's `cornerSubPix`, and fits an affine grid to them, which gives the board's
   four outer corners (allowing the few degrees a scan is turned);
4. checks the squares along the edge (`_edge_contrast`): the outer ring must belong to the
   board, and the squares just outside must not go on alternating (a draughts board, a
   larger checkered pattern); a smaller checkered pattern leaves a side that belongs to
   nothing.

There is nothing to train: the thresholds are in `FinderSettings`, chosen on scenes drawn
with the seen designs by `chessvlm finder tune` (`bench/bench_finder.py` measures them on
the held-out designs; docs/finder.md).

The commonest picture is one board cut out with little around it. Given a board locator (the
reader's: `locate`), `find_boards` first tries that: when the picture is board-shaped, the
located squares fill most of it and show a checkerboard (`checkerboard_shades`), that is its
one board, found in about a millisecond, and found even when the pieces hide most X-corners
(solid block pieces, hatched squares). Anything else goes to the corner search.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
from PIL import Image, ImageChops

INNER = 7  # X-corners per row and column of a chess board
# Squares at the level the corners are looked for: 8 px up to 8 * sqrt(2) px.
LEVEL_SQUARE = (8.0, 8.0 * math.sqrt(2.0))
# `find_board_near` looks this many squares around a located box (room for the ring of
# squares outside the board that `_edge_contrast` checks, and for the box being off).
_NEAR_MARGIN = 1.5
# `located_board` looks at the located squares at this size: 16 px squares.
CHECK_SIZE = 128
# The farthest a corner links to its neighbour, in pyramid pixels (1.3 level squares).
_LINK_REACH = math.ceil(1.3 * LEVEL_SQUARE[1])
# `fit_grid`: a grid whose corners lie within _TIGHT_FLOOR of a square of its median fit
# is fitted on the corners within _TIGHT_SPREAD times their median distance or _TIGHT_FLOOR,
# at least the closest _TIGHT_SHARE.
_TIGHT_SPREAD = 3.0
_TIGHT_FLOOR = 0.05
_TIGHT_SHARE = 2 / 3


@dataclasses.dataclass(frozen=True)
class FinderSettings:
    """The finder's thresholds (grey levels are 0-255)."""

    # Side of each of the four quadrants compared at an X-corner, in pyramid pixels.
    quadrant: int = 3
    # The smallest X-corner score kept: diagonal contrast minus diagonal mismatch.
    min_score: float = 10.0
    # Of the 49 inner corners, how many must be found for a board.
    min_corners: int = 24
    # How far (in squares) a refined corner may lie from the fitted grid.
    max_residual: float = 0.2
    # Boards whose squares are smaller than this are ignored.
    min_square: float = 11.5
    # A located board (`locate`) counts when the picture is at most this far from square,
    # the located squares cover this share of it, their light and dark squares differ by
    # this many grey levels, and this share of the 64 squares follows the alternation.
    located_max_aspect: float = 1.25
    located_min_area: float = 0.4
    located_min_contrast: float = 16.0
    located_min_agreement: float = 0.75


@dataclasses.dataclass(frozen=True)
class FoundBoard:
    """A board found in an image.

    `corners` are the 8x8 squares' outer corners in image pixels (pixel-edge coordinates),
    top-left, top-right, bottom-right, bottom-left as the image shows them. Found by its
    corners (`found_by` "corners"): `score` is the share of the 49 inner corners seen (1.0:
    all) and `contrast` the grey levels between light and dark squares on the board's
    weakest side. Found by the locator ("locator"): `score` is the share of the 64 squares
    whose shade follows the alternation, `contrast` the grey levels between the two colours.
    """

    corners: tuple[tuple[float, float], ...]
    score: float
    contrast: float
    found_by: str = "corners"

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The axis-aligned box around the corners: left, top, right, bottom."""
        xs = [x for x, _ in self.corners]
        ys = [y for _, y in self.corners]
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def square_size(self) -> float:
        """The mean side of a square in pixels."""
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = self.corners
        sides = (
            math.hypot(x1 - x0, y1 - y0),
            math.hypot(x2 - x1, y2 - y1),
            math.hypot(x3 - x2, y3 - y2),
            math.hypot(x0 - x3, y0 - y3),
        )
        return sum(sides) / 32.0


def to_gray(image: Image.Image | np.ndarray) -> np.ndarray:
    """An RGB PIL image or H x W x 3 uint8 array as the uint8 shade the finder looks at:
    the darkest of the three channels. Every board theme's light and dark squares differ
    more in it than in luminance (olive: 94 levels against 49; pink: 53 against 36)."""
    if isinstance(image, Image.Image):
        # Pillow takes the bands apart and compares them in one pass each, without the
        # strided copies of the channels an RGB array would need.
        red, green, blue = image.convert("RGB").split()
        return np.asarray(ImageChops.darker(ImageChops.darker(red, green), blue))
    return cv2.min(cv2.min(image[..., 0], image[..., 1]), image[..., 2])


Locate = Callable[[Image.Image], Sequence[float]]


def find_boards(
    image: Image.Image | np.ndarray,
    settings: FinderSettings = FinderSettings(),
    locate: Locate | None = None,
) -> list[FoundBoard]:
    """Every chess board in `image`, in reading order (rows top to bottom, left to right).

    `locate` (an RGB image -> its board's squares as fractions: left, top, right, bottom)
    lets a picture of one board be taken as that board without the corner search
    (`located_board`)."""
    if locate is not None:
        located = located_board(image, locate, settings)
        if located is not None:
            return [located]
    return reading_order(_unique(_corner_search(to_gray(image), settings)))


def find_board_near(
    image: Image.Image | np.ndarray,
    box: Sequence[float],
    settings: FinderSettings = FinderSettings(),
) -> FoundBoard | None:
    """The board whose squares a locator put at `box` (left, top, right, bottom pixels, a
    few hundredths of a square off, at times a third), at the exact corners the corner
    search finds there: the found board overlapping `box` most, by half or more (IoU); None
    where the search finds none there (pieces hiding the corners).

    The search looks only around `box` (`_NEAR_MARGIN` squares each side, room for the
    ring of squares `_edge_contrast` checks outside the board) and only at the pyramid
    level that looks for squares of `box`'s size: about a third of `find_boards`' time on
    the same images (docs/finder.md)."""
    left, top, right, bottom = (float(value) for value in box)
    square = max(right - left, bottom - top) / 8
    width, height = image.size if isinstance(image, Image.Image) else image.shape[1::-1]
    reach = _NEAR_MARGIN * square
    x0, y0 = max(0, math.floor(left - reach)), max(0, math.floor(top - reach))
    x1, y1 = min(width, math.ceil(right + reach)), min(height, math.ceil(bottom + reach))
    if square <= 0 or x1 <= x0 or y1 <= y0:
        return None
    if isinstance(image, Image.Image):
        region = to_gray(image.crop((x0, y0, x1, y1)))
    else:
        region = to_gray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    found = [_shifted(board, x0, y0) for board in _corner_search(region, settings, square)]
    overlap, board = max(
        ((box_iou(board.box, box), board) for board in found),
        key=lambda pair: pair[0],
        default=(0.0, None),
    )
    return board if overlap >= 0.5 else None


def _shifted(board: FoundBoard, dx: float, dy: float) -> FoundBoard:
    """`board` with its corners moved by (`dx`, `dy`) pixels."""
    corners = tuple((x + dx, y + dy) for x, y in board.corners)
    return dataclasses.replace(board, corners=corners)


def _corner_search(
    gray: np.ndarray, settings: FinderSettings, square: float | None = None
) -> list[FoundBoard]:
    """The boards the corner search finds in `gray` (steps 1-4 of the module's notes), on
    every pyramid level or, given a `square` size in pixels, only on the level that looks
    for squares of that size."""
    found: list[FoundBoard] = []
    for factor, level in _pyramid(gray, settings, square):
        scores = corner_scores(level, settings.quadrant)
        for candidates in _lattices(scores, settings):
            fitted = [_fit_board(gray, level, factor, grid, settings) for grid in candidates]
            boards = [board for board in fitted if board is not None]
            if boards:
                # The window with the most corners seen; where two tie (a row of corners
                # hidden by pieces, another row of specks of text beside the board), the
                # one whose 49 corners look most like X-corners, hidden ones included.
                found.append(
                    max(
                        boards,
                        key=lambda board: (
                            board.score,
                            _corner_response(scores[0], board, factor, settings.quadrant),
                        ),
                    )
                )
    return found


def located_board(
    image: Image.Image | np.ndarray, locate: Locate, settings: FinderSettings = FinderSettings()
) -> FoundBoard | None:
    """The one board of a board-shaped picture, where `locate` puts it, if its squares fill
    most of the picture and show a checkerboard (`FinderSettings.located_*`); else None."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    width, height = image.size
    if max(width, height) > settings.located_max_aspect * min(width, height):
        return None
    left, top, right, bottom = (float(value) for value in locate(image))
    if (right - left) * (bottom - top) < settings.located_min_area:
        return None
    box = (left * width, top * height, right * width, bottom * height)
    squares = image.resize((CHECK_SIZE, CHECK_SIZE), Image.Resampling.BILINEAR, box=box)
    contrast, agreement = checkerboard_shades(to_gray(squares))
    if contrast < settings.located_min_contrast or agreement < settings.located_min_agreement:
        return None
    x0, y0, x1, y1 = box
    # Inner corner (column, row) lies one square in from the top-left corner.
    width_8, height_8 = (x1 - x0) / 8, (y1 - y0) / 8
    affine = np.array([[width_8, 0.0, x0 + width_8], [0.0, height_8, y0 + height_8]])
    # Every side counts as seen (the checkerboard test stands for the corner search); what
    # is left of the edge test is that the pattern must not go on past the board.
    if _edge_contrast(to_gray(image), affine, np.ones((INNER, INNER), bool)) is None:
        return None
    corners = ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
    return FoundBoard(corners, agreement, contrast, found_by="locator")


def checkerboard_shades(board: np.ndarray) -> tuple[float, float]:
    """How much a grey picture cut to a board's squares (side divisible by 8) looks like a
    checkerboard: the grey levels between its light and dark squares, and the share of the
    64 squares whose shade is nearer their own colour's than the other's.

    A square's shade is the median of four small patches in its corners, where pieces
    seldom reach (a piece, an arrow or a highlight covers one or two)."""
    square = board.shape[0] // 8
    inset, patch = max(1, square // 8), max(1, square // 4)
    cells = board.astype(np.float32).reshape(8, square, 8, square)
    near, far = slice(inset, inset + patch), slice(square - inset - patch, square - inset)
    patches = [
        cells[:, rows, :, columns].mean(axis=(1, 3))
        for rows in (near, far)
        for columns in (near, far)
    ]
    shades = np.median(np.stack(patches), axis=0)
    parity = (np.add.outer(np.arange(8), np.arange(8)) % 2).astype(bool)
    first, second = np.median(shades[~parity]), np.median(shades[parity])
    own = np.where(parity, second, first)
    other = np.where(parity, first, second)
    agreement = float(np.mean(np.abs(shades - own) < np.abs(shades - other)))
    return float(abs(first - second)), agreement


def _pyramid(
    gray: np.ndarray, settings: FinderSettings, square: float | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """(factor, image scaled by factor), factors sqrt(2) apart, from squares of
    `min_square` px up to one board filling the image; given a `square` size in pixels, only
    the level that scales it into `LEVEL_SQUARE`. The levels are two chains of exact halvings
    (2 x 2 box averages, which OpenCV does in a tenth of a millisecond), one from the image
    and one from the image scaled by 1 / sqrt(2), the one costly resize."""
    height, width = gray.shape
    scaled = (max(1, round(width / math.sqrt(2.0))), max(1, round(height / math.sqrt(2.0))))
    smaller = cv2.resize(gray, scaled, interpolation=cv2.INTER_AREA)
    chains = [(1.0, gray), (1 / math.sqrt(2.0), smaller)]
    while True:
        for index, (factor, level) in enumerate(chains):
            if 8 * LEVEL_SQUARE[0] / factor > min(width, height) * 1.05:
                return
            if square is not None and square * factor < LEVEL_SQUARE[0]:
                return  # the levels come in shrinking order: none after this one fits
            if LEVEL_SQUARE[1] / factor >= settings.min_square and (
                square is None or square * factor <= LEVEL_SQUARE[1]
            ):
                yield factor, level
            chains[index] = (factor / 2, _halved(level))


def _halved(level: np.ndarray) -> np.ndarray:
    """`level` at half its size, each pixel the mean of a 2 x 2 block (an odd last row or
    column is dropped, so pixel edges scale by exactly 1/2)."""
    height, width = level.shape[0] // 2, level.shape[1] // 2
    return cv2.resize(
        level[: 2 * height, : 2 * width], (width, height), interpolation=cv2.INTER_AREA
    )


def corner_scores(level: np.ndarray, quadrant: int) -> tuple[np.ndarray, np.ndarray]:
    """Per grid point (y, x) between pixels: the X-corner score and the diagonal contrast
    (positive: top-left and bottom-right quadrants lighter), both int16 in units of
    1 / (2 q^2) grey level, q the quadrant side. Arrays are (H - 2q + 1) x (W - 2q + 1); entry
    [y, x] is the point at pixel edge (x + q, y + q).

    The score is the mean diagonal contrast minus the mean mismatch within each diagonal.
    Quadrant sums are exact in int16 (a 4 x 4 quadrant sums to at most 4,080, and no step
    adds more than four), which halves the memory the whole-image passes move against
    float32 means."""
    q = quadrant
    sums = cv2.boxFilter(
        level, cv2.CV_16S, (q, q), anchor=(0, 0), normalize=False, borderType=cv2.BORDER_REPLICATE
    )
    height, width = level.shape
    sums = sums[: height - q + 1, : width - q + 1]  # sums[y, x]: pixels y..y+q, x..x+q
    top_left = sums[: -q or None, : -q or None]
    top_right = sums[: -q or None, q:]
    bottom_left = sums[q:, : -q or None]
    bottom_right = sums[q:, q:]
    contrast = cv2.subtract(cv2.add(top_left, bottom_right), cv2.add(top_right, bottom_left))
    mismatch = cv2.add(cv2.absdiff(top_left, bottom_right), cv2.absdiff(top_right, bottom_left))
    return cv2.subtract(np.abs(contrast), mismatch), contrast


def _peaks(scores: tuple[np.ndarray, np.ndarray], settings: FinderSettings) -> np.ndarray:
    """Local maxima of a level's X-corner score (`corner_scores`): rows of (x, y, sign,
    score), x and y in level pixel edges, score in grey levels."""
    score, contrast = scores
    spread = cv2.dilate(score, np.ones((5, 5), np.uint8))
    q = settings.quadrant
    unit = 2 * q * q
    # OpenCV's comparisons and its list of set pixels are ten times NumPy's on a level.
    peaks = cv2.compare(score, spread, cv2.CMP_GE) & cv2.compare(
        score, settings.min_score * unit, cv2.CMP_GT
    )
    found = cv2.findNonZero(peaks)
    if found is None:
        return np.zeros((0, 4), np.float32)
    xs, ys = found.reshape(-1, 2).T
    sign = np.sign(contrast[ys, xs])
    return np.stack([xs + q, ys + q, sign, score[ys, xs] / unit], axis=1).astype(np.float32)


def _lattices(
    scores: tuple[np.ndarray, np.ndarray], settings: FinderSettings
) -> list[list[np.ndarray]]:
    """Per group of linked X-corners of a level (its `corner_scores`), the group's candidate
    7 x 7 grids (`_board_grids`), best first."""
    points = _peaks(scores, settings)
    if len(points) < settings.min_corners:
        return []
    pad = _LINK_REACH
    q = settings.quadrant
    height, width = (size + 2 * q - 1 for size in scores[0].shape)
    index = np.full((height + 2 * pad, width + 2 * pad), -1, dtype=np.int32)
    index[points[:, 1].astype(np.int64) + pad, points[:, 0].astype(np.int64) + pad] = np.arange(
        len(points)
    )
    right = _neighbours(points, index, axis=0)
    below = _neighbours(points, index, axis=1)
    grids = []
    for members in _linked_groups(len(points), right, below):
        if len(members) < settings.min_corners:
            continue
        candidates = _board_grids(_numbered(members, right, below), points, settings)
        if candidates:
            grids.append(candidates)
    return grids


def _corner_response(score: np.ndarray, board: FoundBoard, factor: float, quadrant: int) -> float:
    """The mean X-corner score (`corner_scores`' first array, of the level scaled by
    `factor`) at the board's 49 inner corners, in grey levels: seen or not, the corners of
    a board in place score higher than those of a grid one square off, whose last row of
    corners lies on the margin or a caption."""
    (x0, y0), (x1, y1), _, (x3, y3) = board.corners
    steps = np.arange(1, INNER + 1) / 8.0
    across, down = np.meshgrid(steps, steps)
    xs = (x0 + across * (x1 - x0) + down * (x3 - x0)) * factor - quadrant
    ys = (y0 + across * (y1 - y0) + down * (y3 - y0)) * factor - quadrant
    height, width = score.shape
    columns = np.clip(np.rint(xs).astype(np.int64), 0, width - 1)
    rows = np.clip(np.rint(ys).astype(np.int64), 0, height - 1)
    return float(score[rows, columns].mean()) / (2 * quadrant * quadrant)


def _neighbours(points: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """For each point, the strongest opposite-sign point about one level square further
    along `axis` (0: right, 1: down, within a quarter of the step across), or -1. `index`
    holds each point's number at its pixel and -1 elsewhere, padded by `_LINK_REACH` on every
    side, so that no look-up needs a bounds check."""
    low, high = math.floor(0.75 * LEVEL_SQUARE[0]), _LINK_REACH
    reach = high // 4
    steps = np.arange(low, high + 1)
    offsets = np.arange(-reach, reach + 1)
    along, across = np.meshgrid(steps, offsets, indexing="ij")
    allowed = (np.abs(across) <= along // 4).ravel()
    dx, dy = (along, across) if axis == 0 else (across, along)
    stride = index.shape[1]
    moves = (dy * stride + dx).ravel()[allowed]
    at = (points[:, 1].astype(np.int64) + _LINK_REACH) * stride + points[:, 0] + _LINK_REACH
    candidates = index.ravel()[at.astype(np.int64)[:, None] + moves[None, :]]
    # Number -1 (no point) picks the appended last entry: no sign, no score.
    signs = np.append(points[:, 2], 0.0)[candidates]
    scores = np.where(signs != points[:, 2:3], np.append(points[:, 3], -1.0)[candidates], -1.0)
    choice = scores.argmax(axis=1)
    rows = np.arange(len(points))
    return np.where(scores[rows, choice] > 0, candidates[rows, choice], -1).astype(np.int64)


def _linked_groups(count: int, right: np.ndarray, below: np.ndarray) -> list[list[int]]:
    """Connected groups of points under the right and below links (union-find), among the
    points with two links or more: a lone link between two specks of text starts nothing."""
    degree = (right >= 0).astype(np.int64) + (below >= 0)
    for links in (right, below):
        degree += np.bincount(links[links >= 0], minlength=count)
    keep = degree >= 2
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for links in (right, below):
        for a in np.nonzero(keep & (links >= 0))[0].tolist():
            b = int(links[a])
            if keep[b]:
                ra, rb = root(a), root(b)
                if ra != rb:
                    parent[ra] = rb
    groups: dict[int, list[int]] = {}
    for i in list(parent):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _numbered(
    members: list[int], right: np.ndarray, below: np.ndarray
) -> dict[tuple[int, int], int]:
    """Number a linked group's points on a grid by walking its links: (column, row) -> point.
    Where links disagree the first numbering stands."""
    member_set = set(members)
    steps: dict[int, list[tuple[int, int, int]]] = {m: [] for m in members}
    for a in members:
        for links, (dc, dr) in ((right, (1, 0)), (below, (0, 1))):
            b = int(links[a])
            if b in member_set:
                steps[a].append((b, dc, dr))
                steps[b].append((a, -dc, -dr))
    place = {members[0]: (0, 0)}
    queue = [members[0]]
    while queue:
        a = queue.pop()
        column, row = place[a]
        for b, dc, dr in steps[a]:
            if b not in place:
                place[b] = (column + dc, row + dr)
                queue.append(b)
    cells: dict[tuple[int, int], int] = {}
    for point, cell in place.items():
        cells.setdefault(cell, point)
    return cells


def _board_grids(
    cells: dict[tuple[int, int], int], points: np.ndarray, settings: FinderSettings
) -> list[np.ndarray]:
    """The 7 x 7 windows of numbered points holding `min_corners` points or more, most
    first, each a 7 x 7 x 2 array of positions (NaN: not seen). A group spanning fewer
    than 7 lines (pieces hiding a row of corners) is tried at each place it could sit in
    the board; `_edge_contrast` tells them apart."""
    columns = [c for c, _ in cells]
    rows = [r for _, r in cells]
    # Room around the group for every window that holds all of it along a short side.
    pad_rows = max(0, INNER - (max(rows) - min(rows) + 1))
    pad_columns = max(0, INNER - (max(columns) - min(columns) + 1))
    left0, top0 = min(columns) - pad_columns, min(rows) - pad_rows
    occupied = np.zeros(
        (max(rows) - top0 + 1 + pad_rows, max(columns) - left0 + 1 + pad_columns), bool
    )
    for column, row in cells:
        occupied[row - top0, column - left0] = True
    windows = []
    for top in range(occupied.shape[0] - INNER + 1):
        for left in range(occupied.shape[1] - INNER + 1):
            count = int(occupied[top : top + INNER, left : left + INNER].sum())
            if count >= settings.min_corners:
                windows.append((count, top, left))
    grids = []
    for _, top, left in sorted(windows, reverse=True):
        grid = np.full((INNER, INNER, 2), np.nan, dtype=np.float64)
        for (column, row), point in cells.items():
            r, c = row - top0 - top, column - left0 - left
            if 0 <= r < INNER and 0 <= c < INNER:
                grid[r, c] = points[point, :2]
        grids.append(grid)
    return grids


def _fit_board(
    gray: np.ndarray, level: np.ndarray, factor: float, grid: np.ndarray, settings: FinderSettings
) -> FoundBoard | None:
    """Refine a 7 x 7 grid of inner corners (`level` coordinates, `level` being `gray`
    scaled by `factor`) on the full image, fit the board's outline, and check its squares
    alternate on the pyramid level (where fine hatching is averaged out)."""
    grid = grid / factor
    seen = ~np.isnan(grid[..., 0])
    if seen.sum() < settings.min_corners:
        return None
    rows, columns = np.nonzero(seen)
    corners = grid[seen].astype(np.float32)
    affine = _fit_affine(columns, rows, corners)
    square = float(np.hypot(*affine[:, 0]))
    if square < settings.min_square:
        return None
    fitted = fit_grid(columns, rows, _refine_corners(gray, corners, square), square, settings)
    if fitted is None or fitted.spread > _TIGHT_FLOOR:
        # Hatched or pixelated squares pull the refined corners about, so far that no grid
        # fits them under arrows: refine them again on the board blurred, where the squares
        # are plain, and take that if it is precise and keeps as many corners.
        blurred = _refine_corners(gray, corners, square, blur=True)
        again = fit_grid(columns, rows, blurred, square, settings)
        if (
            again is not None
            and again.spread <= _TIGHT_FLOOR
            and (fitted is None or again.kept >= fitted.kept)
        ):
            fitted = again
    if fitted is None:
        return None
    affine, kept = fitted.affine, fitted.kept
    contrast = _edge_contrast(level, affine * factor, seen)
    if contrast is None:
        return None
    # The outer corners are one square beyond the first and last inner corners; a board
    # filling its image can come out a fraction of a pixel past its edge.
    outline = _apply(affine, np.array([-1, 7, 7, -1]), np.array([-1, -1, 7, 7]))
    height, width = gray.shape
    corners_out = tuple(
        (float(np.clip(x, 0, width)), float(np.clip(y, 0, height))) for x, y in outline
    )
    return FoundBoard(corners_out, kept / INNER**2, contrast)


def _refine_corners(
    gray: np.ndarray, corners: np.ndarray, square: float, blur: bool = False
) -> np.ndarray:
    """`corners` (N x 2 float32, pixel edges) moved to the X-corners nearby with OpenCV's
    `cornerSubPix`, on the image itself or (`blur`) on the board's part of it blurred by a
    twelfth of a square."""
    window = max(2, min(12, round(square / 6)))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 20, 0.05)
    # cornerSubPix works in pixel-centre coordinates; ours are pixel edges.
    offset = np.zeros(2, np.float32)
    image = gray
    if blur:
        margin = 2 * window + 2
        low = np.maximum(np.floor(corners.min(axis=0)) - margin, 0).astype(int)
        high = np.ceil(corners.max(axis=0)).astype(int) + margin
        image = cv2.GaussianBlur(gray[low[1] : high[1], low[0] : high[0]], (0, 0), square / 12)
        offset = low.astype(np.float32)
    centred = (corners - 0.5 - offset).reshape(-1, 1, 2)
    refined = cv2.cornerSubPix(image, centred, (window, window), (-1, -1), criteria)
    return refined.reshape(-1, 2).astype(np.float64) + 0.5 + offset


@dataclasses.dataclass(frozen=True)
class GridFit:
    """`fit_grid`'s answer: the affine map (2 x 3) from inner-corner (column, row, 1) to
    image (x, y), the corners within `max_residual` of it, and `spread`, the median
    distance of those from a fit by medians, in squares (how noisy the corners are)."""

    affine: np.ndarray
    kept: int
    spread: float


def fit_grid(
    columns: np.ndarray,
    rows: np.ndarray,
    points: np.ndarray,
    square: float,
    settings: FinderSettings = FinderSettings(),
) -> GridFit | None:
    """The grid that fits the refined corners `points` of a grid of `square`-pixel squares
    (`GridFit`); None when fewer than `min_corners` lie within `max_residual` of a first
    fit: by least squares or, where that keeps too few, by medians (arrows or pieces can
    break the links so that a part of the grid is numbered a square off, which pulls a
    least-squares fit away from every corner).

    A piece's outline near a corner can drag its refined position a tenth of a square, and
    a row of such corners would tilt a least-squares fit. So the kept corners are placed
    again by medians (`_median_affine`). Where most of them lie within `_TIGHT_FLOOR` of a
    square of that, the final least-squares fit uses only those close to it: within
    `_TIGHT_SPREAD` times their median distance or `_TIGHT_FLOOR`, and at least the closest
    `_TIGHT_SHARE` of them. A noisy grid (hatched squares, a board enlarged from a low
    resolution) is fitted on all its kept corners, which average out."""
    for place in (_fit_affine, _median_affine):
        residual = _off_grid(place(columns, rows, points), columns, rows, points, square)
        keep = residual <= settings.max_residual
        if keep.sum() >= settings.min_corners:
            break
    else:
        return None
    columns, rows, points = columns[keep], rows[keep], points[keep]
    residual = _off_grid(_median_affine(columns, rows, points), columns, rows, points, square)
    spread = float(_share_of_the_way(residual))
    if spread <= _TIGHT_FLOOR:
        limit = max(_TIGHT_SPREAD * spread, _TIGHT_FLOOR, _share_of_the_way(residual, _TIGHT_SHARE))
        close = residual <= limit
        if close.sum() >= settings.min_corners:
            columns, rows, points = columns[close], rows[close], points[close]
    return GridFit(_fit_affine(columns, rows, points), int(keep.sum()), spread)


def _off_grid(
    affine: np.ndarray, columns: np.ndarray, rows: np.ndarray, points: np.ndarray, square: float
) -> np.ndarray:
    """How far each corner lies from where `affine` puts its (column, row), in squares."""
    return np.hypot(*(points - _apply(affine, columns, rows)).T) / square


def _median_affine(columns: np.ndarray, rows: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The grid's affine map from medians: the step to the next column and to the next row
    are the medians over neighbouring corners, the origin the median over all corners, so
    that fewer than half the corners dragged off cannot move it."""
    grid = np.full((INNER, INNER, 2), np.nan)
    grid[rows, columns] = points
    across = (grid[:, 1:] - grid[:, :-1]).reshape(-1, 2)
    down = (grid[1:] - grid[:-1]).reshape(-1, 2)
    across, down = across[~np.isnan(across[:, 0])], down[~np.isnan(down[:, 0])]
    if not len(across) or not len(down):
        return _fit_affine(columns, rows, points)
    step_across, step_down = _share_of_the_way(across), _share_of_the_way(down)
    origin = _share_of_the_way(points - np.outer(columns, step_across) - np.outer(rows, step_down))
    return np.stack([step_across, step_down, origin], axis=1)


def _share_of_the_way(values: np.ndarray, share: float = 0.5) -> np.ndarray:
    """The value `share` of the way through `values` sorted along the first axis (0.5: the
    median, the upper middle one of an even count). One sort: np.median and np.quantile cost
    10-30 times as much on the few dozen corners of a grid."""
    ordered = np.sort(values, axis=0)
    return ordered[round(share * (len(ordered) - 1) + 0.25)]


RECTIFIED_SQUARE = 16  # pixels a square in the board checked by `_edge_contrast`
# Light and dark squares differ by at least this many grey levels (pink in grey: 36).
MIN_CONTRAST = 10.0


def rectify(image: np.ndarray, corners: Sequence[Sequence[float]], size: int) -> np.ndarray:
    """The board inside `corners` (tl, tr, br, bl; pixel edges) warped to `size` x `size`."""
    source = np.asarray(corners, dtype=np.float32) - 0.5  # OpenCV maps pixel centres
    target = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float32) - 0.5
    matrix = cv2.getPerspectiveTransform(source, target)
    return cv2.warpPerspective(
        image, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
    )


def board_pixels(image: Image.Image, board: FoundBoard, size: int) -> np.ndarray:
    """The board's squares as a `size` x `size` x 3 uint8 RGB array, ready for a reader.

    A board standing straight is cut and resampled as `reader.images.crop_board` does for
    training; a turned one (a scan) is first reduced near the target scale, then warped."""
    from chessvlm.reader.images import crop_board

    width, height = image.size
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = board.corners
    turn = max(abs(y1 - y0), abs(y2 - y3), abs(x3 - x0), abs(x2 - x1))
    if turn < 0.25:
        left, top, right, bottom = board.box
        return crop_board(image, (left / width, top / height, right / width, bottom / height), size)
    margin = board.square_size
    left, top, right, bottom = board.box
    region = (
        max(0, math.floor(left - margin)),
        max(0, math.floor(top - margin)),
        min(width, math.ceil(right + margin)),
        min(height, math.ceil(bottom + margin)),
    )
    scale = min(1.0, 2.0 * size / (8 * board.square_size))
    part = image.crop(region)
    part = part.resize(
        (max(1, round(part.width * scale)), max(1, round(part.height * scale))),
        Image.Resampling.BILINEAR,
        reducing_gap=2.0,
    )
    corners = [((x - region[0]) * scale, (y - region[1]) * scale) for x, y in board.corners]
    return rectify(np.asarray(part), corners, size)


def _edge_contrast(gray: np.ndarray, affine: np.ndarray, seen: np.ndarray) -> float | None:
    """How clearly the board's outer ring of squares alternates light and dark as the inner
    corners say: the ring's mean contrast in grey levels. None when the pattern goes on past
    the board (a draughts board, a larger checkered pattern), or when a side of the ring
    does not belong to the board (`_side_belongs`: a smaller checkered pattern, or a grid
    of corners placed one square off). `seen` (7 x 7) marks the inner corners found.

    Each square's shade is the median of small patches at its four corners, which pieces
    rarely cover; pieces, highlights and coordinates can still hide one side's alternation,
    which is why the corners along it, and how much its squares vary, count too."""
    outline = _apply(affine, np.array([-2, 8, 8, -2]), np.array([-2, -2, 8, 8]))
    board = cv2.blur(rectify(gray, outline, 10 * RECTIFIED_SQUARE).astype(np.float32), (5, 5))
    near, far = 4, RECTIFIED_SQUARE - 5
    offsets = np.array([near, far])
    starts = np.arange(10) * RECTIFIED_SQUARE
    ys = (starts[:, None] + offsets[None, :]).ravel()
    patches = board[np.ix_(ys, ys)].reshape(10, 2, 10, 2).transpose(0, 2, 1, 3).reshape(10, 10, 4)
    shades = np.median(patches, axis=2)
    parity = np.where(np.add.outer(np.arange(10), np.arange(10)) % 2 == 0, 1.0, -1.0)
    signed = shades * parity
    overall = signed[1:-1, 1:-1].mean() * 2
    # Pieces on many squares of both colours pull the mean towards nothing (a crowded
    # hatched diagram: 10 grey levels by the mean, 43 between its bare squares); the bare
    # squares keep the board's contrast where they agree on which colour is lighter.
    bare = _bare_contrast(shades[1:-1, 1:-1])
    contrast = bare if bare * overall > 0 and abs(bare) > abs(overall) else overall
    if abs(contrast) < MIN_CONTRAST:
        return None
    signed *= np.sign(overall)
    inside = (signed[1, 1:-1], signed[-2, 1:-1], signed[1:-1, 1], signed[1:-1, -2])

    def shades_along(side: int) -> tuple[np.ndarray, np.ndarray]:
        """The shades of a side's ring of squares and of the squares just outside it."""
        ring_index, beyond_index = ((1, 0), (-2, -1), (1, 0), (-2, -1))[side]
        if side < 2:
            return shades[ring_index, 1:-1], shades[beyond_index, 1:-1]
        return shades[1:-1, ring_index], shades[1:-1, beyond_index]

    outside = (signed[0, 1:-1], signed[-1, 1:-1], signed[1:-1, 0], signed[1:-1, -1])
    corners_along = (seen[0].sum(), seen[-1].sum(), seen[:, 0].sum(), seen[:, -1].sum())
    ring = [line.mean() * 2 for line in inside]
    # The median: a name or a clock beside the board alternates here and there, another
    # checkered pattern all along, in step with the board's squares or, where the image
    # goes on past the side, against them (a grid of corners placed one square off a
    # hatched board). Past the image's edge the warp repeats the ring, which is against.
    # A pattern going on also varies about as much as the board's squares do; a line of
    # text beside a crowded board, whose mean contrast is as low as the text's steps, does
    # not.
    limit = 0.6 * abs(overall)
    for side, (line, in_image) in enumerate(
        zip(outside, _sides_in_image(affine, gray.shape), strict=True)
    ):
        step = float(np.median(line[1:] + line[:-1]))
        varies = np.std(shades_along(side)[1]) >= 0.25 * abs(contrast)
        if varies and (step > limit or (in_image and -step > limit)):
            return None
    for side in range(4):
        if not _side_belongs(ring[side], corners_along[side], shades_along(side), overall):
            return None
    return float(np.mean(ring))


# Bare squares of one colour share their shade within this many grey levels, and a colour
# has a bare shade when at least this share of its 32 squares share it.
_BARE_SPREAD = 4.0
_BARE_SHARE = 0.25
# The squares of an 8 x 8 board whose row and column have an even sum.
_EVEN_SQUARES = np.add.outer(np.arange(8), np.arange(8)) % 2 == 0


def _bare_contrast(shades: np.ndarray) -> float:
    """The shade of a board's bare squares of one colour (those whose row and column have
    an even sum) minus that of the other, from its 8 x 8 square shades; 0 when a colour
    has no shade that a quarter of its squares share. A colour's bare shade is the one most
    of its squares lie near: pieces make every other shade, each its own."""
    bare = [_commonest_shade(shades[colour]) for colour in (_EVEN_SQUARES, ~_EVEN_SQUARES)]
    return 0.0 if None in bare else bare[0] - bare[1]


def _commonest_shade(values: np.ndarray) -> float | None:
    near = np.abs(values[:, None] - values[None, :]) <= _BARE_SPREAD
    counts = near.sum(axis=1)
    if counts.max() < _BARE_SHARE * len(values):
        return None
    return float(np.median(values[near[counts.argmax()]]))


def _sides_in_image(affine: np.ndarray, shape: tuple[int, ...]) -> list[bool]:
    """Whether the image holds the row of squares just past each side of the board (top,
    bottom, left, right), given the inner-corner grid's `affine`."""
    height, width = shape[:2]
    # (column, row) of the two far corners of each side's row of squares beyond the board.
    far_corners = np.array(
        [[(-1, -2), (7, -2)], [(-1, 8), (7, 8)], [(-2, -1), (-2, 7)], [(8, -1), (8, 7)]], float
    )
    points = _apply(affine, far_corners[..., 0].ravel(), far_corners[..., 1].ravel())
    inside = (points >= -0.5) & (points <= (width + 0.5, height + 0.5))
    return inside.reshape(4, 2, 2).all(axis=(1, 2)).tolist()


def _side_belongs(
    contrast: float,
    corners: int,
    shades: tuple[np.ndarray, np.ndarray],
    overall: float,
) -> bool:
    """Whether one side's ring of squares is part of the board: its squares alternate, or
    X-corners were seen along it, or (pieces hiding both) its squares vary far more than
    the plain margin, frame or page just outside it, as a row of pieces does."""
    if contrast >= 0.25 * abs(overall) or corners > INNER // 2:
        return True
    ring, beyond = (float(np.std(line)) for line in shades)
    return ring >= 0.25 * abs(overall) and ring >= 2 * beyond


def _fit_affine(columns: np.ndarray, rows: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Least-squares 2 x 3 map from (column, row, 1) to image (x, y), by the normal
    equations: the 24 or more corners of a grid span at least four rows and columns, so they
    are never singular, and solving them costs two thirds of `lstsq` here."""
    design = np.stack([columns, rows, np.ones_like(columns)], axis=1).astype(np.float64)
    return np.linalg.solve(design.T @ design, design.T @ points.astype(np.float64)).T


def _apply(affine: np.ndarray, columns: np.ndarray, rows: np.ndarray) -> np.ndarray:
    design = np.stack([columns, rows, np.ones_like(columns)], axis=1).astype(np.float64)
    return design @ affine.T


def _unique(boards: list[FoundBoard]) -> list[FoundBoard]:
    """One board per place: the same board found at two pyramid levels is kept once (the
    one with more corners seen)."""
    kept: list[FoundBoard] = []
    for board in sorted(boards, key=lambda b: -b.score):
        if all(box_iou(board.box, other.box) < 0.5 for other in kept):
            kept.append(board)
    return kept


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (left, top, right, bottom)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reading_order(boards: list[FoundBoard]) -> list[FoundBoard]:
    """Boards as a reader meets them: rows top to bottom (boards whose vertical extents
    overlap by half share a row), left to right within a row."""
    rows: list[list[FoundBoard]] = []
    for board in sorted(boards, key=lambda b: b.box[1]):
        top, bottom = board.box[1], board.box[3]
        for row in rows:
            row_top = min(b.box[1] for b in row)
            row_bottom = max(b.box[3] for b in row)
            overlap = min(bottom, row_bottom) - max(top, row_top)
            if overlap > 0.5 * min(bottom - top, row_bottom - row_top):
                row.append(board)
                break
        else:
            rows.append([board])
    return [board for row in rows for board in sorted(row, key=lambda b: b.box[0])]
