"""Piece sets: where each design's 12 images come from, and their bitmaps at any square size.

Three kinds of source (docs/piece_sets.md lists every set's source, author and licence):

- installed: Python packages the project depends on (python-chess, `pychess-data`,
  `chessboard-image`, matplotlib's DejaVu font); always available.
- fetched: pinned PyPI or Debian packages that `chessvlm data art --fetch` downloads into the
  art cache (`$CHESSVLM_ART_DIR`, else `~/.cache/chessvlm/art`), never into the repository.
- fonts: chess glyphs (U+2654..U+265F) of a font, drawn as pieces (white: the filled glyph
  in white under the outline glyph in black; black: the filled glyph in black).
- meshes: the 3D models some chess games ship, drawn here (`chessvlm.meshes`).

A set whose art is not fetched is still in `PIECE_SETS`: `piece_images` then raises a
`ChessVLMError` saying how to fetch it, and `available_piece_sets()` leaves it out, so callers
decide what to do. No image file is copied into the repository.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import gzip
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import chess
import chess.svg
import numpy as np
from PIL import Image

from chessvlm.errors import ChessVLMError
from chessvlm.meshes import MeshError, View, draw_pieces, read_dcm, read_obj

PIECE_SYMBOLS = "KQRBNPkqrbnp"
KINDS = ("standard", "fantasy", "top-down", "letter", "low-res", "3d")
FETCH_HINT = "chessvlm data art --fetch"


@dataclasses.dataclass(frozen=True)
class ArtPackage:
    """A pinned package that ships piece art and is fetched into the art cache."""

    registry: str  # "pypi" or "debian"
    name: str
    version: str
    # Only files under these prefixes are kept (empty: everything).
    keep: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        sep = "==" if self.registry == "pypi" else "="
        return f"{self.registry} {self.name}{sep}{self.version}"

    @property
    def folder(self) -> str:
        return f"{self.registry}/{self.name}-{self.version}"


# KDE Knights themes (SVG documents, one element per piece) -> (design, kind, author).
_KNIGHTS_THEMES = {
    "knights": ("knights-3d", "3d", "Troy Corbin"),
    "east_west": ("east-west", "fantasy", "Eugene Trounev"),
}

_BRUTALCHESS = "usr/share/games/brutalchess"
_DREAMCHESS = "usr/share/games/dreamchess/pieces"

ART_PACKAGES: dict[str, ArtPackage] = {
    p.name: p
    for p in (
        ArtPackage("pypi", "fentoimage", "0.1.0", keep=("fentoimage/assets/cache/",)),
        ArtPackage("debian", "pgn2web", "0.4-3.1+b2"),
        ArtPackage("debian", "tagua-data", "1.0~alpha2-16-g618c6a0-3"),
        ArtPackage("debian", "eboard", "1.1.3-0.4"),
        ArtPackage("debian", "scid-data", "1:4.7.4+dfsg1-2"),
        # Only the two themes with designs of their own: `plain` and `gray` draw Cburnett's
        # pieces, and `xboard2` is a variation of a reserved package's art (never kept).
        ArtPackage(
            "debian",
            "knights",
            "22.12.3-1",
            keep=(
                "usr/share/knights/themes/knights.svgz",
                "usr/share/knights/themes/east_west.svgz",
                "usr/share/doc/",
            ),
        ),
        ArtPackage(
            "debian",
            "brutalchess",
            "0.5.2+dfsg-8",
            keep=(
                f"{_BRUTALCHESS}/models/",
                f"{_BRUTALCHESS}/art/marblehuge",
                "usr/share/doc/",
            ),
        ),
        ArtPackage(
            "debian",
            "dreamchess-data",
            "0.3.0-2",
            keep=(f"{_DREAMCHESS}/classic/", f"{_DREAMCHESS}/elements/", "usr/share/doc/"),
        ),
        ArtPackage("debian", "fonts-freefont-ttf", "20120503-10"),
        ArtPackage("debian", "fonts-symbola", "2.60-1.1"),
        ArtPackage(
            "debian",
            "fonts-unifont",
            "1:15.0.01-2",
            keep=("usr/share/fonts/opentype/unifont/unifont.otf", "usr/share/doc/"),
        ),
        ArtPackage(
            "debian",
            "fonts-noto-core",
            "20201225-1",
            keep=("usr/share/fonts/truetype/noto/NotoSansSymbols2", "usr/share/doc/"),
        ),
    )
}


@dataclasses.dataclass(frozen=True)
class PieceSet:
    """Where a piece set's 12 images come from, and what it is.

    `package` is the distribution that ships the images (a key of `ART_PACKAGES` for fetched
    art), `folder` the directory, theme or font file inside it, `licence` the images' licence.
    `design` names the drawing: sets that differ only by resolution or format share it, so a
    leave-designs-out split keeps whole designs out. `kind` is one of `KINDS`. `source` is
    `installed` or `fetched`; `version` pins fetched packages. `format` is what
    `piece_images` returns ("svg" or "png"). `exception` names a check the design fails on
    purpose (empty when none), `non_commercial` flags licences that forbid commercial use.
    """

    package: str
    folder: str
    licence: str
    design: str = ""
    kind: str = "standard"
    author: str = ""
    source: str = "installed"
    version: str = ""
    format: str = "svg"
    loader: str = ""
    non_commercial: bool = False
    exception: str = ""


_NC = "CC BY-NC-SA 4.0"


def _pychess(folder, licence, author, design=None, kind="standard", loader="pychess-data", **kw):
    return PieceSet(
        "pychess-data",
        folder,
        licence,
        design or folder,
        kind,
        author,
        loader=loader,
        non_commercial="NC" in licence or "non-commercial" in licence or "personal" in licence,
        **kw,
    )


def _cbi(theme, design, licence, kind="standard", **kw):
    return PieceSet(
        "chessboard-image",
        theme,
        licence,
        design,
        kind,
        "Anand Joshi (package)",
        format="png",
        loader="chessboard-image",
        **kw,
    )


# lichess piece sets as 16..256 px PNGs in PyPI `fentoimage` (assets/cache/<set>/<px>/).
# Authors and licences as lichess's COPYING.md lists them (fentoimage itself is AGPL-3.0
# and ships no per-set notice).
_LICHESS = {
    "alpha": ("alpha", "Eric Bentzen", "free for personal non-commercial use"),
    "anarcandy": ("anarcandy", "caderek", _NC),
    "california": ("california", "Jerry S.", _NC),
    "cardinal": ("cardinal", "sadsnake1", _NC),
    "cburnett": ("cburnett", "Colin M. L. Burnett", "GPL-2.0-or-later"),
    "chess7": ("chess7", "Style-7 (chess7 font)", "free for personal use (font licence)"),
    "chessnut": ("chessnut", "Alexis Luengas", "Apache-2.0"),
    "companion": ("companion", "David L. Brown", "free (Good Companion fonts)"),
    "dubrovny": ("dubrovny", "sadsnake1", _NC),
    "fantasy": ("fantasy", "Maurizio Monge", "MIT"),
    "fresca": ("fresca", "sadsnake1", _NC),
    "gioco": ("gioco", "sadsnake1", _NC),
    "governor": ("governor", "sadsnake1", _NC),
    "horsey": ("horsey", "cham, michael1241", _NC),
    "icpieces": ("icpieces", "therealtbs", _NC),
    "kosal": ("kosal", "philatype", _NC),
    "leipzig": ("leipzig", "Armando Hernandez Marroquin", "freeware (font)"),
    "letter": ("letter", "usolved", "AGPL-3.0-or-later"),
    "libra": ("libra", "sadsnake1", _NC),
    "maestro": ("maestro", "sadsnake1", _NC),
    "merida": ("merida", "Armando Hernandez Marroquin", "GPL-2.0-or-later"),
    "pirouetti": ("pirouetti", "pirouetti", "AGPL-3.0-or-later"),
    "pixel": ("pixel", "therealtbs", _NC),
    "reillycraig": ("reillycraig", "Reilly Craig", "CC BY 4.0"),
    "riohacha": ("riohacha", "Alexis Luengas", "Apache-2.0"),
    "shapes": ("shapes", "flugsio", "CC BY-SA 4.0"),
    "spatial": ("spatial", "Maurizio Monge", "MIT"),
    "staunty": ("staunty", "sadsnake1", _NC),
    "tatiana": ("tatiana", "sadsnake1", _NC),
}
_LICHESS_KIND = {"fantasy": "fantasy", "letter": "letter", "pixel": "low-res", "shapes": "fantasy"}


def _lichess(folder: str, px: int = 128, kind: str | None = None) -> PieceSet:
    design, author, licence = _LICHESS[folder]
    pkg = ART_PACKAGES["fentoimage"]
    return PieceSet(
        pkg.name,
        f"{folder}/{px}",
        licence,
        design,
        kind or _LICHESS_KIND.get(folder, "standard"),
        author,
        "fetched",
        pkg.version,
        "png",
        "fentoimage",
        non_commercial="NC" in licence or "non-commercial" in licence or "personal" in licence,
    )


# pgn2web's 32 px diagram pieces (drawn on their squares: the square is keyed out).
_PGN2WEB = {
    "adventurer": "Armando Hernandez Marroquin (Chess Adventurer font)",
    "alfonso-x": "Armando Hernandez Marroquin (Chess Alfonso-X font)",
    "cases": "Matthieu Leschemelle (Chess Cases font)",
    "condal": "Armando Hernandez Marroquin (Chess Condal font)",
    "harlequin": "Armando Hernandez Marroquin (Chess Harlequin font)",
    "kingdom": "Armando Hernandez Marroquin (Chess Kingdom font)",
    "leipzig": "Armando Hernandez Marroquin (Chess Leipzig font)",
    "line": "Armando Hernandez Marroquin (Chess Line font)",
    "lucena": "Armando Hernandez Marroquin (Chess Lucena font)",
    "magnetic": "Armando Hernandez Marroquin (Chess Magnetic font)",
    "mark": "Armando Hernandez Marroquin (Chess Mark font)",
    "marroquin": "Armando Hernandez Marroquin (Chess Marroquin font)",
    "maya": "Armando Hernandez Marroquin (Chess Maya font)",
    "mediaeval": "Armando Hernandez Marroquin (Chess Mediaeval font)",
    "merida": "Armando Hernandez Marroquin (Chess Merida font)",
    "motif": "Armando Hernandez Marroquin (Chess Motif font)",
}


def _fetched(
    package: str, folder: str, licence: str, design: str, kind: str, author: str, loader: str
) -> PieceSet:
    """A set whose pieces come from the fetched art `package`, cut out by `loader` as PNGs."""
    pkg = ART_PACKAGES[package]
    return PieceSet(
        pkg.name, folder, licence, design, kind, author, "fetched", pkg.version, "png", loader
    )


def _pgn2web(folder: str) -> PieceSet:
    licence = "GPL-3.0-or-later (Debian package); font designs freeware"
    return _fetched("pgn2web", folder, licence, folder, "low-res", _PGN2WEB[folder], "pgn2web")


def _tagua(folder: str, design: str, kind: str) -> PieceSet:
    author = "Maurizio Monge (tagua)"
    return _fetched("tagua-data", folder, "GPL-2.0-or-later", design, kind, author, "tagua")


# eboard's sprite sheets (/usr/share/games/eboard/<file>.png): 7 columns (R N B Q K P, then a
# square texture) by 2 rows (white, black) on a key colour. file -> (design, kind).
_EBOARD = {
    "Adventurer": ("adventurer", "standard"),
    "Alpha": ("alpha", "standard"),
    "Altinov": ("altinov", "3d"),
    "Berlin": ("berlin", "standard"),
    "Book": ("book", "standard"),
    "Chap": ("chap", "3d"),
    "ChessBase": ("chessbase", "standard"),
    "Cmf": ("cmf", "standard"),
    "Dominical72": ("dominical", "standard"),
    "Dyche1": ("companion", "standard"),
    "Ebony": ("ebony", "3d"),
    "Enquil": ("enquil", "standard"),
    "Harlequin": ("harlequin", "standard"),
    "Jumbo": ("jumbo", "3d"),
    "Leipzig": ("leipzig", "standard"),
    "Mayan": ("maya", "3d"),
    "NutBolt": ("nutbolt", "fantasy"),
    "OldClassicDark": ("companion", "standard"),
    "Primepov": ("altinov", "3d"),
    "Rastapov": ("altinov", "3d"),
    "SadGreen": ("sadgreen", "standard"),
    "Slics": ("slics", "standard"),
    "Staunton": ("staunton-3d", "3d"),
    "Traveler": ("traveler", "standard"),
    "Usual": ("usual", "standard"),
    "Utretch": ("utretch", "standard"),
    "WCN": ("jumbo", "3d"),
    "Whitney": ("whitney", "3d"),
    "Yahoo": ("yahoo", "low-res"),
    "classic": ("chessbase", "standard"),
    "plastic": ("staunton-3d", "3d"),
}


def _eboard(file: str) -> PieceSet:
    design, kind = _EBOARD[file]
    licence = "GPL-2.0-or-later (eboard; eboard-extras piece themes)"
    author = "Felipe Bergo and eboard-extras contributors"
    return _fetched("eboard", f"{file}.png", licence, design, kind, author, "eboard")


def _scid(path: str, design: str, kind: str, author: str) -> PieceSet:
    """A Scid strip (/usr/share/scid/img/pieces/<path>): 12 square cells, P N B R Q K white,
    then black, on transparency."""
    return _fetched("scid-data", path, "GPL-2.0 (scid-data)", design, kind, author, "scid")


def _knights(theme: str) -> PieceSet:
    design, kind, author = _KNIGHTS_THEMES[theme]
    licence = "GPL-2.0-or-later (knights)"
    return _fetched("knights", f"{theme}.svgz", licence, design, kind, author, "knights")


@dataclasses.dataclass(frozen=True)
class _MeshSet:
    """A set drawn here from 3D models (`chessvlm.meshes`): the folder of its six models
    (`king.obj` ... `pawn.obj`, or `.dcm`), the white and the black texture, and the view."""

    models: str
    suffix: str
    textures: tuple[str, str]
    view: View


# Seen from a little above, as 3D board programs show their pieces, the knights in profile;
# two views of DreamChess' one shape, so the design is not learnt from a single angle.
_MESH_SETS = {
    "brutalchess": _MeshSet(
        f"{_BRUTALCHESS}/models",
        ".obj",
        (f"{_BRUTALCHESS}/art/marblehugewhite.png", f"{_BRUTALCHESS}/art/marblehugeblack.png"),
        View(elevation=20, azimuth=0),
    ),
    "dreamchess-classic": _MeshSet(
        f"{_DREAMCHESS}/classic",
        ".dcm",
        (f"{_DREAMCHESS}/classic/white.png", f"{_DREAMCHESS}/classic/black.png"),
        View(elevation=25, azimuth=180),
    ),
    "dreamchess-elements": _MeshSet(
        f"{_DREAMCHESS}/elements",
        ".dcm",
        (f"{_DREAMCHESS}/elements/white.png", f"{_DREAMCHESS}/elements/black.png"),
        View(elevation=40, azimuth=240),
    ),
}


def _mesh(name: str, package: str, design: str, author: str, licence: str) -> PieceSet:
    folder = _MESH_SETS[name].models
    return _fetched(package, folder, licence, design, "3d", author, "mesh")


def _font(package: str, path: str, design: str, author: str, licence: str) -> PieceSet:
    pkg = ART_PACKAGES.get(package)
    return PieceSet(
        package,
        path,
        licence,
        design,
        "letter",
        author,
        "fetched" if pkg else "installed",
        pkg.version if pkg else "",
        "png",
        "font",
    )


PIECE_SETS: dict[str, PieceSet] = {
    "cburnett": PieceSet(
        "chess",
        "chess.svg",
        "GPL-3.0-or-later (as shipped in python-chess)",
        "cburnett",
        author="Colin M. L. Burnett",
        loader="python-chess",
    ),
    "merida": _pychess("merida", "GPL-2.0-or-later", "Armando Hernandez Marroquin"),
    "maestro": _pychess("maestro", _NC, "sadsnake1"),
    "dubrovny": _pychess("dubrovny", _NC, "sadsnake1"),
    "alpha": _pychess("alpha", "free for personal non-commercial use", "Eric Bentzen"),
    "kaneo": _pychess("kaneo", "CC BY 4.0", "Kadagaden"),
    "atopdown": _pychess(
        "atopdown", "AGPL-3.0-or-later", "pychess-variants contributors", kind="top-down"
    ),
    "firi": _pychess("firi", "CC BY 4.0", "James Faure", kind="fantasy"),
    # Alfaerie's orthodox pieces are drawn after Alpha (same silhouettes), so: design alpha.
    "alfaerie": _pychess(
        "alfaerie",
        "unknown (The Chess Variant Pages)",
        "David Howe, H.G. Muller, Greg Strong",
        design="alpha",
    ),
    "santa": _pychess("santa", _NC, "Ben Jacobs", design="santa", kind="fantasy", format="png"),
    "alpha-png": _cbi(
        "alpha", "alpha", "MIT (package); Alpha design non-commercial", non_commercial=True
    ),
    "wikipedia-png": _cbi("wikipedia", "cburnett", "MIT (package)"),
    "uscf-png": _cbi(
        "uscf",
        "maestro",  # Maestro's shapes
        "MIT (package); the Maestro design's CC BY-NC-SA 4.0 may apply",
        kind="low-res",
        non_commercial=True,
    ),
    **{
        (
            name
            if name not in {"alpha", "cburnett", "dubrovny", "maestro", "merida"}
            else f"{name}-lichess"
        ): _lichess(name)
        for name in _LICHESS
    },
    "cburnett-32px": _lichess("cburnett", 32, "low-res"),
    "companion-32px": _lichess("companion", 32, "low-res"),
    "staunty-32px": _lichess("staunty", 32, "low-res"),
    **{f"{name}-32px": _pgn2web(name) for name in _PGN2WEB},
    "fantasy-tagua": _tagua("FantasySVG", "fantasy", "fantasy"),
    "skulls": _tagua("SkullsSVG", "skulls", "fantasy"),
    "spatial-tagua": _tagua("SpatialSVG", "spatial", "standard"),
    "prmi": _tagua("PrmiSVG", "prmi", "fantasy"),
    **{f"eboard-{file.lower()}": _eboard(file) for file in _EBOARD},
    "bauhaus": _scid(
        "Bauhaus/Bauhaus_80.gif",
        "bauhaus",
        "fantasy",
        "Sandra Snan after Josef Hartwig's 1924 Bauhaus set (drawn for Scid)",
    ),
    "fantasy-scid": _scid("Fantasy2/fantasy2_100.png", "fantasy", "fantasy", "Maurizio Monge"),
    "merida-scid": _scid(
        "Merida1/Merida1_88.png", "merida", "standard", "Armando Hernandez Marroquin"
    ),
    "companion-scid-30px": _scid(
        "Good Companion/good_companion_30.png", "companion", "low-res", "David L. Brown"
    ),
    "jumbo-scid": _scid("Eboard/Eboard_120.png", "jumbo", "3d", "eboard (drawn for Scid)"),
    "dejavu-font": _font(
        "matplotlib",
        "mpl-data/fonts/ttf/DejaVuSans.ttf",
        "dejavu-glyphs",
        "DejaVu fonts team",
        "Bitstream Vera licence (free)",
    ),
    "freeserif-font": _font(
        "fonts-freefont-ttf",
        "usr/share/fonts/truetype/freefont/FreeSerif.ttf",
        "freeserif-glyphs",
        "GNU FreeFont contributors",
        "GPL-3.0-or-later with font exception",
    ),
    "symbola-font": _font(
        "fonts-symbola",
        "usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf",
        "symbola-glyphs",
        "George Douros",
        "free for any use (Symbola licence)",
    ),
    "unifont-font": _font(
        "fonts-unifont",
        "usr/share/fonts/opentype/unifont/unifont.otf",
        "unifont-glyphs",
        "Roman Czyborra, Paul Hardy and contributors (GNU Unifont, 16 px bitmap glyphs)",
        "GPL-2.0-or-later with font embedding exception, or OFL-1.1",
    ),
    "noto-symbols2-font": _font(
        "fonts-noto-core",
        "usr/share/fonts/truetype/noto/NotoSansSymbols2-Regular.ttf",
        "noto-symbols2-glyphs",
        "Google",
        "OFL-1.1",
    ),
    **{f"knights-{theme.replace('_', '-')}": _knights(theme) for theme in _KNIGHTS_THEMES},
    "brutalchess": _mesh(
        "brutalchess",
        "brutalchess",
        "brutalchess",
        "Brian Lindsley (Brutal Chess' models and marble)",
        "GPL-2.0-or-later (brutalchess)",
    ),
    # One shape, two materials: DreamChess' `elements` set reuses the `classic` models.
    **{
        name: _mesh(
            name,
            "dreamchess-data",
            "dreamchess-classic",
            "the DreamChess team (Kris McAulay, Walter van Niftrik and others)",
            "GPL-3.0-or-later (dreamchess-data)",
        )
        for name in ("dreamchess-classic", "dreamchess-elements")
    },
}


# Designs that fail the "white pieces at least 40 grey levels lighter than black" check on
# purpose (tests hold them to a weaker bound instead): set -> why.
_LOW_CONTRAST = {
    "atopdown": "top-down discs: both sides carry much of the other colour",
    "firi": "black pieces are gold, white pieces carry dark detail",
    "santa": "coloured Christmas figures: black is a darker tint of the same colours",
    "skulls": "both sides are shaded skulls and tombstones",
    "leipzig": "diagram font: heavy black outlines and hatching on white pieces",
    "merida-lichess": "diagram font: heavy black outlines on white pieces",
    "cases-32px": "diagram font at 32 px: outlines dominate white pieces",
    "kingdom-32px": "diagram font at 32 px: outlines dominate white pieces",
    "leipzig-32px": "diagram font at 32 px: outlines dominate white pieces",
    "merida-32px": "diagram font at 32 px: outlines dominate white pieces",
    "eboard-chap": "red-brown wooden black pieces beside light wooden white ones",
    "eboard-jumbo": "grey metal pieces on both sides",
    "eboard-leipzig": "diagram font: heavy black outlines on white pieces",
    "unifont-font": "16 px pixel glyphs: the outline is as thick as the white inside",
    "dreamchess-classic": "light and mid-brown wooden pieces, 27 grey levels apart",
}
PIECE_SETS = {
    name: dataclasses.replace(source, exception=_LOW_CONTRAST.get(name, ""))
    for name, source in PIECE_SETS.items()
}


def piece_designs(names: list[str] | tuple[str, ...] | None = None) -> dict[str, list[str]]:
    """Distinct designs -> the sets that draw them (all sets, or only `names`)."""
    designs: dict[str, list[str]] = {}
    for name in PIECE_SETS if names is None else names:
        designs.setdefault(PIECE_SETS[check_piece_set(name)].design, []).append(name)
    return designs


def art_dir() -> Path:
    """The art cache: `$CHESSVLM_ART_DIR`, else `~/.cache/chessvlm/art`."""
    env = os.environ.get("CHESSVLM_ART_DIR")
    return Path(env) if env else Path.home() / ".cache" / "chessvlm" / "art"


def _fetched_root(package: str) -> Path:
    return art_dir() / ART_PACKAGES[package].folder


def _is_fetched(package: str) -> bool:
    return (_fetched_root(package) / ".complete").is_file()


_PACKAGE_MODULES = {
    "pychess-data": "pychess_data",
    "chessboard-image": "chessboard_image",
    "matplotlib": "matplotlib",
}


def _package_dir(package: str) -> Path:
    """The install folder of `package`, found without importing it.

    chessboard_image's __init__ imports pkg_resources, which recent setuptools no longer
    ships, so importing it can fail although its data file is there.
    """
    spec = importlib.util.find_spec(_PACKAGE_MODULES[package])
    if spec is None or not spec.submodule_search_locations:
        raise ChessVLMError(f"piece images need the package {package!r}: pip install {package}")
    return Path(next(iter(spec.submodule_search_locations)))


def piece_set_available(name: str) -> bool:
    """Whether the art of set `name` is present now (installed, or fetched into the cache)."""
    source = PIECE_SETS[check_piece_set(name)]
    if source.source == "fetched":
        return _is_fetched(source.package)
    if source.package == "chess":
        return True
    return importlib.util.find_spec(_PACKAGE_MODULES[source.package]) is not None


def available_piece_sets() -> tuple[str, ...]:
    """The sets whose art is present right now, in `PIECE_SETS` order."""
    return tuple(name for name in PIECE_SETS if piece_set_available(name))


def _file_stem(symbol: str) -> str:
    """`K` -> `wK`, `k` -> `bK`: the file naming both packages use."""
    return ("w" if symbol.isupper() else "b") + symbol.upper()


_NAMES = {"K": "king", "Q": "queen", "R": "rook", "B": "bishop", "N": "knight", "P": "pawn"}


def _file_name(loader: str, symbol: str, folder: str) -> str:
    colour = "w" if symbol.isupper() else "b"
    if loader == "pychess-data":
        if folder == "alfaerie":
            return f"{colour}{_NAMES[symbol.upper()]}.svg"
        if folder in ("atopdown", "firi"):
            return f"{colour}{symbol.lower()}.svg"
        return f"{_file_stem(symbol)}.{'png' if folder == 'santa' else 'svg'}"
    if loader == "fentoimage":
        return f"{_file_stem(symbol)}.png"
    if loader == "tagua":
        return f"{colour}{symbol.lower()}.svg"
    if loader == "pgn2web":  # piece on a white square
        return f"{colour}{symbol.lower()}ws.png"
    raise AssertionError(loader)


def _read(piece_set: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ChessVLMError(
            f"piece set {piece_set!r}: cannot read {path}: {error.strerror or error}; "
            f"fetch it again with `{FETCH_HINT}`"
        ) from None


def _malformed_art_error(piece_set: str, path: Path, error: Exception) -> ChessVLMError:
    """The error for an art file that is there but cannot be read as what it should be."""
    return ChessVLMError(
        f"piece set {piece_set!r}: {path} is malformed ({error}); fetch it again with "
        f"`{FETCH_HINT}`"
    )


def _missing_art_error(piece_set: str, source: PieceSet) -> ChessVLMError:
    pkg = ART_PACKAGES[source.package]
    return ChessVLMError(
        f"piece set {piece_set!r} needs art from {pkg.label}, not fetched into {art_dir()}: "
        f"run `{FETCH_HINT}` (or set CHESSVLM_ART_DIR to a cache that has it); to go on "
        "without it, use only `chessvlm.pieces.available_piece_sets()` "
        "(`chessvlm data art --list` shows what is there)"
    )


@functools.cache
def piece_images(piece_set: str) -> dict[str, tuple[str, bytes]]:
    """The source images of a piece set: FEN symbol -> (`"svg"` or `"png"`, file bytes).

    Cached per process. Raises `ChessVLMError` naming the set, the package and the fix when
    the art is not fetched, and naming the file when one is missing or unreadable."""
    source = PIECE_SETS[check_piece_set(piece_set)]
    if source.source == "fetched" and not _is_fetched(source.package):
        raise _missing_art_error(piece_set, source)
    images = _LOADERS[source.loader](piece_set, source)
    for symbol, (kind, data) in images.items():
        _validate(piece_set, symbol, kind, data)
    return images


def _validate(piece_set: str, symbol: str, kind: str, data: bytes) -> None:
    """A `ChessVLMError` naming the set and piece when its image cannot be decoded."""
    try:
        if kind == "png":
            Image.open(io.BytesIO(data)).verify()
        elif b"<svg" not in data[:4096]:
            raise ValueError("not an SVG document")
    except Exception as error:
        raise ChessVLMError(
            f"piece set {piece_set!r}: the image of {symbol!r} is malformed ({error}); "
            f"fetch it again with `{FETCH_HINT}`"
        ) from None


def _load_python_chess(piece_set: str, source: PieceSet) -> dict[str, tuple[str, bytes]]:
    return {s: ("svg", chess.svg.piece(chess.Piece.from_symbol(s)).encode()) for s in PIECE_SYMBOLS}


def _load_files(piece_set: str, source: PieceSet) -> dict[str, tuple[str, bytes]]:
    if source.loader == "pychess-data":
        folder = _package_dir(source.package) / "static" / "images" / "pieces" / source.folder
    elif source.loader == "fentoimage":
        folder = _fetched_root(source.package) / "fentoimage/assets/cache" / source.folder
    else:  # tagua
        folder = _fetched_root(source.package) / "usr/share/tagua/themes/pieces" / source.folder
    images = {
        s: (source.format, _read(piece_set, folder / _file_name(source.loader, s, source.folder)))
        for s in PIECE_SYMBOLS
    }
    if source.folder == "santa":  # 300 px PNGs: kept at 128 px like the other PNG sets
        images = {
            s: ("png", _png(Image.open(io.BytesIO(data)).resize((128, 128), Image.LANCZOS)))
            for s, (_, data) in images.items()
        }
    if source.loader == "tagua":
        # Drawn here once at 256 px: their SVGs have no viewBox and reuse ids in ways that
        # embedding them in a board SVG does not survive.
        images = {
            s: ("png", _png(rasterize_svg(_with_view_box(data), _FONT_PX, _FONT_PX)))
            for s, (_, data) in images.items()
        }
    return images


_SVG_TAG = re.compile(rb"<svg\b[^>]*>", re.S)
_SIZE = re.compile(rb'\s(width|height)="([0-9.]+)(pt|px)?"')


def _with_view_box(svg: bytes) -> bytes:
    """Give an SVG without a viewBox one spanning its width and height (tagua's pieces have
    none, so drawn into a smaller box they would be cropped instead of scaled)."""
    tag = _SVG_TAG.search(svg)
    if tag is None or b"viewBox" in tag.group(0):
        return svg
    size = {
        m.group(1): float(m.group(2)) * (4 / 3 if m.group(3) == b"pt" else 1)
        for m in _SIZE.finditer(tag.group(0))
    }
    if set(size) != {b"width", b"height"}:
        return svg
    box = f' viewBox="0 0 {size[b"width"]:g} {size[b"height"]:g}"'.encode()
    return svg[: tag.start()] + tag.group(0)[:4] + box + tag.group(0)[4:] + svg[tag.end() :]


def _load_chessboard_image(piece_set: str, source: PieceSet) -> dict[str, tuple[str, bytes]]:
    path = _package_dir(source.package) / "theme.json"
    themes = json.loads(_read(piece_set, path).decode("utf-8"))
    pieces = themes[source.folder]["pieces"]
    # Each entry is a one-item list holding a data URI: "data:image/png;base64,...".
    return {
        s: ("png", base64.b64decode(pieces[_file_stem(s)][0].split(",", 1)[1]))
        for s in PIECE_SYMBOLS
    }


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _load_pgn2web(piece_set: str, source: PieceSet) -> dict[str, tuple[str, bytes]]:
    """Pieces drawn on a light square: the square around each piece (the pixels of the square's
    colour reached from the border) becomes transparent; the piece's own light inside stays."""
    folder = _fetched_root(source.package) / "usr/share/pgn2web/images" / source.folder

    def rgb(name: str) -> np.ndarray:
        data = _read(piece_set, folder / name)
        try:
            return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)
        except Exception as error:
            raise _malformed_art_error(piece_set, folder / name, error) from None

    square = rgb("ws.png")
    images = {}
    for s in PIECE_SYMBOLS:
        piece = rgb(("w" if s.isupper() else "b") + s.lower() + "ws.png")
        if piece.shape != square.shape:
            raise ChessVLMError(
                f"piece set {piece_set!r}: {folder} has images of different sizes; "
                f"fetch it again with `{FETCH_HINT}`"
            )
        outside = _outside(np.abs(piece - square).max(axis=2) < 40)
        alpha = np.where(outside, 0, 255).astype(np.uint8)
        rgba = np.dstack([piece.astype(np.uint8), alpha])
        images[s] = ("png", _png(Image.fromarray(rgba, "RGBA")))
    return images


def _outside(like_background: np.ndarray) -> np.ndarray:
    """The background pixels reached from the border through background pixels."""
    outside = np.zeros_like(like_background)
    outside[[0, -1], :] = like_background[[0, -1], :]
    outside[:, [0, -1]] |= like_background[:, [0, -1]]
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= like_background
        if (grown == outside).all():
            return outside
        outside = grown


def _load_eboard(piece_set: str, source: PieceSet) -> dict[str, tuple[str, bytes]]:
    """Cut a sprite sheet into its 12 pieces; the key colour around each piece (or the
    sheet's own transparency) becomes transparent; tall cells are padded to squares."""
    path = _fetched_root(source.package) / "usr/share/games/eboard" / source.folder
    data = _read(piece_set, path)
    try:
        sheet = Image.open(io.BytesIO(data))
        has_alpha = "transparency" in sheet.info or sheet.mode in ("RGBA", "LA")
        rgba = np.asarray(sheet.convert("RGBA"))
    except Exception as error:
        raise _malformed_art_error(piece_set, path, error) from None
    height, width = rgba.shape[:2]
    cw, ch = width // 7, height // 2
    if cw < 8 or ch < 8:
        raise ChessVLMError(f"piece set {piece_set!r}: {path} is not a 7x2 sprite sheet")
    images = {}
    for row, symbols in enumerate(("RNBQKP", "rnbqkp")):
        for column, s in enumerate(symbols):
            cell = rgba[row * ch : (row + 1) * ch, column * cw : (column + 1) * cw].copy()
            if has_alpha and (cell[..., 3] < 128).any():
                cell[..., 3] = np.where(cell[..., 3] < 128, 0, 255)
            else:
                key = cell[0, 0, :3].astype(np.int16)
                near = np.abs(cell[..., :3].astype(np.int16) - key).max(axis=2) < 48
                cell[..., 3] = np.where(_outside(near), 0, 255)
            side = max(cw, ch)
            square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
            square.paste(Image.fromarray(cell, "RGBA"), ((side - cw) // 2, side - ch))
            images[s] = ("png", _png(square))
    return images


def _load_scid(piece_set: str, source: PieceSet) -> dict[str, tuple[str, bytes]]:
    path = _fetched_root(source.package) / "usr/share/scid/img/pieces" / source.folder
    data = _read(piece_set, path)
    try:
        strip = Image.open(io.BytesIO(data)).convert("RGBA")
    except Exception as error:
        raise _malformed_art_error(piece_set, path, error) from None
    side = strip.height
    if strip.width != 12 * side:
        raise ChessVLMError(f"piece set {piece_set!r}: {path} is not a strip of 12 squares")
    return {
        s: ("png", _png(strip.crop((i * side, 0, (i + 1) * side, side))))
        for i, s in enumerate("PNBRQKpnbrqk")
    }


_FONT_PX = 128  # size of the PNGs drawn here from fonts and SVGs
# The tallest piece of a Knights theme fills this share of its square, the others keep their
# size relative to it (the themes draw each piece in a cell of its own size).
_KNIGHTS_FILL = 0.9
# Below each piece's foot, as boards draw pieces standing a little above a square's edge.
_KNIGHTS_FOOT_GAP = 0.03


def _load_knights(piece_set: str, source: PieceSet) -> dict[str, tuple[str, bytes]]:
    """A KDE Knights theme: one SVG document whose elements `WhitePawn` ... `BlackKing` are the
    pieces. Each is drawn alone (the rest of the document pruned) and cut to its pixels; all
    twelve share one scale, standing at the bottom centre of a square."""
    path = _fetched_root(source.package) / "usr/share/knights/themes" / source.folder
    try:
        document = gzip.decompress(_read(piece_set, path))
        drawn = {s: _draw_svg_element(document, _knights_id(s)) for s in PIECE_SYMBOLS}
    except (OSError, ValueError, ElementTree.ParseError) as error:
        raise _malformed_art_error(piece_set, path, error) from None
    side = max(max(image.size) for image in drawn.values()) / _KNIGHTS_FILL
    scale = _FONT_PX / side
    images = {}
    for s, image in drawn.items():
        width, height = (max(1, round(n * scale)) for n in image.size)
        square = Image.new("RGBA", (_FONT_PX, _FONT_PX), (0, 0, 0, 0))
        square.alpha_composite(
            image.resize((width, height), Image.Resampling.LANCZOS),
            ((_FONT_PX - width) // 2, _FONT_PX - height - round(_FONT_PX * _KNIGHTS_FOOT_GAP)),
        )
        images[s] = ("png", _png(square))
    return images


def _knights_id(symbol: str) -> str:
    return ("White" if symbol.isupper() else "Black") + _NAMES[symbol.upper()].capitalize()


def _draw_svg_element(document: bytes, element_id: str) -> Image.Image:
    """The element `element_id` of an SVG document drawn alone at the document's size (its
    ancestors' transforms and the document's definitions kept), cut to its visible pixels."""
    root = ElementTree.fromstring(document)

    def keep_only_target(parent: ElementTree.Element) -> bool:
        holds_target = False
        for child in list(parent):
            if child.get("id") == element_id:
                holds_target = True
            elif child.tag.rsplit("}", 1)[-1] == "defs":
                continue
            elif keep_only_target(child):
                holds_target = True
            else:
                parent.remove(child)
        return holds_target

    if not keep_only_target(root):
        raise ValueError(f"no element with id {element_id!r}")
    drawn = rasterize_svg(ElementTree.tostring(root))
    box = drawn.getchannel("A").getbbox()
    if box is None:
        raise ValueError(f"the element {element_id!r} draws nothing")
    return drawn.crop(box)


def _load_font(piece_set: str, source: PieceSet) -> dict[str, tuple[str, bytes]]:
    from PIL import ImageDraw, ImageFont

    if source.source == "fetched":
        path = _fetched_root(source.package) / source.folder
    else:
        path = _package_dir(source.package) / source.folder
    try:
        # Sized so that the king's glyph fills 80% of the square, whatever the font's em.
        font = ImageFont.truetype(str(path), 100)
        left, top, right, bottom = font.getbbox(chr(0x265A))
        size = round(100 * 0.8 * _FONT_PX / max(right - left, bottom - top, 1))
        font = ImageFont.truetype(str(path), size)
    except OSError as error:
        raise ChessVLMError(
            f"piece set {piece_set!r}: cannot load the font {path} ({error}); "
            f"fetch it again with `{FETCH_HINT}`"
        ) from None
    images = {}
    for s in PIECE_SYMBOLS:
        offset = "KQRBNP".index(s.upper())
        outline, filled = chr(0x2654 + offset), chr(0x265A + offset)
        image = Image.new("RGBA", (_FONT_PX, _FONT_PX), (0, 0, 0, 0))
        draw = ImageDraw.Draw(image)
        # Centre the filled glyph's box; the outline glyph shares its metrics.
        left, top, right, bottom = draw.textbbox((0, 0), filled, font=font)
        xy = ((_FONT_PX - (right - left)) / 2 - left, (_FONT_PX - (bottom - top)) / 2 - top)
        if s.isupper():
            draw.text(xy, filled, font=font, fill=(255, 255, 255, 255))
            draw.text(xy, outline, font=font, fill=(0, 0, 0, 255))
        else:
            draw.text(xy, filled, font=font, fill=(0, 0, 0, 255))
        images[s] = ("png", _png(image))
    return images


def _load_mesh(piece_set: str, source: PieceSet) -> dict[str, tuple[str, bytes]]:
    """Draw the set's six models in both textures (`chessvlm.meshes.draw_pieces`)."""
    spec = _MESH_SETS[piece_set]
    root = _fetched_root(source.package)
    parse = read_obj if spec.suffix == ".obj" else read_dcm
    models = {}
    for letter, name in _NAMES.items():
        path = root / spec.models / f"{name}{spec.suffix}"
        try:
            models[letter] = parse(_read(piece_set, path).decode("latin-1"))
        except MeshError as error:
            raise _malformed_art_error(piece_set, path, error) from None
    textures = {}
    for colour, file in zip(("white", "black"), spec.textures, strict=True):
        path = root / file
        try:
            texture = Image.open(io.BytesIO(_read(piece_set, path))).convert("RGB")
        except OSError as error:
            raise _malformed_art_error(piece_set, path, error) from None
        textures[colour] = np.asarray(texture, dtype=np.float64) / 255
    drawn = draw_pieces(models, textures, spec.view, _FONT_PX)
    return {s: ("png", _png(image)) for s, image in drawn.items()}


_LOADERS: dict[str, Callable[[str, PieceSet], dict[str, tuple[str, bytes]]]] = {
    "python-chess": _load_python_chess,
    "pychess-data": _load_files,
    "fentoimage": _load_files,
    "tagua": _load_files,
    "chessboard-image": _load_chessboard_image,
    "pgn2web": _load_pgn2web,
    "eboard": _load_eboard,
    "scid": _load_scid,
    "font": _load_font,
    "knights": _load_knights,
    "mesh": _load_mesh,
}


def rasterize_svg(svg: bytes, width: int | None = None, height: int | None = None) -> Image.Image:
    """`svg` drawn as RGBA, `width` x `height` px (by default the document's own size)."""
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


# ---- fetching -------------------------------------------------------------------------------


def fetch_art(
    packages: list[str] | None = None, log: Callable[[str], None] = print
) -> dict[str, str]:
    """Download the pinned art packages into the cache (idempotent): name -> "ok" or error.

    A package that fails (offline, version gone) is reported and the others go on."""
    results: dict[str, str] = {}
    updated = False
    for name in packages or list(ART_PACKAGES):
        pkg = ART_PACKAGES[name]
        if _is_fetched(name):
            results[name] = "ok"
            log(f"{pkg.label}: already in {_fetched_root(name)}")
            continue
        try:
            try:
                _fetch_one(pkg)
            except ChessVLMError:
                if pkg.registry != "debian" or updated or not _can_apt_update():
                    raise
                updated = True  # a clean machine has no package lists: update once, retry
                log("apt-get update (package lists missing or stale)")
                subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
                _fetch_one(pkg)
        except ChessVLMError as error:
            results[name] = str(error)
            log(f"{pkg.label}: FAILED: {error}")
            continue
        results[name] = "ok"
        log(f"{pkg.label}: fetched into {_fetched_root(name)}")
    return results


def _can_apt_update() -> bool:
    return shutil.which("apt-get") is not None and hasattr(os, "geteuid") and os.geteuid() == 0


def _run(command: list[str], cwd: str, what: str) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ChessVLMError(f"{what}: {' '.join(command)} failed: {error}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ChessVLMError(f"{what}: {' '.join(command)} failed: {tail[0]}")


def _fetch_one(pkg: ArtPackage) -> None:
    root = _fetched_root(pkg.name)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        stage = Path(tmp) / "stage"
        stage.mkdir()
        if pkg.registry == "pypi":
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "-q",
                    "-d",
                    tmp,
                    f"{pkg.name}=={pkg.version}",
                ],
                tmp,
                pkg.label,
            )
            wheels = list(Path(tmp).glob("*.whl"))
            if not wheels:
                raise ChessVLMError(f"{pkg.label}: pip downloaded no wheel")
            with zipfile.ZipFile(wheels[0]) as wheel:
                wheel.extractall(stage, [m for m in wheel.namelist() if m.startswith(pkg.keep)])
        else:
            if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
                raise ChessVLMError(f"{pkg.label}: needs apt-get and dpkg-deb (Debian/Ubuntu)")
            _run(["apt-get", "download", f"{pkg.name}={pkg.version}"], tmp, pkg.label)
            debs = list(Path(tmp).glob("*.deb"))
            if not debs:
                raise ChessVLMError(f"{pkg.label}: apt-get downloaded no .deb")
            _run(["dpkg-deb", "-x", str(debs[0]), str(stage)], tmp, pkg.label)
            if pkg.keep:
                for path in sorted(stage.rglob("*"), reverse=True):
                    if path.is_file() and not str(path.relative_to(stage)).startswith(pkg.keep):
                        path.unlink()
        (stage / ".complete").write_text(pkg.label + "\n")
        if root.exists():
            shutil.rmtree(root)
        stage.rename(root)
