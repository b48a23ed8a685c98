"""Training augmentation for the board reader, on whole batches of decoded boards.

It imitates what users feed: boards cropped a little loose or tight (margins, shifts, a
slightly wrong aspect), shown at lower resolution (blur), in other colours, and saved as JPEG;
and, since users' piece designs are not ours, it redraws ours a little: each piece scaled,
squeezed, turned and moved within its square, its strokes thickened or thinned.
Every transform of `augment_batch` keeps each square inside its own image cell, so labels do
not move. `augment_scenes` (for the board locator) moves the board inside a wider margin and
moves its box label with it.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Sampling parameter = input extent / output extent: above 1 the board shrinks inside a
# margin, below 1 its outer ring of squares is cropped by up to ~1/5 square.
SCALE_RANGE = (0.95, 1.1)
SHIFT = 0.04  # in [-1, 1] image coordinates: up to 1/6 of a square
# Scenes: the whole image shrinks by up to this factor inside a new margin.
SCENE_SCALE_RANGE = (1.0, 1.6)
MIN_RESOLUTION = 0.3
# Per square: input extent / output extent (above 1 the piece shrinks), the height's extra
# factor, a turn in radians and a shift in [-1, 1] square coordinates.
PIECE_SCALE_RANGE = (0.88, 1.18)
PIECE_ASPECT_RANGE = (0.9, 1.1)
PIECE_TURN = 0.07
PIECE_SHIFT = 0.08
JPEG_QUALITY = (25, 95)
# Scenes: the share given clutter in their margins, and the least margin (a fraction of the
# image) that gets any.
CLUTTER_CHANCE = 0.5
MIN_CLUTTER_ROOM = 0.05


def _uniform(generator: torch.Generator, size: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


def _chance(generator: torch.Generator, size: int, probability: float) -> torch.Tensor:
    return torch.rand(size, generator=generator) < probability


def augment_batch(
    images: torch.Tensor, generator: torch.Generator, reframe: bool = True
) -> torch.Tensor:
    """uint8 boards B x 3 x S x S -> augmented float boards in [0, 1].

    `reframe` False keeps each board's edges where they are (no loose or tight crop): for
    models that are always given the board cut at its exact corners.
    """
    # The transforms below work in place on this one float copy of the batch (25 MB at
    # training's 32 x 256 x 256): copying it for each one cost time (bench_train_steps.py).
    x = images.to(torch.float32).mul_(1 / 255)
    _redraw_pieces(x, generator)
    _stroke_weight(x, generator)
    if reframe:
        _reframe(x, generator)
    _lower_resolution(x, generator)
    x = _recolour(x, generator)
    _jpeg(x, generator)
    noisy = _chance(generator, len(x), 0.2).nonzero().flatten()
    sigma = _uniform(generator, len(noisy), 0.0, 0.03).view(-1, 1, 1, 1)
    x[noisy] += sigma * torch.randn(x[noisy].shape, generator=generator)
    return x.clamp_(0.0, 1.0)


def augment_scenes(
    scenes: torch.Tensor, boxes: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 whole images B x 3 x L x L and their board boxes B x 4 (fractions of the image:
    left, top, right, bottom) -> augmented float images in [0, 1] and the moved boxes."""
    x = scenes.to(torch.float32).mul_(1 / 255)
    chosen = _chance(generator, len(x), 0.5).nonzero().flatten()
    boxes = boxes.clone()
    if len(chosen):
        n = len(chosen)
        scale = _uniform(generator, 2 * n, *SCENE_SCALE_RANGE).view(n, 2)
        # In [-1, 1] coordinates an input point p lands at (p - shift) / scale; any shift that
        # keeps the whole box inside the frame is allowed.
        low = 2 * boxes[chosen, 2:] - 1 - scale
        high = 2 * boxes[chosen, :2] - 1 + scale
        shift = low + (high - low) * torch.rand(n, 2, generator=generator)
        x[chosen] = _warp(x[chosen], scale, shift, generator)
        moved = (2 * boxes[chosen].view(n, 2, 2) - 1 - shift.view(n, 1, 2)) / scale.view(n, 1, 2)
        boxes[chosen] = ((moved + 1) / 2).view(n, 4)
    _clutter(x, boxes, generator)
    _lower_resolution(x, generator)
    x = _recolour(x, generator)
    return x.clamp_(0.0, 1.0), boxes.clamp_(0.0, 1.0)


def _clutter(x: torch.Tensor, boxes: torch.Tensor, generator: torch.Generator) -> None:
    """Paint, in place, in some scenes' margins what programs and sites put beside a board:
    a panel of grey bars (a move list, names, buttons) on the roomier side, a bar along the
    top (a title bar) and one above or below the board (a player's name and clock). The
    locator must not take them for squares; nothing is painted inside the board's box."""
    for index in _chance(generator, len(x), CLUTTER_CHANCE).nonzero().flatten().tolist():
        scene, box = x[index], boxes[index].tolist()
        draw = torch.rand(7, generator=generator).tolist()
        shade = 0.3 + 0.65 * draw[0]
        _side_panel(scene, box, shade, generator)
        left, top, right, bottom = box
        if draw[1] < 0.4 and top >= MIN_CLUTTER_ROOM:
            _paint(scene, (0.0, 0.0, 1.0, min(top, 0.02 + 0.04 * draw[2])), 0.5 * draw[3])
        room = max(top, 1.0 - bottom)
        if draw[4] < 0.3 and room >= MIN_CLUTTER_ROOM:
            y0 = top - 0.8 * room if top >= 1.0 - bottom else bottom + 0.2 * room
            _paint(scene, (left, y0, right, y0 + 0.5 * room), shade - 0.2 * draw[5])


def _side_panel(
    scene: torch.Tensor, box: list[float], shade: float, generator: torch.Generator
) -> None:
    """Rows of bars of one shade beside the board, on its roomier side, if it has room."""
    left, _, right, _ = box
    room, on_left = max((left, True), (1.0 - right, False))
    if room < MIN_CLUTTER_ROOM:
        return
    gap, contrast, count = torch.rand(3, generator=generator).tolist()
    gap = 0.005 + 0.025 * gap
    panel = room - gap
    x0 = left - gap - panel if on_left else right + gap
    level = shade + (0.05 + 0.25 * contrast) * (1 if shade < 0.6 else -1)
    for _ in range(int(3 + 10 * count)):
        bar_height, bar_width, y0 = torch.rand(3, generator=generator).tolist()
        bar_height = 0.015 + 0.025 * bar_height
        y0 *= 1.0 - bar_height
        _paint(scene, (x0, y0, x0 + panel * (0.3 + 0.7 * bar_width), y0 + bar_height), level)


def _paint(scene: torch.Tensor, box: tuple[float, float, float, float], level: float) -> None:
    """Fill `box` (fractions of the image: left, top, right, bottom) of a C x H x W image
    with one grey `level`, in place."""
    height, width = scene.shape[-2:]
    left, top, right, bottom = box
    rows = slice(round(top * height), round(bottom * height))
    columns = slice(round(left * width), round(right * width))
    scene[:, rows, columns] = min(1.0, max(0.0, level))


def _redraw_pieces(x: torch.Tensor, generator: torch.Generator) -> None:
    """Warp each square of some boards on its own, in place (before any reframing, while the
    squares still sit on the 8x8 grid), its edge pixels filling in what the warp uncovers."""
    chosen = _chance(generator, len(x), 0.5).nonzero().flatten()
    n, side = len(chosen), x.shape[-1]
    if n == 0 or side % 8:
        return
    square = side // 8
    tiles = x[chosen].view(n, 3, 8, square, 8, square).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n * 64, 3, square, square)
    count = n * 64
    scale = _uniform(generator, count, *PIECE_SCALE_RANGE)
    height = scale * _uniform(generator, count, *PIECE_ASPECT_RANGE)
    turn = _uniform(generator, count, -PIECE_TURN, PIECE_TURN)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = scale * turn.cos(), -scale * turn.sin()
    theta[:, 1, 0], theta[:, 1, 1] = height * turn.sin(), height * turn.cos()
    theta[:, :, 2] = _uniform(generator, 2 * count, -PIECE_SHIFT, PIECE_SHIFT).view(count, 2)
    grid = F.affine_grid(theta, list(tiles.shape), align_corners=False)
    warped = F.grid_sample(tiles, grid, mode="bilinear", padding_mode="border", align_corners=False)
    board = warped.view(n, 8, 8, 3, square, square).permute(0, 3, 1, 4, 2, 5)
    x[chosen] = board.reshape(n, 3, side, side)


def _stroke_weight(x: torch.Tensor, generator: torch.Generator) -> None:
    """Thicker dark outlines (a 3x3 minimum) on some boards, thinner (a maximum) on others,
    in place: designs differ as much in line weight as in shape."""
    chosen = _chance(generator, len(x), 0.3)
    thicker = chosen & _chance(generator, len(x), 0.5)
    thinner = chosen & ~thicker
    if thicker.any():
        x[thicker] = _extremum_3x3(x[thicker], torch.minimum)
    if thinner.any():
        x[thinner] = _extremum_3x3(x[thinner], torch.maximum)


def _extremum_3x3(
    x: torch.Tensor, pick: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """The minimum or maximum (`pick`) of each pixel's 3x3 neighbourhood, edges repeated.
    Done as a row pass and a column pass: a tenth of `max_pool2d`'s time at stride 1."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    rows = pick(pick(padded[..., :-2], padded[..., 1:-1]), padded[..., 2:])
    return pick(pick(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def _reframe(x: torch.Tensor, generator: torch.Generator) -> None:
    """Crop some boards a little loose or tight, shifted and slightly squeezed, in place."""
    chosen = _chance(generator, len(x), 0.6).nonzero().flatten()
    n = len(chosen)
    if n == 0:
        return
    scale = _uniform(generator, n, *SCALE_RANGE)
    scale = torch.stack([scale, scale * _uniform(generator, n, 0.97, 1.03)], 1)
    shift = _uniform(generator, 2 * n, -SHIFT, SHIFT).view(n, 2)
    x[chosen] = _warp(x[chosen], scale, shift, generator)


def _warp(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Resample images by a scale and a shift per axis (n x 2 each, x then y: output point p
    samples the input at scale * p + shift, in [-1, 1] coordinates); what falls outside the
    input shows a background of one random colour.

    With no turn, the sampling grid and the share of each output pixel that falls inside the
    input are products of one row and one column: built directly, they cost a fraction of
    `affine_grid` and of sampling a mask of ones."""
    n, _, height, width = x.shape
    columns = _axis_points(width, scale[:, 0], shift[:, 0])  # n x W
    rows = _axis_points(height, scale[:, 1], shift[:, 1])  # n x H
    grid = torch.stack(
        torch.broadcast_tensors(columns.view(n, 1, width), rows.view(n, height, 1)), dim=-1
    )
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = _inside_share(rows, height).view(n, 1, height, 1) * _inside_share(columns, width).view(
        n, 1, 1, width
    )
    # What shows around a loosely cropped board: a page or window background of one colour.
    background = torch.rand(n, 3, 1, 1, generator=generator)
    return moved.add_((1.0 - inside) * background)


def _axis_points(size: int, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Where each output pixel centre of one axis samples the input, in [-1, 1] coordinates
    (`grid_sample` without aligned corners): n x size."""
    centres = (2 * torch.arange(size, dtype=torch.float32) + 1) / size - 1
    return scale.view(-1, 1) * centres + shift.view(-1, 1)


def _inside_share(points: torch.Tensor, size: int) -> torch.Tensor:
    """The weight that bilinear sampling at `points` (in [-1, 1]) gives to pixels inside an
    axis of `size` pixels: 1 well inside, falling to 0 over the pixel beyond each edge."""
    pixel = ((points + 1) * size - 1) / 2
    return torch.minimum(pixel + 1, size - pixel).clamp_(0.0, 1.0)


def _lower_resolution(x: torch.Tensor, generator: torch.Generator) -> None:
    """Blur some boards, in place, by shrinking and enlarging them back."""
    chosen = _chance(generator, len(x), 0.35).nonzero().flatten()
    if len(chosen) == 0:
        return
    size = x.shape[-1]
    low = int(size * float(_uniform(generator, 1, MIN_RESOLUTION, 1.0)))
    small = F.interpolate(x[chosen], size=(low, low), mode="bilinear", antialias=True)
    x[chosen] = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)


def _recolour(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Saturation, contrast, brightness and channel order as one 3x3 colour matrix per board."""
    n = len(x)
    luma = torch.tensor([0.299, 0.587, 0.114])
    saturation = _uniform(generator, n, 0.5, 1.5)
    saturation[_chance(generator, n, 0.1)] = 0.0  # some users feed grayscale scans
    # gray + s * (x - gray), with gray = luma . x
    matrix = saturation.view(n, 1, 1) * torch.eye(3) + (1 - saturation).view(n, 1, 1) * luma
    # Board themes come in every hue: swapping channels makes new ones for free.
    for index in _chance(generator, n, 0.25).nonzero().flatten().tolist():
        matrix[index] = matrix[index, torch.randperm(3, generator=generator)]
    contrast = _uniform(generator, n, 0.7, 1.3).view(n, 1, 1)
    brightness = _uniform(generator, n, 0.75, 1.25).view(n, 1, 1)
    mean = x.mean(dim=(1, 2, 3)).view(n, 1, 1)
    # brightness * (mean + contrast * (M x - mean))
    bias = (brightness * (1 - contrast) * mean).expand(n, 3, 1)
    flat = torch.baddbmm(bias, brightness * contrast * matrix, x.reshape(n, 3, -1))
    return flat.view_as(x).clamp_(0.0, 1.0)


def _jpeg(x: torch.Tensor, generator: torch.Generator) -> None:
    """Save some boards as JPEG of one random quality and decode them back, in place."""
    chosen = _chance(generator, len(x), 0.25).nonzero().flatten().tolist()
    if not chosen:
        return
    quality = int(torch.randint(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, (1,), generator=generator))
    for index in chosen:
        pixels = (x[index] * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
        decoded = np.array(Image.open(buffer).convert("RGB"))
        x[index] = torch.from_numpy(decoded).permute(2, 0, 1).float() / 255.0
