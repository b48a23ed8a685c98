"""Board images for the board reader: robust decoding to one square RGB array per image.

Training, evaluation and `chessvlm predict` all go through `open_board_image`, `scene_array`
and `crop_board`, so a board is resampled the same way whatever the command. Bad files raise
`InputError` naming the file.

A board may not fill its image (a margin, a frame, coordinates outside the squares): the
reader's locator sees the whole image (`scene_array`), then the squares are cut out at the
box it found (`crop_board`). Boxes are fractions of the image (left, top, right, bottom), so
they hold whatever size the image was decoded at.
"""

from __future__ import annotations

import glob
import io
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chessvlm.errors import InputError

T = TypeVar("T")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Below 8 px per square the pieces are a few pixels and no reader can be trusted.
MIN_SIDE = 64
# A board is square; allow margins, frames, coordinates outside the squares and off crops,
# but refuse e.g. a whole screenshot.
MAX_ASPECT = 1.6
FULL_FRAME = (0.0, 0.0, 1.0, 1.0)
# A located box narrower than this (in the image's pixels) found no board.
MIN_BOX_PIXELS = 8
# The image's size in its file, kept in `Image.info`: a JPEG decoded at a reduced scale is
# smaller, and pixel boxes from labels are in the file's pixels.
SOURCE_SIZE = "chessvlm_source_size"
# PIL's decompression-bomb guard, raised: a 12k x 12k scan is a plausible, if silly, input.
MAX_PIXELS = 150_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def open_board_image(source: str | Path | bytes, draft_size: int | None = None) -> Image.Image:
    """Decode a board image to RGB, checked to be a plausible board.

    Grayscale, palette, 16-bit and transparent images are converted (transparency over white,
    as a page would show it); EXIF rotation is applied. `draft_size` lets JPEG decode directly
    at a reduced scale no smaller than that. Raises `InputError` for files that are missing,
    empty, not images, truncated, too small, far from square or too large.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    image = _open(source, name, draft_size)
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise InputError(name, f"image is {width}x{height} px; a board needs {MIN_SIDE} px or more")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InputError(
            name,
            f"image is {width}x{height} px, too far from square to be one board (a board with "
            f"margins is read up to {MAX_ASPECT}:1)",
        )
    rgb = _to_rgb(image)
    rgb.info[SOURCE_SIZE] = image.info.get(SOURCE_SIZE, image.size)
    return rgb


def open_image(source: str | Path | bytes) -> Image.Image:
    """Decode any picture (a screenshot, a page) to RGB as `open_board_image` does, without
    the checks that it is one board. Raises `InputError` for files that are missing, empty,
    not images, truncated or too large."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    image = _open(source, name, None)
    rgb = _to_rgb(image)
    rgb.info[SOURCE_SIZE] = image.size
    return rgb


def load_board_image(source: str | Path | bytes, size: int) -> np.ndarray:
    """A board image as a `size` x `size` x 3 uint8 RGB array (see `open_board_image`)."""
    return crop_board(open_board_image(source, draft_size=size), FULL_FRAME, size)


def crop_board(image: Image.Image, box: Sequence[float], size: int) -> np.ndarray:
    """The part of `image` inside `box` (fractions of the image: left, top, right, bottom)
    resampled to a `size` x `size` x 3 uint8 array."""
    width, height = image.size
    left, top, right, bottom = box
    pixels = (left * width, top * height, right * width, bottom * height)
    # reducing_gap: a fast integer pre-reduction of big images before the bilinear filter.
    resized = image.resize((size, size), Image.Resampling.BILINEAR, box=pixels, reducing_gap=2.0)
    return np.array(resized, dtype=np.uint8)


def usable_box(box: Sequence[float], image: Image.Image) -> tuple[float, float, float, float]:
    """A located `box` (fractions: left, top, right, bottom) clamped to the image; the whole
    image when the box is narrower than `MIN_BOX_PIXELS` (no board found)."""
    left, top, right, bottom = (min(max(float(value), 0.0), 1.0) for value in box)
    width, height = image.size
    if min((right - left) * width, (bottom - top) * height) < MIN_BOX_PIXELS:
        return FULL_FRAME
    return left, top, right, bottom


def crop_to_box(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """The part of `image` inside `box` (fractions: left, top, right, bottom), at the image's
    own resolution, rounded to whole pixels."""
    width, height = image.size
    left, top, right, bottom = box
    return image.crop(
        (round(left * width), round(top * height), round(right * width), round(bottom * height))
    )


def scene_array(image: Image.Image, size: int) -> np.ndarray:
    """The whole image squeezed to `size` x `size` x 3 uint8, as the board locator sees it."""
    return crop_board(image, FULL_FRAME, size)


def load_board_views(
    source: str | Path, size: int, scene_size: int, pixel_box: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """A labelled image for training: its board cut out at `pixel_box` (left, top, right,
    bottom in the file's pixels; None: the whole image) at `size`, the whole image at
    `scene_size`, and the box as fractions of the image."""
    image = open_board_image(source, draft_size=size)
    box = FULL_FRAME
    if pixel_box is not None:
        width, height = image.info[SOURCE_SIZE]
        left, top, right, bottom = (float(value) for value in pixel_box)
        box = (left / width, top / height, right / width, bottom / height)
    return crop_board(image, box, size), scene_array(image, scene_size), box


def load_scene(
    source: str | Path | bytes, size: int, scene_size: int
) -> tuple[Image.Image, np.ndarray]:
    """An image to read: decoded (a JPEG at a reduced scale that keeps a board within it at
    `size` px or more) and squeezed to `scene_size` for the locator."""
    image = open_board_image(source, draft_size=2 * size)
    return image, scene_array(image, scene_size)


def _open(source: str | Path | bytes, name: str, draft_size: int | None) -> Image.Image:
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.is_file():
            raise InputError(name, "no such image file")
        if path.stat().st_size == 0:
            raise InputError(name, "empty file")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        image.info[SOURCE_SIZE] = image.size
        if draft_size:
            # JPEG decodes at a reduced scale directly: huge photos load in milliseconds.
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        return ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as error:
        raise InputError(name, f"image too large ({error})") from None
    except UnidentifiedImageError:
        raise InputError(name, "not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InputError(name, f"cannot decode image ({error})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float grayscale: stretch to 8 bits rather than let convert() clip.
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0
        image = Image.fromarray(scaled.astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def collect_image_paths(
    arguments: Sequence[str], suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> list[tuple[str, str | None]]:
    """Expand files, folders and glob patterns into `(path, problem)` pairs, in the given order.

    A folder gives its files with one of `suffixes` (image files by default), sorted; a
    pattern the shell did not expand is expanded here. An argument that matches nothing
    comes back with a problem instead of stopping the others.
    """
    items: list[tuple[str, str | None]] = []
    for argument in arguments:
        if os.path.isdir(argument):
            found = sorted(
                str(path)
                for path in Path(argument).iterdir()
                if path.is_file() and path.suffix.lower() in suffixes
            )
            items.extend((path, None) for path in found)
            if not found:
                kinds = "image or PDF files" if ".pdf" in suffixes else "image files"
                items.append((argument, f"folder holds no {kinds}"))
        elif os.path.exists(argument) or not glob.has_magic(argument):
            items.append((argument, None))
        else:
            matches = sorted(path for path in glob.glob(argument) if os.path.isfile(path))
            items.extend((path, None) for path in matches)
            if not matches:
                items.append((argument, "no file matches this pattern"))
    return items


def iter_loaded(
    sources: Sequence[str | Path],
    load: Callable[[str | Path], T],
    *,
    workers: int = 2,
    lookahead: int = 128,
) -> Iterator[tuple[T | None, InputError | None]]:
    """Apply `load` (e.g. `load_board_image` at a size) to each source in a small thread pool.

    Pillow releases the GIL while decoding, so threads overlap decoding with the caller's
    work. Yields `(value, None)` or `(None, error)` per source, in order, with at most
    `lookahead` images decoded ahead of the caller so that memory stays bounded.
    """

    def guarded(source: str | Path) -> tuple[T | None, InputError | None]:
        try:
            return load(source), None
        except InputError as error:
            return None, error

    pending: deque[Future] = deque()
    remaining = iter(sources)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for source in islice(remaining, lookahead):
            pending.append(pool.submit(guarded, source))
        while pending:
            result = pending.popleft().result()
            for source in islice(remaining, 1):
                pending.append(pool.submit(guarded, source))
            yield result
