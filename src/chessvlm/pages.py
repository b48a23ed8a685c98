"""Pages to look for boards in: image files as they are, and each page of a PDF rendered to
pixels with pypdfium2 (PDFium, the PDF engine of Chromium).

`iter_pages` turns files, folders and patterns into pages one at a time, so a PDF of
hundreds of pages streams: only one page is in memory. A file or page that cannot be used
(corrupt, encrypted or empty PDF, an image over the pixel limit) comes back as an
`InputError` naming the file and page, and the others go on.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from chessvlm.errors import InputError
from chessvlm.reader.images import IMAGE_SUFFIXES, collect_image_paths, open_image

PDF_SUFFIX = ".pdf"
PAGE_SUFFIXES = (*IMAGE_SUFFIXES, PDF_SUFFIX)
# A book page at 150 dpi shows a 4.5 cm diagram with 33 px squares.
DEFAULT_DPI = 150
# 60 megapixels: an A4 page at 600 dpi is 35; a 12k x 12k scan (144) is refused.
MAX_PAGE_PIXELS = 60_000_000


@dataclass
class Page:
    """One picture to search: a whole image file (`number` None) or a PDF page (1-based)."""

    source: str
    number: int | None
    image: Image.Image | None = None
    error: InputError | None = None

    @property
    def id(self) -> str:
        """A stable name for the page: the file, and `#page=N` for a PDF page."""
        return self.source if self.number is None else f"{self.source}#page={self.number}"


def collect_page_paths(arguments: Sequence[str]) -> list[tuple[str, str | None]]:
    """Files, folders (their images and PDFs) and patterns as `(path, problem)` pairs."""
    return collect_image_paths(arguments, suffixes=PAGE_SUFFIXES)


def iter_pages(
    paths: Sequence[str],
    *,
    dpi: int = DEFAULT_DPI,
    max_pixels: int = MAX_PAGE_PIXELS,
    done: Container[str] = (),
) -> Iterator[Page]:
    """Each page of `paths` in order, loaded when reached; pages whose `id` is in `done`
    come back without an image (a resumed run skips them without rendering them)."""
    for path in paths:
        if Path(path).suffix.lower() == PDF_SUFFIX:
            yield from _pdf_pages(path, dpi, max_pixels, done)
        elif path in done:
            yield Page(path, None)
        else:
            try:
                yield Page(path, None, image=_open_checked(path, max_pixels))
            except InputError as error:
                yield Page(path, None, error=error)


def _open_checked(path: str, max_pixels: int) -> Image.Image:
    try:
        with Image.open(path) as header:
            width, height = header.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        width = height = 0  # open_image names the problem
    if width * height > max_pixels:
        raise InputError(path, _too_large(width, height, max_pixels))
    return open_image(path)


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return (
        f"{width}x{height} px is over the limit of {max_pixels / 1e6:.0f} megapixels; scale "
        "it down (or, for a PDF, pass a lower --dpi)"
    )


def _pdf_pages(path: str, dpi: int, max_pixels: int, done: Container[str]) -> Iterator[Page]:
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(path)
    except (pdfium.PdfiumError, OSError) as error:
        yield Page(path, None, error=InputError(path, _pdf_problem(path, error)))
        return
    try:
        if len(document) == 0:
            yield Page(path, None, error=InputError(path, "the PDF has no pages"))
        for index in range(len(document)):
            page = Page(path, index + 1)
            if page.id not in done:
                try:
                    page.image = _render(document, index, dpi, max_pixels)
                except InputError as error:
                    page.error = InputError(path, f"page {page.number}: {error.problem}")
                except pdfium.PdfiumError as error:
                    page.error = InputError(path, f"page {page.number}: cannot render ({error})")
            yield page
    finally:
        document.close()


def _pdf_problem(path: str, error: Exception) -> str:
    text = str(error)
    if not Path(path).is_file():
        return "no such PDF file"
    if Path(path).stat().st_size == 0:
        return "empty file"
    if "password" in text.lower():
        return "the PDF is encrypted: it needs a password (save an unprotected copy)"
    return f"not a PDF that can be read ({text})"


def _render(document, index: int, dpi: int, max_pixels: int) -> Image.Image:
    page = document[index]
    try:
        width_pt, height_pt = page.get_size()
        scale = dpi / 72.0
        width, height = round(width_pt * scale), round(height_pt * scale)
        if width * height > max_pixels:
            raise InputError("", _too_large(width, height, max_pixels))
        return page.render(scale=scale).to_pil().convert("RGB")
    finally:
        page.close()
