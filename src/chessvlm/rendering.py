"""Board images: board themes and looks, named styles, and two renderers.

`render_board` is the fast path: each piece set's pieces are rasterised once per square size
(cached) and pasted onto a cached empty board with PIL. `render_board_svg` is the reference:
python-chess's `chess.svg.board` rasterised by cairosvg, with the same colours, coordinates
and piece images, so the two paths can be compared pixel by pixel (plain looks only).

Geometry: the 8x8 squares fill `board_box(params)` (a `size`-pixel square); with the default
look that is the whole image. Margins, a frame and coordinates outside the board make the
image larger (and not always square). Square `s` covers the box from `square_origin`: square
boundaries sit at round(i * size / 8), so a side that is a multiple of 8 gives whole
`size // 8` squares. Coordinates are drawn inside the corner of the edge squares (as lichess
does) or, with `coordinate_place="outside"`, in a band left of and below the board.

docs/looks.md describes every look and its render speed; docs/piece_sets.md lists each piece
set's source and licence (the art itself is in `chessvlm.pieces`).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import random
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice, product
from pathlib import Path

import chess
import chess.svg
import numpy as np
from PIL import Image

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.io import atomic_write_bytes
from chessvlm.pieces import (
    FETCH_HINT,
    PIECE_SETS,
    PIECE_SYMBOLS,
    PieceSet,
    available_piece_sets,
    check_piece_set,
    piece_bitmap,
    piece_images,
    rasterize_svg,
)

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
# chess.svg draws each square as a 45x45 box of its viewBox; the piece SVGs it uses are 45x45.
SVG_SQUARE = chess.svg.SQUARE_SIZE

# --------------------------------------------------------------------------- themes


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    value = int(hex_colour.lstrip("#"), 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


@dataclasses.dataclass(frozen=True)
class Theme:
    """Board colours: light and dark squares, and the last-move tint laid over a square."""

    light: str
    dark: str
    highlight: str = "#9bc700"  # lichess's last-move green
    highlight_opacity: float = 0.41

    def square_colour(self, light: bool, highlighted: bool = False) -> str:
        """The colour of a light or dark square, tinted when it is part of the last move."""
        base = _rgb(self.light if light else self.dark)
        if not highlighted:
            return _hex(base)
        tint, alpha = _rgb(self.highlight), self.highlight_opacity
        return _hex(
            tuple(round(b * (1 - alpha) + t * alpha) for b, t in zip(base, tint, strict=True))
        )

    def coordinate_colour(self, light: bool) -> str:
        """Coordinates on a square take the other square colour, as lichess draws them."""
        return self.dark if light else self.light

    def svg_colours(self) -> dict[str, str]:
        """The `colors` argument of `chess.svg.board` for this theme."""
        return {
            "square light": self.square_colour(True),
            "square dark": self.square_colour(False),
            "square light lastmove": self.square_colour(True, highlighted=True),
            "square dark lastmove": self.square_colour(False, highlighted=True),
        }


_CHESS_COM_YELLOW = "#ffff33"

THEMES: dict[str, Theme] = {
    "brown": Theme("#f0d9b5", "#b58863"),  # lichess default
    "wood": Theme("#ffce9e", "#d18b47"),  # python-chess default
    "green": Theme("#eeeed2", "#769656", _CHESS_COM_YELLOW, 0.5),  # chess.com default
    "blue": Theme("#dee3e6", "#8ca2ad"),  # lichess blue
    "slate": Theme("#c3c6be", "#727fa2", _CHESS_COM_YELLOW, 0.5),  # USCF-like
    "purple": Theme("#f5f0ff", "#967bb6"),
    "pink": Theme("#ffffff", "#ffcad8"),
    "olive": Theme("#ececec", "#c1c18e"),
    "grey": Theme("#e0e0e0", "#a0a0a0", _CHESS_COM_YELLOW, 0.5),  # printed-diagram look
}


# --------------------------------------------------------------------------- looks

FRAMES = ("none", "line", "thick", "bevel", "wood")
# Frame width as a fraction of the board side (at least 1 px).
_FRAME_WIDTH = {"none": 0.0, "line": 0.005, "thick": 0.03, "bevel": 0.035, "wood": 0.055}
BACKGROUNDS = ("plain", "page", "window")
# Margin colours: white, paper, light grey, lichess dark, chess.com dark, mid grey.
BACKGROUND_COLOURS = ("#ffffff", "#f7f3e8", "#eeeeee", "#262421", "#312e2b", "#8a8a8a")
COORDINATE_PLACES = ("inside", "outside")
COORDINATE_FONTS = ("chess", "sans", "serif", "mono", "sans-bold")
_FONT_FILES = {
    "sans": "DejaVuSans.ttf",
    "serif": "DejaVuSerif.ttf",
    "mono": "DejaVuSansMono.ttf",
    "sans-bold": "DejaVuSans-Bold.ttf",
}
TEXTURES = ("none", "wood", "marble", "hatch")
UPSCALE_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# lichess's brush colours; drawn at 80% opacity, as lichess does.
ARROW_COLOURS = {
    "green": (21, 120, 27),
    "red": (136, 32, 32),
    "blue": (0, 48, 136),
    "yellow": (230, 143, 0),
}
_ARROW_OPACITY = 0.8

# The board looks the leave-designs-out styles keep out of training (`designs-seen` never
# draws them; `designs-held-out` draws them often). One or two values of each kind of look.
HELD_OUT_LOOKS: dict[str, tuple[str, ...]] = {
    "theme": ("purple", "olive"),
    "texture": ("marble",),
    "coordinate_font": ("serif",),
    "frame": ("bevel",),
    "arrow_colour": ("blue",),
    "background": ("window",),
    "upscale": ("lanczos",),
}


# --------------------------------------------------------------------------- parameters


def _check_name(name: str, known, what: str) -> str:
    if name not in known:
        raise ChessVLMError(f"unknown {what} {name!r}; choose from {', '.join(sorted(known))}")
    return name


def _check_size(size: int) -> int:
    # Any whole number of pixels: square boundaries fall at round(i * size / 8).
    if not isinstance(size, int) or not 64 <= size <= 2048:
        raise ChessVLMError(f"board size {size!r} must be a whole number between 64 and 2048")
    return size


@dataclasses.dataclass(frozen=True)
class RenderParams:
    """Everything that decides how one board image looks.

    `flipped` means black is at the bottom (the caller records it in the label). `size` is the
    side of the 8x8 squares in pixels (`board_box`); margins, a frame and outside coordinates
    add to the image. `coordinates` draws rank and file labels, inside the edge squares or in
    a band outside the board (`coordinate_place`), in `coordinate_font` ("chess" is
    python-chess's own glyphs, the others DejaVu fonts). `highlight_move` tints the squares
    of the `last_move` passed to the renderer, `show_check` puts a red glow under a king in
    check, `selected` marks one piece of the side to move as clicked. `arrows` are
    (from square, to square, colour) and `circles` (square, colour), drawn over the pieces.
    `texture` paints the squares (wood, marble, or hatched dark squares), `grayscale` prints
    in grey. `lowres` > 0 draws the board with `lowres`-pixel squares and enlarges it to
    `size` with the `upscale` filter. `margin` is (left, top, right, bottom) pixels of
    `background` ("plain" in `background_colour`, a page of text, or an application window).
    `jpeg_quality` None means PNG. The defaults are the plain look.
    """

    piece_set: str = "cburnett"
    theme: str = "brown"
    size: int = 224
    flipped: bool = False
    coordinates: bool = False
    highlight_move: bool = False
    jpeg_quality: int | None = None
    coordinate_place: str = "inside"
    coordinate_font: str = "chess"
    frame: str = "none"
    margin: tuple[int, int, int, int] = (0, 0, 0, 0)
    background: str = "plain"
    background_colour: str = "#ffffff"
    show_check: bool = False
    selected: bool = False
    arrows: tuple[tuple[int, int, str], ...] = ()
    circles: tuple[tuple[int, str], ...] = ()
    texture: str = "none"
    grayscale: bool = False
    lowres: int = 0
    upscale: str = "bicubic"

    def __post_init__(self) -> None:
        check_piece_set(self.piece_set)
        _check_name(self.theme, THEMES, "board theme")
        _check_size(self.size)
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ChessVLMError(f"JPEG quality {self.jpeg_quality} must be between 1 and 100")
        _check_name(self.coordinate_place, COORDINATE_PLACES, "coordinate place")
        _check_name(self.coordinate_font, COORDINATE_FONTS, "coordinate font")
        _check_name(self.frame, FRAMES, "frame")
        _check_name(self.background, BACKGROUNDS, "background")
        _rgb(self.background_colour)
        _check_name(self.texture, TEXTURES, "texture")
        _check_name(self.upscale, UPSCALE_FILTERS, "upscale filter")
        if len(self.margin) != 4 or any(not 0 <= m <= 4096 for m in self.margin):
            raise ChessVLMError(f"margin {self.margin!r} must be 4 pixel counts (l, t, r, b)")
        if self.lowres and not 4 <= self.lowres <= self.size // 8:
            raise ChessVLMError(f"lowres {self.lowres} must be 0 or 4..size/8 pixels a square")
        for *squares, colour in (*self.arrows, *self.circles):
            _check_name(colour, ARROW_COLOURS, "arrow colour")
            if not all(0 <= s < 64 for s in squares):
                raise ChessVLMError(f"arrow or circle squares {squares} must be 0..63")

    @property
    def coordinate_mode(self) -> str:
        """The record's "coordinates" field: "none", "inside" or "outside"."""
        return self.coordinate_place if self.coordinates else "none"

    @property
    def name(self) -> str:
        """A short label for the dataset's "style" field naming every look drawn, e.g.
        `merida/green/224/coords/flip` or `alpha/wood/301/coords-outside-serif/frame-wood`."""
        parts = [self.piece_set, self.theme, str(self.size)]
        if self.coordinates:
            label = "coords"
            if self.coordinate_place != "inside":
                label += f"-{self.coordinate_place}"
            if self.coordinate_font != "chess":
                label += f"-{self.coordinate_font}"
            parts.append(label)
        if self.highlight_move:
            parts.append("lastmove")
        if self.show_check:
            parts.append("check")
        if self.selected:
            parts.append("selected")
        if self.arrows:
            parts.append("arrows-" + "+".join(sorted({c for *_, c in self.arrows})))
        if self.circles:
            parts.append("circles-" + "+".join(sorted({c for _, c in self.circles})))
        if self.texture != "none":
            parts.append(f"tex-{self.texture}")
        if self.frame != "none":
            parts.append(f"frame-{self.frame}")
        if any(self.margin):
            parts.append(f"margin-{self.background}")
        if self.lowres:
            parts.append(f"lowres{self.lowres}-{self.upscale}")
        if self.grayscale:
            parts.append("gray")
        if self.flipped:
            parts.append("flip")
        if self.jpeg_quality is not None:
            parts.append(f"jpeg{self.jpeg_quality}")
        return "/".join(parts)


def is_held_out(piece_set: str, theme: str, size: int) -> bool:
    """Whether a (piece set, theme, size) combination is one of the held-out fifth.

    Fixed by a checksum of the names, so the split never changes between runs or machines;
    every piece set, theme and size still appears in the other four fifths.
    """
    return zlib.crc32(f"{piece_set}/{theme}/{size}".encode()) % 5 == 0


# About 1 design in 4.5 is held out, within each kind of design (standard, 3d, low-res, ...)
# so that every kind with two or more designs has some held out.
_HELD_OUT_DESIGN_SHARE = 0.22
# Which designs a style draws (`Style.designs`): the leave-designs-out pair splits all
# designs into seen and held out; the inner pair splits the seen ones again, into
# `inner-seen` and `inner-held-out`, for validating on unseen designs without the test's.
DESIGN_SPLITS = ("all", "seen", "held-out", "inner-seen", "inner-held-out")
_INNER_SALT = "inner/"


def _designs_by_kind() -> dict[str, list[str]]:
    """Every known set's design (fetched or not, so no split depends on what is installed),
    grouped by kind in the order the sets are listed. A design counted under two kinds (sets
    of one design share it but for low-res copies) is in both."""
    kinds: dict[str, dict[str, None]] = {}
    for source in PIECE_SETS.values():
        kinds.setdefault(source.kind, {}).setdefault(source.design)
    return {kind: list(designs) for kind, designs in kinds.items()}


def _checksum_share(kinds: dict[str, list[str]], salt: str) -> frozenset[str]:
    """Within each kind of two or more designs, the first 22% (at least one) ordered by a
    checksum of `salt` and the design's name; a design is in the share if either of its
    kinds puts it there."""
    share = set()
    for designs in kinds.values():
        if len(designs) < 2:
            continue
        ordered = sorted(designs, key=lambda design: zlib.crc32(f"{salt}{design}".encode()))
        share.update(ordered[: max(1, round(len(designs) * _HELD_OUT_DESIGN_SHARE))])
    return frozenset(share)


@functools.lru_cache(maxsize=1)
def held_out_designs() -> frozenset[str]:
    """The piece designs (`PieceSet.design`) the leave-designs-out styles keep out of training.

    Fixed: within each kind, designs are ordered by a checksum of their name and the first
    22% (at least one where a kind has two or more designs) are held out. Computed over every
    known set, fetched or not, so the split does not depend on what is installed."""
    return _checksum_share(_designs_by_kind(), "")


@functools.lru_cache(maxsize=1)
def inner_held_out_designs() -> frozenset[str]:
    """Seen designs (not in `held_out_designs`) that the inner leave-designs-out pair keeps
    out of its training: chosen as `held_out_designs` chooses, with another checksum, among
    each kind's seen designs. Tuning on them leaves the held-out designs for testing alone."""
    held = held_out_designs()
    kinds = {
        kind: [design for design in designs if design not in held]
        for kind, designs in _designs_by_kind().items()
    }
    return _checksum_share(kinds, _INNER_SALT)


def draws_design(designs: str, design: str) -> bool:
    """Whether a style whose `designs` is one of `DESIGN_SPLITS` draws `design`."""
    if designs == "all":
        return True
    if design in held_out_designs():
        return designs == "held-out"
    if designs in ("seen", "held-out"):
        return designs == "seen"
    return (design in inner_held_out_designs()) == (designs == "inner-held-out")


_COMBINATIONS = ("all", "seen", "held-out")


@functools.lru_cache(maxsize=64)
def _resolve_sets(piece_sets: tuple[str, ...] | None, designs: str) -> tuple[str, ...]:
    """The sets a style draws: its own list, or every set whose art is present (cached for the
    process), kept to the designs `designs` says (`draws_design`)."""
    names = available_piece_sets() if piece_sets is None else piece_sets
    names = _of_designs(names, designs)
    if not names:
        raise ChessVLMError(
            f"no piece set to draw (designs={designs!r}); fetch the art with `{FETCH_HINT}`"
        )
    return names


def _of_designs(names: tuple[str, ...], designs: str) -> tuple[str, ...]:
    return tuple(name for name in names if draws_design(designs, PIECE_SETS[name].design))


@dataclasses.dataclass(frozen=True)
class Style:
    """A distribution over `RenderParams`, sampled by `sample_render_params`.

    `piece_sets` None means every set whose art is present when sampling
    (`chessvlm.pieces.available_piece_sets`); a named set whose art is missing is never
    dropped: drawing it raises pieces.py's error saying how to fetch it. `designs` keeps only
    the seen or only the held-out designs (`held_out_designs`), or splits the seen ones again
    (`inner-seen`, `inner-held-out`: `inner_held_out_designs`; `DESIGN_SPLITS`); `looks`
    keeps the board looks in `HELD_OUT_LOOKS` likewise ("seen": never drawn; "held-out":
    drawn in most samples).

    `combinations` picks which (piece set, theme, size) combinations are drawn: `all`, only
    those `is_held_out` rejects (`seen`), or only the held-out ones (`held-out`). Training on
    a `seen` style and testing on its `held-out` twin measures looks whose parts were all
    trained on, but never together. For other splits, derive styles with
    `dataclasses.replace(STYLES["mixed"], piece_sets=(...), themes=(...), sizes=(...))`.

    Rates are per board. `coordinates_rate` is for boards with white below;
    `coordinates_when_flipped` the rate for flipped boards (None: the same rate; True: all).
    `odd_size_rate` moves the side off its multiple of 8 by 1-7 pixels.
    """

    piece_sets: tuple[str, ...] | None
    themes: tuple[str, ...]
    sizes: tuple[int, ...]
    flip_rate: float = 0.0
    coordinates_rate: float = 0.0
    # A flipped board without coordinates and without pawns looks exactly like the unflipped
    # board of the mirrored position, so no reader can tell them apart. Until 2026-12 every
    # flipped board carried coordinates for that reason; but boards in the wild are often
    # shown from black's side with no coordinates (SPEC: "black at the bottom with or without
    # coordinates"), and a reader that only ever saw flipped boards with coordinates takes
    # every board without them for white-below. The mixed styles now show most flipped boards
    # without coordinates, so orientation is learnt from the pawns and the pieces; where a
    # board shows neither, the reader must say it cannot tell (SPEC), not guess.
    coordinates_when_flipped: float | None = None
    highlight_rate: float = 0.0
    jpeg_rate: float = 0.0
    jpeg_qualities: tuple[int, int] = (70, 95)
    combinations: str = "all"
    designs: str = "all"
    looks: str = "all"
    odd_size_rate: float = 0.0
    outside_coordinates_rate: float = 0.0  # of the boards with coordinates
    coordinate_fonts: tuple[str, ...] = ("chess",)
    margin_rate: float = 0.0
    margin_fraction: tuple[float, float] = (0.02, 0.3)
    backgrounds: tuple[str, ...] = BACKGROUNDS
    frame_rate: float = 0.0
    frames: tuple[str, ...] = FRAMES[1:]
    check_rate: float = 0.0
    selected_rate: float = 0.0
    arrow_rate: float = 0.0
    circle_rate: float = 0.0
    arrow_colours: tuple[str, ...] = tuple(ARROW_COLOURS)
    texture_rate: float = 0.0
    textures: tuple[str, ...] = ("wood", "marble")
    hatch_rate: float = 0.0
    grayscale_rate: float = 0.0
    lowres_rate: float = 0.0
    lowres_squares: tuple[int, int] = (12, 24)
    upscale_filters: tuple[str, ...] = tuple(UPSCALE_FILTERS)

    def __post_init__(self) -> None:
        for name in self.piece_sets or ():
            check_piece_set(name)
        for name in self.themes:
            _check_name(name, THEMES, "board theme")
        for size in self.sizes:
            _check_size(size)
        if self.combinations not in _COMBINATIONS:
            raise ChessVLMError(f"combinations must be one of {', '.join(_COMBINATIONS)}")
        _check_name(self.designs, DESIGN_SPLITS, "designs")
        _check_name(self.looks, _COMBINATIONS, "looks")
        for option, known in (
            (self.coordinate_fonts, COORDINATE_FONTS),
            (self.backgrounds, BACKGROUNDS),
            (self.frames, FRAMES),
            (self.arrow_colours, ARROW_COLOURS),
            (self.textures, TEXTURES),
            (self.upscale_filters, UPSCALE_FILTERS),
        ):
            for value in option:
                _check_name(value, known, "look")
        sets = tuple(PIECE_SETS) if self.piece_sets is None else self.piece_sets
        sets = _of_designs(sets, self.designs)
        themes = self._options("theme", self.themes)
        combinations = product(sets, themes, self.sizes)
        if not any(self._allows(*combination) for combination in combinations):
            raise ChessVLMError(
                "a style needs at least one (piece set, theme, size) combination to draw"
                f" (combinations={self.combinations!r})"
            )

    def _allows(self, piece_set: str, theme: str, size: int) -> bool:
        if self.combinations == "all":
            return True
        return is_held_out(piece_set, theme, size) == (self.combinations == "held-out")

    def _options(self, aspect: str, options: tuple[str, ...]) -> tuple[str, ...]:
        if self.looks == "seen":
            return tuple(o for o in options if o not in HELD_OUT_LOOKS.get(aspect, ()))
        return options

    def _pick(self, rng: random.Random, aspect: str, options: tuple[str, ...]) -> str:
        """One value of a look; "held-out" looks prefer the held-out values (60%)."""
        held = [o for o in options if o in HELD_OUT_LOOKS.get(aspect, ())]
        if self.looks == "held-out" and held and rng.random() < 0.6:
            return rng.choice(held)
        return rng.choice(self._options(aspect, options))

    @property
    def drawable_piece_sets(self) -> tuple[str, ...]:
        """The sets this style draws now (its own list, or the available ones)."""
        return _resolve_sets(self.piece_sets, self.designs)

    def sample(self, rng: random.Random) -> RenderParams:
        """Draw one concrete set of parameters; the same `rng` state gives the same draw."""
        piece_sets = self.drawable_piece_sets
        while True:  # __post_init__ made sure some combination is allowed
            piece_set = rng.choice(piece_sets)
            theme = self._pick(rng, "theme", self.themes)
            size = rng.choice(self.sizes)
            if self._allows(piece_set, theme, size):
                break
        flipped = rng.random() < self.flip_rate
        rate = self.coordinates_rate
        if flipped and self.coordinates_when_flipped is not None:
            rate = float(self.coordinates_when_flipped)
        coordinates = rng.random() < rate
        highlight = rng.random() < self.highlight_rate
        jpeg = rng.random() < self.jpeg_rate
        # Drawn even for PNG, so the flags above never shift the draws that follow.
        quality = rng.randint(*self.jpeg_qualities)
        params = RenderParams(
            piece_set, theme, size, flipped, coordinates, highlight, quality if jpeg else None
        )
        if not any(getattr(self, rate) for rate in _LOOK_RATES):
            return params  # no look drawn: the rng is used exactly as before looks existed
        looks = self._sample_looks(rng, size, coordinates)
        return dataclasses.replace(params, **looks) if looks else params

    def _sample_looks(self, rng: random.Random, size: int, coordinates: bool) -> dict:
        looks: dict = {}
        if rng.random() < self.odd_size_rate:
            size = looks["size"] = size + rng.randint(1, 7)
        if coordinates:
            if rng.random() < self.outside_coordinates_rate:
                looks["coordinate_place"] = "outside"
            font = self._pick(rng, "coordinate_font", self.coordinate_fonts)
            if font != "chess":
                looks["coordinate_font"] = font
        if rng.random() < self.margin_rate:
            low, high = self.margin_fraction
            looks["margin"] = tuple(round(size * rng.uniform(low, high)) for _ in range(4))
            looks["background"] = self._pick(rng, "background", self.backgrounds)
            looks["background_colour"] = rng.choice(BACKGROUND_COLOURS)
        if rng.random() < self.frame_rate:
            looks["frame"] = self._pick(rng, "frame", self.frames)
        if rng.random() < self.check_rate:
            looks["show_check"] = True
        if rng.random() < self.selected_rate:
            looks["selected"] = True
        if rng.random() < self.arrow_rate:
            looks["arrows"] = tuple(
                (
                    a,
                    (a + rng.randrange(1, 64)) % 64,
                    self._pick(rng, "arrow_colour", self.arrow_colours),
                )
                for a in (rng.randrange(64) for _ in range(rng.randint(1, 3)))
            )
        if rng.random() < self.circle_rate:
            looks["circles"] = tuple(
                (rng.randrange(64), self._pick(rng, "arrow_colour", self.arrow_colours))
                for _ in range(rng.randint(1, 3))
            )
        texture = rng.random()
        if texture < self.hatch_rate:
            looks["texture"] = "hatch"
        elif texture < self.hatch_rate + self.texture_rate:
            looks["texture"] = self._pick(rng, "texture", self.textures)
        if rng.random() < self.grayscale_rate:
            looks["grayscale"] = True
        if rng.random() < self.lowres_rate:
            looks["lowres"] = min(rng.randint(*self.lowres_squares), size // 8)
            looks["upscale"] = self._pick(rng, "upscale", self.upscale_filters)
        return looks


_LOOK_RATES = tuple(
    f.name
    for f in dataclasses.fields(Style)
    if f.name.endswith("_rate")
    and f.name not in ("flip_rate", "coordinates_rate", "highlight_rate", "jpeg_rate")
)


_MIXED = Style(
    None,  # every piece set whose art is present
    tuple(THEMES),
    tuple(range(224, 513, 32)),
    flip_rate=0.5,
    coordinates_rate=0.4,
    # As often as on unflipped boards: coordinates say nothing about the orientation, and
    # 60% of flipped boards show none (see `Style.coordinates_when_flipped`).
    coordinates_when_flipped=0.4,
    highlight_rate=0.5,
    jpeg_rate=0.3,
    odd_size_rate=0.25,
    outside_coordinates_rate=0.4,
    coordinate_fonts=COORDINATE_FONTS,
    margin_rate=0.35,
    frame_rate=0.3,
    check_rate=0.3,
    selected_rate=0.15,
    arrow_rate=0.2,
    circle_rate=0.1,
    texture_rate=0.15,
    hatch_rate=0.08,
    grayscale_rate=0.1,
    lowres_rate=0.15,
)
# The held-out side of the leave-designs-out pair: held-out looks in most boards, and every
# look more often than in training.
_DESIGNS_HELD_OUT = dataclasses.replace(
    _MIXED,
    designs="held-out",
    looks="held-out",
    outside_coordinates_rate=0.5,
    margin_rate=0.5,
    frame_rate=0.5,
    arrow_rate=0.35,
    circle_rate=0.2,
    texture_rate=0.3,
    lowres_rate=0.25,
)

STYLES: dict[str, Style] = {
    # The seed's data: 512 px lichess-looking boards, white at the bottom, no coordinates.
    "seed": Style(("cburnett",), ("brown",), (512,)),
    # The default for synthetic data: every available set, theme and look.
    "mixed": _MIXED,
    # Train on the first, test on the second: piece set, theme and size seen, never together.
    "mixed-seen": dataclasses.replace(_MIXED, combinations="seen"),
    "mixed-held-out": dataclasses.replace(_MIXED, combinations="held-out"),
    # Leave designs out: whole piece designs and some looks (HELD_OUT_LOOKS) never trained on.
    "designs-seen": dataclasses.replace(_MIXED, designs="seen", looks="seen"),
    "designs-held-out": _DESIGNS_HELD_OUT,
    # The same split again inside the seen designs, to validate on designs a model never saw
    # without the held-out ones: train on the first, tune on the second. Both keep to the
    # seen looks, since the held-out looks are the test's.
    "designs-inner-seen": dataclasses.replace(_MIXED, designs="inner-seen", looks="seen"),
    "designs-inner-held-out": dataclasses.replace(
        _DESIGNS_HELD_OUT, designs="inner-held-out", looks="seen"
    ),
    # Quick experiments: one look, smallest size.
    "simple": Style(("cburnett",), ("brown",), (224,)),
}


def sample_render_params(style: str | Style, rng: random.Random) -> RenderParams:
    """Sample concrete render parameters from a named style (a `STYLES` key) or a `Style`."""
    if isinstance(style, str):
        style = STYLES[_check_name(style, STYLES, "style")]
    return style.sample(rng)


def style_piece_sets(style: str | Style) -> tuple[str, ...]:
    """The piece sets a style (name or `Style`) draws from right now."""
    if isinstance(style, str):
        style = STYLES[_check_name(style, STYLES, "style")]
    return style.drawable_piece_sets


def record_piece_set(record: dict) -> PieceSet | None:
    """The piece set a rendered record's board was drawn in (the first part of its `style`);
    None for a board not rendered here or of a set not known."""
    style = record.get("style")
    return PIECE_SETS.get(style.split("/")[0]) if isinstance(style, str) else None


# --------------------------------------------------------------------------- geometry


def _edge(index: int, size: int) -> int:
    """Pixel where square column/row `index` (0..8) starts: round(index * size / 8), half up."""
    return (2 * index * size + 8) // 16


def square_origin(square: chess.Square, size: int, flipped: bool) -> tuple[int, int]:
    """Top-left pixel (x, y) of `square` in a `size`-pixel board; flipped = black below.

    Square boundaries fall at round(i * size / 8), so for a multiple of 8 every square is
    `size // 8` pixels; otherwise squares are one pixel larger or smaller here and there.
    The point is relative to the board: add `board_box(params)[:2]` for image pixels."""
    file, rank = chess.square_file(square), chess.square_rank(square)
    column, row = (7 - file, rank) if flipped else (file, 7 - rank)
    return _edge(column, size), _edge(row, size)


def _square_box(square: chess.Square, size: int, flipped: bool) -> tuple[int, int, int, int]:
    file, rank = chess.square_file(square), chess.square_rank(square)
    column, row = (7 - file, rank) if flipped else (file, 7 - rank)
    return _edge(column, size), _edge(row, size), _edge(column + 1, size), _edge(row + 1, size)


def _frame_px(params: RenderParams) -> int:
    if params.frame == "none":
        return 0
    return max(1, round(params.size * _FRAME_WIDTH[params.frame]))


def _band_px(params: RenderParams) -> int:
    """Width of the band that holds outside coordinates (left of and below the board)."""
    if params.coordinate_mode != "outside":
        return 0
    return max(10, round(params.size * 0.055))


def board_box(params: RenderParams) -> tuple[float, float, float, float]:
    """The 8x8 squares' area (x0, y0, x1, y1) in image pixels: without frame or outside
    coordinates. Square (column c, row r) covers x0 + round(c * side / 8) ... (see
    `square_origin`), side = x1 - x0."""
    left, top = params.margin[:2]
    x0 = left + _band_px(params) + _frame_px(params)
    y0 = top + _frame_px(params)
    return float(x0), float(y0), float(x0 + params.size), float(y0 + params.size)


def image_size(params: RenderParams) -> tuple[int, int]:
    """(width, height) of the image `render_board` draws for `params`."""
    left, top, right, bottom = params.margin
    framed = params.size + 2 * _frame_px(params) + _band_px(params)
    return left + framed + right, top + framed + bottom


def _coordinate_labels(square: chess.Square, flipped: bool) -> tuple[str, str]:
    """The rank digit (left column) and file letter (bottom row) drawn on `square`, or ""."""
    file, rank = chess.square_file(square), chess.square_rank(square)
    left_file, bottom_rank = (7, 7) if flipped else (0, 0)
    return (
        chess.RANK_NAMES[rank] if file == left_file else "",
        chess.FILE_NAMES[file] if rank == bottom_rank else "",
    )


def _is_light(square: chess.Square) -> bool:
    return bool(chess.BB_LIGHT_SQUARES & chess.BB_SQUARES[square])


# Glyphs are python-chess's coordinate paths (chess.svg.COORDS), which it places in a margin:
# digits around (6..14, 16..28), letters around (18..27, 2..14) of a 45-unit box. These move
# them into a 45-unit square: digits to the top-left corner, letters to the bottom-right.
_GLYPH_SCALE = 0.75
_RANK_GLYPH = f"translate(-2.31 -10.34) scale({_GLYPH_SCALE})"
_FILE_GLYPH = f"translate(23.05 31.2) scale({_GLYPH_SCALE})"


def _glyph_elements(rank_label: str, file_label: str, colour: str) -> list[ET.Element]:
    """SVG groups drawing a square's coordinate labels in that square's 45-unit box."""
    groups = []
    for label, transform in ((rank_label, _RANK_GLYPH), (file_label, _FILE_GLYPH)):
        if label:
            group = ET.Element(f"{{{SVG_NS}}}g", {"transform": transform, "fill": colour})
            path = ET.fromstring(chess.svg.COORDS[label])
            ET.SubElement(group, f"{{{SVG_NS}}}path", {"d": path.attrib["d"]})
            groups.append(group)
    return groups


@functools.lru_cache(maxsize=256)
def _glyph_mask(rank_label: str, file_label: str, square_px: int) -> Image.Image:
    """Coverage mask (mode L) of a square's coordinate labels at `square_px`."""
    svg = ET.Element(f"{{{SVG_NS}}}svg", {"viewBox": f"0 0 {SVG_SQUARE} {SVG_SQUARE}"})
    svg.extend(_glyph_elements(rank_label, file_label, "#000"))
    return rasterize_svg(ET.tostring(svg), square_px, square_px).getchannel("A")


@functools.lru_cache(maxsize=16)
def _font(name: str, px: int):
    import matplotlib  # only its bundled DejaVu fonts; matplotlib itself is not loaded
    from PIL import ImageFont

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / _FONT_FILES[name]
    return ImageFont.truetype(str(path), max(6, px))


@functools.lru_cache(maxsize=512)
def _label_mask(
    rank_label: str, file_label: str, width: int, height: int, font: str
) -> Image.Image:
    """Coverage mask of a square's inside coordinate labels (`_glyph_mask` for the chess
    glyphs, else text in a DejaVu font: digit top-left, letter bottom-right)."""
    if font == "chess":
        mask = _glyph_mask(rank_label, file_label, min(width, height))
        return mask if mask.size == (width, height) else mask.crop((0, 0, width, height))
    from PIL import ImageDraw

    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    face = _font(font, round(height * 0.26))
    pad = max(1, round(width * 0.05))
    if rank_label:
        draw.text((pad, pad // 2), rank_label, fill=255, font=face, anchor="lt")
    if file_label:
        draw.text((width - pad, height - pad // 2), file_label, fill=255, font=face, anchor="rd")
    return mask


@functools.lru_cache(maxsize=512)
def _outside_label(label: str, px: int, font: str) -> Image.Image:
    """Coverage mask (px x px) of one coordinate label, centred, for the outside band."""
    if font == "chess":
        centre = (10.0, 22.0) if label.isdigit() else (22.5, 8.0)
        view = f"{centre[0] - 9} {centre[1] - 9} 18 18"
        svg = ET.Element(f"{{{SVG_NS}}}svg", {"viewBox": view})
        path = ET.fromstring(chess.svg.COORDS[label])
        ET.SubElement(svg, f"{{{SVG_NS}}}path", {"d": path.attrib["d"], "fill": "#000"})
        return rasterize_svg(ET.tostring(svg), px, px).getchannel("A")
    from PIL import ImageDraw

    mask = Image.new("L", (px, px), 0)
    ImageDraw.Draw(mask).text(
        (px / 2, px / 2), label, fill=255, font=_font(font, round(px * 0.62)), anchor="mm"
    )
    return mask


# --------------------------------------------------------------------------- fast path


def _noise(kind: str, side: int, seed: int = 0) -> np.ndarray:
    """A procedural texture field in [-1, 1] (float32, side x side): the corner of a field
    made once per 128-pixel step of side, so boards of any side share a few fields."""
    return _noise_field(kind, -(-side // 128) * 128, seed)[:side, :side]


@functools.lru_cache(maxsize=16)
def _noise_field(kind: str, side: int, seed: int = 0) -> np.ndarray:
    """A procedural texture field in [-1, 1] (float32, side x side), made once per size.

    Value noise: random grids enlarged bicubically, summed over octaves. Wood is grain along
    one axis bent by the noise; marble is veins from a sine of the diagonal bent by it."""
    rng = np.random.default_rng(zlib.crc32(f"{kind}/{seed}".encode()))

    def octave(cells_x: int, cells_y: int) -> np.ndarray:
        grid = rng.random((cells_y + 3, cells_x + 3), dtype=np.float32)
        big = Image.fromarray(grid, "F").resize((side, side), Image.Resampling.BICUBIC)
        return np.asarray(big, dtype=np.float32) - 0.5

    turbulence = octave(4, 4) + 0.5 * octave(9, 9) + 0.25 * octave(19, 19)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) / side
    if kind == "wood":
        streaks = octave(3, 60)  # fine grain: long along x, narrow along y
        grain = np.sin(2 * np.pi * (ys * 14 + 1.5 * turbulence)) * 0.6 + streaks * 1.2
        return np.clip(grain, -1, 1).astype(np.float32)
    veins = np.abs(np.sin(2 * np.pi * ((xs + ys) * 2.5 + 2.0 * turbulence)))
    return (1 - 2 * veins**0.25 + 0.6 * turbulence).clip(-1, 1).astype(np.float32)


def _square_masks(size: int) -> np.ndarray:
    """Boolean (size, size): True on light squares (same in both orientations)."""
    edges = [_edge(i, size) for i in range(9)]
    index = np.zeros(size, dtype=np.int64)
    for i in range(8):
        index[edges[i] : edges[i + 1]] = i
    return (index[:, None] + index[None, :]) % 2 == 0


# 128 holds every theme at every size of the mixed style (9 x 10 boards, ~40 MB).
@functools.lru_cache(maxsize=128)
def _plain_board(theme: str, size: int) -> Image.Image:
    """Empty squares only. Turning the board round keeps every square's colour where it was
    (a1 and h8 are both dark), so one image serves both orientations."""
    colours = THEMES[theme]
    image = Image.new("RGB", (size, size), _rgb(colours.dark))
    for square in chess.SQUARES:
        if _is_light(square):
            image.paste(_rgb(colours.light), _square_box(square, size, flipped=False))
    return image


# 96 boards: ~40 MB at the mixed style's sizes.
@functools.lru_cache(maxsize=96)
def _textured_board(theme: str, size: int, texture: str) -> Image.Image:
    """Empty squares painted with a texture: wood or marble shading of the theme colours, or
    dark squares hatched with diagonal lines on the light colour (book diagrams)."""
    colours = THEMES[theme]
    light = _square_masks(size)[..., None]
    light_rgb = np.array(_rgb(colours.light), dtype=np.float32)
    dark_rgb = np.array(_rgb(colours.dark), dtype=np.float32)
    if texture == "hatch":
        ys, xs = np.mgrid[0:size, 0:size]
        period = max(3, round(size / 8 / 7))
        line = ((xs + ys) % period < max(1, period // 3))[..., None]
        ink = dark_rgb * 0.55
        pixels = np.where(light, light_rgb, np.where(line, ink, light_rgb))
    else:
        field = _noise(texture, size)
        other = field.T  # light squares show the grain turned, as on a parquet board
        amount = 0.16 if texture == "wood" else 0.12
        shade = np.where(light, other[..., None], field[..., None])
        pixels = np.where(light, light_rgb, dark_rgb) * (1 + amount * shade)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


@functools.lru_cache(maxsize=32)
def _check_glow(width: int, height: int) -> Image.Image:
    """The red radial glow lichess puts under a king in check (RGBA)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot((xs + 0.5) / width - 0.5, (ys + 0.5) / height - 0.5) / 0.5
    alpha = np.clip(1 - r / 0.95, 0, 1) ** 0.8
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., 0] = (255 - 70 * r.clip(0, 1)).astype(np.uint8)
    rgba[..., 3] = (alpha * 255).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


_LABELLED_SQUARES = {
    flipped: tuple(s for s in chess.SQUARES if any(_coordinate_labels(s, flipped)))
    for flipped in (False, True)
}
_SELECTED_TINT = ((20, 85, 30), 0.5)  # lichess's selected-square green


def _tint(image: Image.Image, box: tuple[int, int, int, int], colour, alpha: float) -> None:
    region = image.crop(box)
    image.paste(Image.blend(region, Image.new("RGB", region.size, colour), alpha), box[:2])


def _selected_square(board: chess.BaseBoard) -> chess.Square | None:
    """A piece of the side to move, chosen from the position (the same board, the same one)."""
    colour = board.turn if isinstance(board, chess.Board) else chess.WHITE
    own = [s for s in chess.SQUARES if board.color_at(s) == colour]
    if not own:
        return None
    return own[zlib.crc32(board.board_fen().encode()) % len(own)]


def _draw_marks(image: Image.Image, params: RenderParams, side: int) -> None:
    """Arrows and circles as lichess draws them: over the pieces, 80% opaque. Drawn at twice
    the size and reduced, for smooth edges."""
    from PIL import ImageDraw

    scale = 2
    square = side * scale / 8
    opacity = round(255 * _ARROW_OPACITY)

    def centre(s: chess.Square) -> np.ndarray:
        x, y = square_origin(s, 8 * 1000, params.flipped)
        return np.array([(x / 1000 + 0.5) * square, (y / 1000 + 0.5) * square])

    # Shapes per colour, in twice-size pixels: ("ellipse" | "polygon", points).
    shapes: dict[str, list[tuple[str, list[tuple[float, float]]]]] = {}
    width = max(2, round(square * 0.07))
    for s, colour in params.circles:
        cx, cy = centre(s)
        radius = square * 0.47
        box = [(cx - radius, cy - radius), (cx + radius, cy + radius)]
        shapes.setdefault(colour, []).append(("ellipse", box))
    for start, end, colour in params.arrows:
        a, b = centre(start), centre(end)
        direction = (b - a) / np.linalg.norm(b - a)
        normal = np.array([-direction[1], direction[0]])
        head, half_width, shaft = square * 0.45, square * 0.3, square * 0.08
        tip = b - direction * square * 0.12
        base = tip - direction * head
        corners = (a + normal * shaft, base + normal * shaft, base - normal * shaft)
        shaft_points = [tuple(p) for p in (*corners, a - normal * shaft)]
        head_points = [
            tuple(p) for p in (tip, base + normal * half_width, base - normal * half_width)
        ]
        shapes.setdefault(colour, []).extend((("polygon", shaft_points), ("polygon", head_points)))
    # One coverage mask per colour, drawn at 80% over just the shapes' bounding box (even
    # corner, so it halves onto whole pixels): marks of one colour do not add up.
    for colour, drawn in shapes.items():
        points = np.array([p for _, ps in drawn for p in ps])
        x0, y0 = (np.floor(points.min(axis=0) / 2).astype(int) - 1).clip(0) * 2
        x1, y1 = (np.ceil(points.max(axis=0) / 2).astype(int) + 1).clip(0, side) * 2
        coverage = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
        draw = ImageDraw.Draw(coverage)
        for kind, ps in drawn:
            moved = [(x - x0, y - y0) for x, y in ps]
            if kind == "ellipse":
                draw.ellipse(moved, outline=opacity, width=width)
            else:
                draw.polygon(moved, fill=opacity)
        image.paste(ARROW_COLOURS[colour], (int(x0) // 2, int(y0) // 2), coverage.reduce(scale))


def _draw_board(
    board: chess.BaseBoard, params: RenderParams, side: int, last_move: chess.Move | None
) -> Image.Image:
    """The 8x8 squares with everything on them, `side` pixels square."""
    theme, flipped = THEMES[params.theme], params.flipped
    plain = params.texture == "none"
    if plain:
        image = _plain_board(params.theme, side).copy()
    else:
        image = _textured_board(params.theme, side, params.texture).copy()
    if params.highlight_move and last_move is not None:
        for square in {last_move.from_square, last_move.to_square}:
            box = _square_box(square, side, flipped)
            if plain:
                image.paste(_rgb(theme.square_colour(_is_light(square), highlighted=True)), box)
            else:
                _tint(image, box, _rgb(theme.highlight), theme.highlight_opacity)
    if params.selected and (square := _selected_square(board)) is not None:
        _tint(image, _square_box(square, side, flipped), *_SELECTED_TINT)
    if params.show_check and isinstance(board, chess.Board) and board.is_check():
        king = board.king(board.turn)
        if king is not None:
            x0, y0, x1, y1 = _square_box(king, side, flipped)
            image.paste(_check_glow(x1 - x0, y1 - y0), (x0, y0), _check_glow(x1 - x0, y1 - y0))
    if params.coordinates and params.coordinate_place == "inside":
        for square in _LABELLED_SQUARES[flipped]:
            x0, y0, x1, y1 = box = _square_box(square, side, flipped)
            labels = _coordinate_labels(square, flipped)
            mask = _label_mask(*labels, x1 - x0, y1 - y0, params.coordinate_font)
            colour = theme.coordinate_colour(_is_light(square))
            image.paste(_rgb(colour), box, mask)
    piece_px = side // 8
    for square, piece in board.piece_map().items():
        bitmap = piece_bitmap(params.piece_set, piece.symbol(), piece_px)
        x0, y0, x1, y1 = _square_box(square, side, flipped)
        origin = (x0 + (x1 - x0 - piece_px) // 2, y0 + (y1 - y0 - piece_px) // 2)
        image.paste(bitmap, origin, bitmap)
    if params.arrows or params.circles:
        _draw_marks(image, params, side)
    return image


def _luminance(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _background(params: RenderParams, width: int, height: int) -> Image.Image:
    """The margin: one colour, a page of text, or an application window."""
    from PIL import ImageDraw

    colour = _rgb(params.background_colour)
    if params.background == "window":
        colour = (240, 240, 240) if _luminance(colour) > 128 else (43, 43, 43)
    image = Image.new("RGB", (width, height), colour)
    draw = ImageDraw.Draw(image)
    rng = random.Random(zlib.crc32(f"{params.background}/{width}/{height}".encode()))
    ink = (40, 40, 40) if _luminance(colour) > 128 else (200, 200, 200)
    if params.background == "page":
        line = max(6, params.size // 28)
        for y in range(line, height - line, 2 * line):
            x = rng.randint(0, line)
            while x < width:
                word = rng.randint(line, 5 * line)
                shade = tuple(round(c * 0.75 + i * 0.25) for c, i in zip(colour, ink, strict=True))
                draw.rectangle((x, y, x + word, y + line * 0.6), fill=shade)
                x += word + line // 2 + rng.randint(0, line)
    elif params.background == "window":
        bar = max(12, params.size // 14)
        title = (43, 87, 154) if rng.random() < 0.5 else (60, 63, 65)
        draw.rectangle((0, 0, width, bar), fill=title)
        for i in range(3):
            x = width - (i + 1) * bar
            draw.rectangle((x + bar // 4, bar // 4, x + 3 * bar // 4, 3 * bar // 4), outline=ink)
        panel = tuple(min(255, c + 12) if _luminance(colour) < 128 else c - 18 for c in colour)
        for y in range(2 * bar, height, 2 * bar):
            draw.rectangle((bar // 2, y, bar // 2 + 3 * bar, y + bar), fill=panel)
    return image


def _draw_frame(image: Image.Image, params: RenderParams) -> None:
    """The frame around the board (the band between board_box and the frame's outer edge)."""
    from PIL import ImageDraw

    f = _frame_px(params)
    x0, y0, x1, y1 = (int(v) for v in board_box(params))
    outer = (x0 - f, y0 - f, x1 + f - 1, y1 + f - 1)
    theme = THEMES[params.theme]
    dark = tuple(round(c * 0.45) for c in _rgb(theme.dark))
    draw = ImageDraw.Draw(image)
    if params.frame in ("line", "thick"):
        draw.rectangle(outer, fill=(30, 30, 30) if params.frame == "line" else dark)
    elif params.frame == "bevel":
        base = np.array(_rgb(theme.dark), dtype=np.float32)
        light = tuple(int(v) for v in np.minimum(255, base * 1.35 + 30))
        shadow = tuple(int(v) for v in base * 0.55)
        ox0, oy0, ox1, oy1 = outer
        draw.rectangle(outer, fill=tuple(int(v) for v in base))
        draw.polygon([(ox0, oy0), (ox1, oy0), (x1, y0), (x0, y0), (x0, y1), (ox0, oy1)], fill=light)
        draw.polygon(
            [(ox1, oy1), (ox0, oy1), (x0, y1), (x1, y1), (x1, y0), (ox1, oy0)], fill=shadow
        )
    elif params.frame == "wood":
        image.paste(_wood_frame(outer[2] - outer[0] + 1, f), outer[:2])


@functools.lru_cache(maxsize=32)
def _wood_frame(side: int, width: int) -> Image.Image:
    """A `side`-pixel square of wood with a dark edge (the board is pasted over its middle)."""
    from PIL import ImageDraw

    grain = _noise("wood", side, 1)
    rgb = np.array((120, 72, 38), dtype=np.float32) * (1 + 0.25 * grain[..., None])
    wood = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    ImageDraw.Draw(wood).rectangle(
        (0, 0, side - 1, side - 1), outline=(60, 34, 16), width=max(1, width // 6)
    )
    return wood


def _draw_outside_coordinates(image: Image.Image, params: RenderParams) -> None:
    band, f = _band_px(params), _frame_px(params)
    x0, y0, _, y1 = (int(v) for v in board_box(params))
    colour = _rgb(params.background_colour) if any(params.margin) else (255, 255, 255)
    if params.background == "window":
        colour = (240, 240, 240) if _luminance(colour) > 128 else (43, 43, 43)
    ink = (30, 30, 30) if _luminance(colour) > 128 else (220, 220, 220)
    image.paste(colour, (x0 - f - band, y0 - f, x0 - f, y1 + f + band))
    image.paste(colour, (x0 - f - band, y1 + f, x0 + params.size + f, y1 + f + band))
    for index in range(8):
        low, high = _edge(index, params.size), _edge(index + 1, params.size)
        middle = (low + high) // 2
        rank = chess.RANK_NAMES[index if params.flipped else 7 - index]
        file = chess.FILE_NAMES[7 - index if params.flipped else index]
        mask = _outside_label(rank, band, params.coordinate_font)
        image.paste(ink, (x0 - f - band, y0 + middle - band // 2), mask)
        mask = _outside_label(file, band, params.coordinate_font)
        image.paste(ink, (x0 + middle - band // 2, y1 + f), mask)


def render_board(
    board: chess.BaseBoard, params: RenderParams, last_move: chess.Move | None = None
) -> Image.Image:
    """Draw `board` as an RGB image by compositing cached bitmaps (the fast path)."""
    side = 8 * params.lowres if params.lowres else params.size
    image = _draw_board(board, params, side, last_move)
    if params.lowres:
        image = image.resize((params.size, params.size), UPSCALE_FILTERS[params.upscale])
    if any(params.margin) or params.frame != "none" or params.coordinate_mode == "outside":
        canvas = _background(params, *image_size(params))
        if params.frame != "none":
            _draw_frame(canvas, params)
        if params.coordinate_mode == "outside":
            _draw_outside_coordinates(canvas, params)
        x0, y0, _, _ = board_box(params)
        canvas.paste(image, (int(x0), int(y0)))
        image = canvas
    if params.grayscale:
        image = image.convert("L").convert("RGB")
    return image


# --------------------------------------------------------------------------- SVG path


_PLAIN_FIELDS = ("piece_set", "theme", "size", "flipped", "coordinates", "highlight_move")


def plain_look(params: RenderParams) -> RenderParams:
    """The same board in the plain look: piece set, theme, size, orientation, inside
    coordinates (in the chess glyphs), last move and file format kept; every other look
    dropped."""
    kept = {name: getattr(params, name) for name in _PLAIN_FIELDS}
    kept["coordinates"] = params.coordinate_mode == "inside"
    return RenderParams(**kept, jpeg_quality=params.jpeg_quality)


_SVG_ID = re.compile(rb'(id="|url\(#|href="#)([^")]+)')
_PIECE_IDS = {
    f"#{chess.COLOR_NAMES[piece.color]}-{chess.PIECE_NAMES[piece.piece_type]}": piece.symbol()
    for piece in map(chess.Piece.from_symbol, PIECE_SYMBOLS)
}


def _prefix_ids(svg: bytes, prefix: str) -> bytes:
    """Rename every id (and reference to it) in an SVG document to start with `prefix`.

    cairosvg resolves ids in embedded images against one shared table, so two embedded
    pieces that both define `id="a"` (maestro, dubrovny; even two copies of one pawn) would
    paint with each other's gradients.
    """
    return _SVG_ID.sub(lambda m: m.group(1) + prefix.encode() + m.group(2), svg)


def _swap_pieces(root: ET.Element, piece_set: str) -> None:
    """Draw `piece_set`'s images where chess.svg placed its own pieces (its `<use>` elements)."""
    images = piece_images(piece_set)
    for index, element in enumerate(list(root)):
        if element.tag != f"{{{SVG_NS}}}use":
            continue
        kind, data = images[_PIECE_IDS[element.attrib["href"]]]
        if kind == "svg":
            data = _prefix_ids(data, f"p{index}-")
        uri = f"data:image/{'svg+xml' if kind == 'svg' else 'png'};base64,"
        group = ET.Element(f"{{{SVG_NS}}}g", {"transform": element.attrib["transform"]})
        ET.SubElement(
            group,
            f"{{{SVG_NS}}}image",
            {
                "width": str(SVG_SQUARE),
                "height": str(SVG_SQUARE),
                f"{{{XLINK_NS}}}href": uri + base64.b64encode(data).decode("ascii"),
            },
        )
        root[index] = group


def board_svg(
    board: chess.BaseBoard, params: RenderParams, last_move: chess.Move | None = None
) -> str:
    """The board as an SVG document: `chess.svg.board` with this package's look added."""
    theme = THEMES[params.theme]
    text = chess.svg.board(
        board,
        orientation=chess.BLACK if params.flipped else chess.WHITE,
        lastmove=last_move if params.highlight_move else None,
        coordinates=False,
        size=params.size,
        colors=theme.svg_colours(),
    )
    root = ET.fromstring(text)
    if params.coordinates:
        # Labels go after the squares and before the pieces (`<use>`), so pieces cover them.
        children = list(root)
        first_piece = next(
            (i for i, child in enumerate(children) if child.tag == f"{{{SVG_NS}}}use"),
            len(children),
        )
        for offset, element in enumerate(_coordinate_groups(params)):
            root.insert(first_piece + offset, element)
    if params.piece_set != "cburnett":
        _swap_pieces(root, params.piece_set)
    return ET.tostring(root, encoding="unicode")


def _coordinate_groups(params: RenderParams) -> list[ET.Element]:
    theme = THEMES[params.theme]
    groups = []
    for square in chess.SQUARES:
        labels = _coordinate_labels(square, params.flipped)
        if not any(labels):
            continue
        x, y = square_origin(square, 8 * SVG_SQUARE, params.flipped)
        group = ET.Element(f"{{{SVG_NS}}}g", {"transform": f"translate({x} {y})"})
        group.extend(_glyph_elements(*labels, theme.coordinate_colour(_is_light(square))))
        groups.append(group)
    return groups


def render_board_svg(
    board: chess.BaseBoard, params: RenderParams, last_move: chess.Move | None = None
) -> Image.Image:
    """Draw `board` through python-chess's SVG and cairosvg (the slow reference path).

    Only the plain look (the fields before `coordinate_place`, chess-glyph coordinates inside
    the squares) has an SVG twin; other looks raise `ChessVLMError`."""
    if params != plain_look(params):
        raise ChessVLMError(f"the SVG path draws only plain looks, not {params.name}")
    svg = board_svg(board, params, last_move).encode("utf-8")
    return rasterize_svg(svg, params.size, params.size).convert("RGB")


# --------------------------------------------------------------------------- files


def _encode_png_rgb(image: Image.Image) -> bytes:
    """A PNG of an RGB image: every row unfiltered, zlib level 1.

    Encoding is most of the cost of a rendered board. Pillow's PNG encoder tries five row
    filters on every row; board images compress well without them, so this writes about
    twice as fast (a 512 px board: ~5 ms instead of ~10 ms) for files 2-8% larger.
    """
    width, height = image.size
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # column 0: filter type 0
    rows[:, 1:] = np.asarray(image).reshape(height, 3 * width)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        _png_chunk(kind, data)
        for kind, data in (
            (b"IHDR", header),
            (b"IDAT", zlib.compress(rows.tobytes(), 1)),
            (b"IEND", b""),
        )
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def image_extension(params: RenderParams) -> str:
    """The file extension an image with these parameters is saved under."""
    return ".png" if params.jpeg_quality is None else ".jpg"


def encode_image(image: Image.Image, fmt: str, quality: int | None = None) -> bytes:
    """Encode an image as `"png"` or `"jpeg"` (with `quality`, 1..100) and return the bytes."""
    if fmt == "png" and image.mode == "RGB":
        return _encode_png_rgb(image)
    if fmt == "jpeg" and quality is None:
        raise ValueError("JPEG encoding needs a quality")
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"unknown image format {fmt!r}; use 'png' or 'jpeg'")
    buffer = io.BytesIO()
    image.save(buffer, fmt.upper(), quality=quality)
    return buffer.getvalue()


def save_image(image: Image.Image, path: str | Path, params: RenderParams) -> None:
    """Write the image atomically as PNG, or JPEG when `params.jpeg_quality` is set.

    No fsync: a rendered image is cheap to make again, and the dataset's progress log (not the
    file's presence) is what marks it finished.
    """
    path = Path(path)
    if path.suffix.lower() != image_extension(params):
        raise ValueError(f"{path}: extension should be {image_extension(params)} for {params.name}")
    fmt = "png" if params.jpeg_quality is None else "jpeg"
    atomic_write_bytes(path, encode_image(image, fmt, params.jpeg_quality), durable=False)


# --------------------------------------------------------------------------- batches

Renderer = Callable[[chess.BaseBoard, RenderParams, chess.Move | None], Image.Image]


@dataclasses.dataclass(frozen=True)
class RenderJob:
    """One image to draw and write; small and picklable so it can go to a worker process.

    `fen` is a full or placement-only FEN, `last_move` a UCI move or None, `path` the output
    file (its extension must be `image_extension(params)`).
    """

    fen: str
    params: RenderParams
    path: str
    last_move: str | None = None


def _job_board(job: RenderJob) -> tuple[chess.Board, chess.Move | None]:
    try:
        return chess.Board(job.fen), chess.Move.from_uci(job.last_move) if job.last_move else None
    except ValueError as error:
        raise InputError(job.path, f"cannot render {job.fen!r} ({error})") from None


def render_job(job: RenderJob, renderer: Renderer = render_board) -> None:
    """Draw one job's board and write its file."""
    board, move = _job_board(job)
    save_image(renderer(board, job.params, move), job.path, job.params)


def _render_chunk(jobs: list[RenderJob], renderer: Renderer) -> None:
    for job in jobs:
        render_job(job, renderer)


def render_many(
    jobs: Iterable[RenderJob],
    workers: int = 1,
    chunk_size: int = 32,
    renderer: Renderer = render_board,
) -> Iterator[RenderJob]:
    """Draw and write every job with `workers` processes, yielding each job, in input order,
    once its file is complete. Jobs are read lazily and only a few chunks are in flight, so
    `jobs` may be a long generator; a consumer that stops early loses no finished file.
    A bad FEN or move raises `InputError` naming the job's image path."""
    if workers <= 1:
        for job in jobs:
            render_job(job, renderer)
            yield job
        return
    iterator = iter(jobs)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        while chunk := list(islice(iterator, chunk_size)):
            # Bad input is caught here, not in a worker: InputError cannot be rebuilt from
            # its pickled message, and a failed unpickle breaks the whole pool.
            for job in chunk:
                _job_board(job)
            pending.append((chunk, pool.submit(_render_chunk, chunk, renderer)))
            if len(pending) >= 2 * workers:
                done, future = pending.popleft()
                future.result()
                yield from done
        for done, future in pending:
            future.result()
            yield from done
