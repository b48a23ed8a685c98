"""Synthetic scenes: boards in page-like layouts, for training and testing the board finder.

A scene is a whole picture a user might hand to `chessvlm predict`: a chess-site screenshot
(side panels, move list, player bars, evaluation bar, chat, other pictures; dark or light), a
book or magazine page (paragraphs and 2-6 captioned diagrams, sometimes scanned a few degrees
askew), a page of several boards, or a negative with no chess board at all (text, photo-like
textures, draughts boards, spreadsheets, other checkered patterns). Each board is drawn by
`rendering.render_board` with the looks of a style, so `designs="held-out"` scenes show only
designs and looks the seen-designs scenes never draw.

Labels: every board's four corners (the 8x8 squares' outline, clockwise from the top-left as
the image shows it, in pixel-edge coordinates) and its placement FEN, in reading order.
`chessvlm data scenes` writes them as `scenes.jsonl` beside the images.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import chess
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from chessvlm.errors import ChessVLMError
from chessvlm.io import JsonlAppender
from chessvlm.rendering import (
    STYLES,
    board_box,
    render_board,
    sample_render_params,
)
from chessvlm.sources import SyntheticPosition, iter_synthetic_positions

SCREEN_SIZE = (1280, 800)
SCENE_KINDS = ("screenshot", "multi", "page", "negative")
# How often each kind is drawn by `compose_scene` when no kind is asked for.
KIND_WEIGHTS = (0.45, 0.1, 0.25, 0.2)
NEGATIVE_KINDS = ("text", "texture", "draughts", "spreadsheet", "checkers")
DESIGN_STYLES = {"seen": "designs-seen", "held-out": "designs-held-out"}
# Squares from 12 px to a full-screen board.
MIN_SQUARE = 12
LABELS_FILE = "scenes.jsonl"
# The words of made-up paragraphs, captions and chat.
_VOCABULARY = (
    "the white king bishop knight rook queen pawn move black attack defends after position "
    "opening endgame game with a strong threat on file rank diagonal sacrifice wins draw "
    "castles centre square plan must because however and of to in is it that this which"
)
_WORDS = tuple(_VOCABULARY.split())
_DARK_THEME = {"background": (38, 36, 33), "panel": (48, 46, 43), "ink": (190, 190, 185)}
_LIGHT_THEME = {"background": (245, 245, 245), "panel": (228, 228, 228), "ink": (50, 50, 50)}


@dataclasses.dataclass(frozen=True)
class SceneBoard:
    """One board drawn in a scene: its squares' corners (tl, tr, br, bl; image pixels),
    its placement FEN, which side is at the bottom and the render look's name."""

    corners: tuple[tuple[float, float], ...]
    fen: str
    flipped: bool
    look: str

    def to_json(self) -> dict:
        """The label as a JSON object."""
        corners = [[round(x, 2), round(y, 2)] for x, y in self.corners]
        return {"corners": corners, "fen": self.fen, "flipped": self.flipped, "look": self.look}


@dataclasses.dataclass
class Scene:
    """A composed picture and the boards in it, in reading order."""

    image: Image.Image
    kind: str
    boards: list[SceneBoard]


@dataclasses.dataclass
class _Composer:
    """Draws the parts of scenes from one random stream and one stream of positions."""

    rng: random.Random
    positions: Callable[[], SyntheticPosition]
    style: str

    def board(self, square: int) -> tuple[Image.Image, SceneBoard]:
        """A rendered board with `square`-pixel squares and its label relative to the
        image's top-left."""
        params = sample_render_params(self.style, self.rng)
        size = 8 * square
        looks: dict = {"size": size, "margin": (0, 0, 0, 0)}
        if params.lowres and params.lowres > square:
            looks["lowres"] = 0
        params = dataclasses.replace(params, **looks)
        position = self.positions()
        image = render_board(position.board, params, position.move)
        left, top, right, bottom = board_box(params)
        corners = ((left, top), (right, top), (right, bottom), (left, bottom))
        label = SceneBoard(corners, position.board.board_fen(), params.flipped, params.name)
        return image, label

    def words(self, count: int) -> str:
        return " ".join(self.rng.choice(_WORDS) for _ in range(count))

    def moves(self, count: int) -> list[str]:
        board = chess.Board()
        lines = []
        for number in range(1, count + 1):
            sans = []
            for _ in range(2):
                legal = list(board.legal_moves)
                if not legal:
                    break
                move = self.rng.choice(legal)
                sans.append(board.san(move))
                board.push(move)
            if not sans:
                break
            lines.append(f"{number}. {' '.join(sans)}")
        return lines


def _font(px: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    return _font_file("DejaVuSans-Bold.ttf" if bold else "DejaVuSerif.ttf", max(6, px))


@functools.lru_cache(maxsize=64)
def _font_file(name: str, px: int) -> ImageFont.FreeTypeFont:
    import matplotlib  # only its bundled DejaVu fonts

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), px)


def _shifted(label: SceneBoard, by: tuple[float, float]) -> SceneBoard:
    corners = tuple((x + by[0], y + by[1]) for x, y in label.corners)
    return dataclasses.replace(label, corners=corners)


def _text_block(
    draw: ImageDraw.ImageDraw,
    composer: _Composer,
    box: tuple[int, int, int, int],
    px: int,
    ink: tuple[int, int, int],
    lines: Sequence[str] | None = None,
) -> None:
    """Fill `box` with lines of text (`lines`, else random words) in `px`-pixel type."""
    left, top, right, bottom = box
    font = _font(px)
    y = top
    index = 0
    while y + px <= bottom:
        if lines is not None:
            if index >= len(lines):
                return
            text = lines[index]
        else:
            text = composer.words(max(1, (right - left) // (px * 3)))
        draw.text((left, y), text, fill=ink, font=font)
        y += round(px * 1.5)
        index += 1


# --------------------------------------------------------------------------- screenshots


def _screen(rng: random.Random) -> tuple[Image.Image, ImageDraw.ImageDraw, dict]:
    """An empty chess-site window in a dark or light theme: canvas, its drawer, the theme."""
    theme = _DARK_THEME if rng.random() < 0.5 else _LIGHT_THEME
    canvas = Image.new("RGB", SCREEN_SIZE, theme["background"])
    return canvas, ImageDraw.Draw(canvas), theme


def _screenshot(composer: _Composer) -> Scene:
    rng = composer.rng
    width, height = SCREEN_SIZE
    canvas, draw, theme = _screen(rng)
    bar = rng.randint(24, 44)  # player bars above and below the board
    largest = (height - 2 * bar - 16) // 9  # room for a frame and coordinates outside
    square = round(math.exp(rng.uniform(math.log(MIN_SQUARE), math.log(largest))))
    board, label = composer.board(square)
    board_w, board_h = board.size
    eval_width = rng.choice((0, 0, rng.randint(8, 24)))
    left = rng.randint(10, max(10, width - board_w - eval_width - 360))
    top = rng.randint(bar + 4, max(bar + 4, height - board_h - bar - 4))
    canvas.paste(board, (left + eval_width, top))
    label = _shifted(label, (left + eval_width, top))
    if eval_width:
        _eval_bar(draw, rng, (left, top, left + eval_width - 2, top + board_h))
    for y in (top - bar, top + board_h + 2):
        _player_bar(draw, composer, theme, (left, y, left + board_w + eval_width, y + bar - 4))
    panel_left = left + board_w + eval_width + 16
    if panel_left < width - 120:
        _side_panel(draw, composer, theme, (panel_left, 10, width - 10, height - 10))
    if left > 140:
        _side_panel(draw, composer, theme, (10, 10, left - 16, height - 10))
    board_area = (left, top - bar, left + board_w + eval_width, top + board_h + bar)
    _pictures(canvas, composer, avoid=[board_area])
    return Scene(canvas, "screenshot", [label])


def _eval_bar(draw: ImageDraw.ImageDraw, rng: random.Random, box: tuple[int, int, int, int]):
    left, top, right, bottom = box
    split = rng.randint(top, bottom)
    draw.rectangle((left, top, right, split), fill=(64, 61, 57))
    draw.rectangle((left, split, right, bottom), fill=(240, 240, 240))


def _player_bar(draw, composer: _Composer, theme: dict, box: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = box
    if right - left < 60 or bottom - top < 8:
        return
    height = bottom - top
    draw.rectangle(box, fill=theme["panel"])
    avatar = (left + 2, top + 2, left + height - 2, bottom - 2)
    draw.rectangle(avatar, fill=tuple(composer.rng.randrange(256) for _ in range(3)))
    name = f"{composer.rng.choice(_WORDS).title()}{composer.rng.randint(1, 9999)}"
    draw.text((left + height + 6, top + 2), name, fill=theme["ink"], font=_font(height // 2, True))
    clock = f"{composer.rng.randint(0, 59)}:{composer.rng.randint(0, 59):02d}"
    if right - left > 200:
        draw.text((right - 4 * height, top + 2), clock, fill=theme["ink"], font=_font(height // 2))


def _side_panel(draw, composer: _Composer, theme: dict, box: tuple[int, int, int, int]) -> None:
    """A move list and a chat box in panels, as chess sites show beside the board."""
    left, top, right, bottom = box
    split = composer.rng.randint(top + (bottom - top) // 3, top + 2 * (bottom - top) // 3)
    draw.rectangle((left, top, right, split - 6), fill=theme["panel"])
    px = composer.rng.randint(11, 16)
    moves = composer.moves(((split - top) // (px + px // 2)) + 1)
    _text_block(draw, composer, (left + 8, top + 8, right - 8, split - 12), px, theme["ink"], moves)
    draw.rectangle((left, split, right, bottom), fill=theme["panel"])
    _text_block(draw, composer, (left + 8, split + 8, right - 8, bottom - 8), px, theme["ink"])


def _pictures(canvas: Image.Image, composer: _Composer, avoid: list[tuple[int, ...]]) -> None:
    """A few other pictures (photos, adverts, thumbnails) where there is room."""
    rng = composer.rng
    width, height = canvas.size
    for _ in range(rng.randint(0, 3)):
        w, h = rng.randint(40, 220), rng.randint(40, 160)
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
        if any(_overlaps((x, y, x + w, y + h), box) for box in avoid):
            continue
        canvas.paste(_photo(rng, w, h), (x, y))
        avoid.append((x, y, x + w, y + h))


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _photo(rng: random.Random, width: int, height: int) -> Image.Image:
    """A photo-like picture: smooth random colour fields with fine noise."""
    generator = np.random.default_rng(rng.randrange(2**32))
    cells = generator.random((rng.randint(2, 6), rng.randint(2, 6), 3)) * 255
    smooth = Image.fromarray(cells.astype(np.uint8), "RGB").resize(
        (width, height), Image.Resampling.BICUBIC
    )
    grain = generator.normal(0, rng.uniform(2, 14), (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(smooth) + grain, 0, 255).astype(np.uint8), "RGB")


def _multi(composer: _Composer) -> Scene:
    """Several games at once (a broadcast or a study page): 2-6 boards in a grid."""
    rng = composer.rng
    width, height = SCREEN_SIZE
    canvas, draw, theme = _screen(rng)
    columns, rows = rng.choice(((2, 1), (3, 1), (2, 2), (3, 2)))
    cell_w, cell_h = width // columns, height // rows
    square = max(MIN_SQUARE, min(cell_w - 40, cell_h - 60) // 9 - rng.randint(0, 10))
    labels = []
    for row in range(rows):
        for column in range(columns):
            board, label = composer.board(square)
            x = column * cell_w + max(0, cell_w - board.width) // 2
            y = row * cell_h + 30 + rng.randint(0, max(0, cell_h - board.height - 60))
            canvas.paste(board, (x, y))
            labels.append(_shifted(label, (x, y)))
            _player_bar(draw, composer, theme, (x, y - 26, x + board.width, y - 4))
    return Scene(canvas, "multi", labels)


# --------------------------------------------------------------------------- book pages


def _page(composer: _Composer) -> Scene:
    """A book or magazine page: paragraphs and 2-6 captioned diagrams in rows."""
    rng = composer.rng
    width = rng.randint(900, 1240)
    height = round(width * 1.414)
    paper = rng.choice(((255, 255, 255), (247, 243, 232), (240, 236, 225)))
    canvas = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(canvas)
    margin = round(width * rng.uniform(0.07, 0.12))
    px = round(width * rng.uniform(0.012, 0.018))
    ink = (30, 30, 30)
    diagrams = rng.randint(2, 6)
    per_row = rng.choice((1, 2, 2, 3))
    usable = width - 2 * margin
    square = max(MIN_SQUARE, min(usable // per_row - 30, height // 4) // 9 - rng.randint(0, 12))
    side = 9 * square  # room for a frame and coordinates outside
    labels = []
    y = margin
    number = rng.randint(1, 200)
    while len(labels) < diagrams:
        text_height = rng.randint(1, 6) * px * 3 // 2
        _text_block(draw, composer, (margin, y, width - margin, y + text_height), px, ink)
        y += text_height + px
        in_row = min(per_row, diagrams - len(labels))
        if y + side + 2 * px > height - margin:
            break
        gap = (usable - in_row * side) // (in_row + 1)
        for column in range(in_row):
            x = margin + gap + column * (side + gap)
            board, label = composer.board(square)
            canvas.paste(board, (x, y))
            labels.append(_shifted(label, (x, y)))
            caption = f"Diagram {number}: {rng.choice(('White', 'Black'))} to move"
            draw.text((x, y + board.height + 4), caption, fill=ink, font=_font(px))
            number += 1
        y += side + 2 * px + 8
    _text_block(draw, composer, (margin, y, width - margin, height - margin), px, ink)
    if not labels:
        return _page(composer)
    scene = Scene(canvas, "page", labels)
    return _scanned(scene, rng) if rng.random() < 0.4 else scene


def _scanned(scene: Scene, rng: random.Random) -> Scene:
    """The page as a scanner gives it: turned up to 3 degrees, greyed, a little blurred."""
    from PIL import ImageFilter

    angle = rng.uniform(-3.0, 3.0)
    width, height = scene.image.size
    turned = scene.image.rotate(
        angle, Image.Resampling.BICUBIC, fillcolor=(250, 250, 250), center=(width / 2, height / 2)
    )
    if rng.random() < 0.5:
        turned = turned.convert("L").convert("RGB")
    if rng.random() < 0.5:
        turned = turned.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    # PIL turns counter-clockwise by `angle` degrees about the centre (y grows downwards).
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)

    def turn(point: tuple[float, float]) -> tuple[float, float]:
        x, y = point[0] - width / 2, point[1] - height / 2
        return (width / 2 + x * cos + y * sin, height / 2 - x * sin + y * cos)

    boards = [
        dataclasses.replace(board, corners=tuple(turn(p) for p in board.corners))
        for board in scene.boards
    ]
    return Scene(turned, scene.kind, boards)


# --------------------------------------------------------------------------- negatives


def _negative(composer: _Composer) -> Scene:
    """A picture with no chess board: text, a photo-like texture, a draughts board (10x10),
    a spreadsheet, or a checkered pattern that is not 8x8."""
    rng = composer.rng
    kind = rng.choice(NEGATIVE_KINDS)
    width, height = SCREEN_SIZE if rng.random() < 0.5 else (1000, 1414)
    canvas = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    if kind == "text":
        px = rng.randint(10, 24)
        _text_block(draw, composer, (40, 40, width - 40, height - 40), px, (30, 30, 30))
    elif kind == "texture":
        canvas.paste(_photo(rng, width, height))
    elif kind == "spreadsheet":
        _spreadsheet(draw, rng, width, height)
    else:
        _text_block(draw, composer, (40, 20, width - 40, height - 20), 14, (60, 60, 60))
        cells = rng.choice((10, 10, 12)) if kind == "draughts" else rng.choice((3, 4, 5, 6, 7, 9))
        _checkered(canvas, rng, cells, discs=kind == "draughts")
    return Scene(canvas, f"negative-{kind}", [])


def _spreadsheet(draw, rng: random.Random, width: int, height: int) -> None:
    row, column = rng.randint(18, 30), rng.randint(60, 120)
    band = rng.random() < 0.5
    for index, y in enumerate(range(0, height, row)):
        if band and index % 2:
            draw.rectangle((0, y, width, y + row), fill=(232, 240, 250))
        draw.line((0, y, width, y), fill=(200, 200, 200))
        for x in range(0, width, column):
            draw.text((x + 4, y + 3), f"{rng.uniform(-999, 9999):.2f}", fill=(20, 20, 20))
    for x in range(0, width, column):
        draw.line((x, 0, x, height), fill=(200, 200, 200))


def _checkered(canvas: Image.Image, rng: random.Random, cells: int, discs: bool) -> None:
    """A `cells` x `cells` checkered board (with draughts pieces when `discs`) somewhere on
    the canvas."""
    width, height = canvas.size
    cell = rng.randint(MIN_SQUARE, max(MIN_SQUARE, (min(width, height) - 40) // cells))
    light = tuple(rng.randint(180, 255) for _ in range(3))
    dark = tuple(rng.randint(40, 150) for _ in range(3))
    x0 = rng.randint(0, width - cells * cell)
    y0 = rng.randint(0, height - cells * cell)
    draw = ImageDraw.Draw(canvas)
    for row in range(cells):
        for column in range(cells):
            box = (x0 + column * cell, y0 + row * cell, x0 + (column + 1) * cell - 1)
            box = (*box, y0 + (row + 1) * cell - 1)
            draw.rectangle(box, fill=light if (row + column) % 2 == 0 else dark)
            if discs and (row + column) % 2 and (row < 4 or row >= cells - 4):
                colour = (250, 250, 240) if row >= cells - 4 else (20, 20, 20)
                inset = cell // 8
                disc = (box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset)
                draw.ellipse(disc, colour)


# --------------------------------------------------------------------------- public API

_KIND_DRAWERS: dict[str, Callable[[_Composer], Scene]] = {
    "screenshot": _screenshot,
    "multi": _multi,
    "page": _page,
    "negative": _negative,
}


def scene_stream(
    seed: int | str, designs: str, style: str | None = None
) -> Callable[[str | None], Scene]:
    """A function drawing scenes one after another, deterministic for `seed`; call it with a
    kind from `SCENE_KINDS`, or None for one drawn by `KIND_WEIGHTS`. `designs` is "seen"
    (training: only the designs and looks of `designs-seen`) or "held-out" (testing);
    `style` draws the boards from another style of `rendering.STYLES` instead of `designs`'
    (the random draws still follow `seed` and `designs`)."""
    if designs not in DESIGN_STYLES:
        raise ChessVLMError(f"designs must be one of {', '.join(DESIGN_STYLES)}, not {designs!r}")
    rng = random.Random(f"chessvlm-scenes/{seed}/{designs}")
    positions = iter_synthetic_positions(f"scenes/{seed}/{designs}")
    if style is not None and style not in STYLES:
        raise ChessVLMError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    composer = _Composer(rng, positions.__next__, style or DESIGN_STYLES[designs])

    def draw(kind: str | None = None) -> Scene:
        if kind is None:
            kind = rng.choices(SCENE_KINDS, KIND_WEIGHTS)[0]
        if kind not in _KIND_DRAWERS:
            raise ChessVLMError(f"scene kind must be one of {', '.join(SCENE_KINDS)}, not {kind!r}")
        return _KIND_DRAWERS[kind](composer)

    return draw


def write_scenes(
    out: str | Path,
    count: int,
    seed: int = 0,
    designs: str = "held-out",
    kind: str | None = None,
    style: str | None = None,
) -> Path:
    """Draw `count` scenes (of one `kind`, or of every kind) into `out/images/` and their
    labels into `out/scenes.jsonl`, one line a scene (`id`, `image_path`, `kind`, `width`,
    `height`, `boards`). Written as they come; a rerun skips the scenes already listed.
    `style` as in `scene_stream`."""
    from tqdm import tqdm

    from chessvlm.io import atomic_write_bytes

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    draw = scene_stream(seed if kind is None else f"{seed}/{kind}", designs, style)
    with JsonlAppender(out / LABELS_FILE) as labels:
        for index in tqdm(range(count), desc=f"scenes ({designs} designs)"):
            scene = draw(kind)  # drawn even when done, so the stream is the same on a rerun
            scene_id = f"scene_{index:06d}"
            if scene_id in labels.done_ids:
                continue
            path = f"images/{scene_id}.png"
            atomic_write_bytes(out / path, _png(scene.image), durable=False)
            labels.write(
                {
                    "id": scene_id,
                    "image_path": path,
                    "kind": scene.kind,
                    "width": scene.image.width,
                    "height": scene.image.height,
                    "boards": [board.to_json() for board in scene.boards],
                }
            )
    return out / LABELS_FILE


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
