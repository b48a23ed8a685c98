"""Piece sets: where each design's 12 images come from, and their bitmaps at any square size.

Piece images are read at run time from installed packages (python-chess, `pychess-data`,
`chessboard-image`); docs/piece_sets.md lists each set's source and licence. No image file is
copied into the repository.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib.util
import io
import json
from pathlib import Path

import chess
import chess.svg
from PIL import Image

from chessvlm.errors import ChessVLMError

PIECE_SYMBOLS = "KQRBNPkqrbnp"


@dataclasses.dataclass(frozen=True)
class PieceSet:
    """Where a piece set's 12 images come from (authors and licences: docs/piece_sets.md).

    `package` is the distribution that ships the images, `folder` the directory (pychess-data)
    or theme name (chessboard-image) inside it, `licence` the images' licence.
    """

    package: str
    folder: str
    licence: str


PIECE_SETS: dict[str, PieceSet] = {
    "cburnett": PieceSet("chess", "chess.svg", "GPL-3.0-or-later (as shipped in python-chess)"),
    "merida": PieceSet("pychess-data", "merida", "GPL-2.0-or-later"),
    "maestro": PieceSet("pychess-data", "maestro", "CC BY-NC-SA 4.0"),
    "dubrovny": PieceSet("pychess-data", "dubrovny", "CC BY-NC-SA 4.0"),
    "alpha": PieceSet("pychess-data", "alpha", "free for personal non-commercial use"),
    "kaneo": PieceSet("pychess-data", "kaneo", "CC BY 4.0"),
    "alpha-png": PieceSet(
        "chessboard-image", "alpha", "MIT (package); Alpha design non-commercial"
    ),
    "wikipedia-png": PieceSet("chessboard-image", "wikipedia", "MIT (package)"),
    "uscf-png": PieceSet("chessboard-image", "uscf", "MIT (package)"),
}

_PACKAGE_MODULES = {"pychess-data": "pychess_data", "chessboard-image": "chessboard_image"}


def _package_dir(package: str) -> Path:
    """The install folder of `package`, found without importing it.

    chessboard_image's __init__ imports pkg_resources, which recent setuptools no longer
    ships, so importing it can fail although its data file is there.
    """
    spec = importlib.util.find_spec(_PACKAGE_MODULES[package])
    if spec is None or not spec.submodule_search_locations:
        raise ChessVLMError(f"piece images need the package {package!r}: pip install {package}")
    return Path(next(iter(spec.submodule_search_locations)))


def _file_stem(symbol: str) -> str:
    """`K` -> `wK`, `k` -> `bK`: the file naming both packages use."""
    return ("w" if symbol.isupper() else "b") + symbol.upper()


@functools.cache
def piece_images(piece_set: str) -> dict[str, tuple[str, bytes]]:
    """The source images of a piece set: FEN symbol -> (`"svg"` or `"png"`, file bytes)."""
    source = PIECE_SETS[check_piece_set(piece_set)]
    if source.package == "chess":
        return {
            s: ("svg", chess.svg.piece(chess.Piece.from_symbol(s)).encode()) for s in PIECE_SYMBOLS
        }
    if source.package == "pychess-data":
        folder = _package_dir(source.package) / "static" / "images" / "pieces" / source.folder
        return {s: ("svg", (folder / f"{_file_stem(s)}.svg").read_bytes()) for s in PIECE_SYMBOLS}
    themes = json.loads((_package_dir(source.package) / "theme.json").read_text("utf-8"))
    pieces = themes[source.folder]["pieces"]
    # Each entry is a one-item list holding a data URI: "data:image/png;base64,...".
    return {
        s: ("png", base64.b64decode(pieces[_file_stem(s)][0].split(",", 1)[1]))
        for s in PIECE_SYMBOLS
    }


def rasterize_svg(svg: bytes, width: int, height: int) -> Image.Image:
    # Imported here: loading cairo takes most of a second, and the fast path only needs it
    # when a piece bitmap is first drawn, so `import chessvlm.rendering` stays cheap.
    import cairosvg

    png = cairosvg.svg2png(bytestring=svg, output_width=width, output_height=height)
    return Image.open(io.BytesIO(png)).convert("RGBA")


@functools.lru_cache(maxsize=4096)
def piece_bitmap(piece_set: str, symbol: str, square_px: int) -> Image.Image:
    """One piece drawn on a transparent `square_px` square (RGBA), cached per set and size.

    The image is shared by every caller: copy it before changing it."""
    kind, data = piece_images(piece_set)[symbol]
    if kind == "svg":
        return rasterize_svg(data, square_px, square_px)
    image = Image.open(io.BytesIO(data)).convert("RGBA")
    return image.resize((square_px, square_px), Image.Resampling.LANCZOS)


def check_piece_set(name: str) -> str:
    """`name` if it is a known piece set; otherwise a `ChessVLMError` listing the known ones."""
    if name not in PIECE_SETS:
        raise ChessVLMError(
            f"unknown piece set {name!r}; choose from {', '.join(sorted(PIECE_SETS))}"
        )
    return name
