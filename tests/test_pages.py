"""Pages for the board finder: images as they are, PDF pages rendered one at a time, and
clear errors for files and pages that cannot be used."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from chessvlm.pages import Page, collect_page_paths, iter_pages


def write_pdf(path: Path, sizes: list[tuple[int, int]]) -> Path:
    """A PDF with one white page per size (in points at 72 dpi)."""
    pages = [Image.new("RGB", size, "white") for size in sizes]
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    return path


def encrypted_pdf(path: Path) -> Path:
    """A PDF whose trailer asks for a password (the standard security handler)."""
    buffer = io.BytesIO()
    Image.new("RGB", (100, 100), "white").save(buffer, format="PDF")
    lock = (
        b"/Encrypt << /Filter /Standard /V 1 /R 2 /Length 40 /P -4 /O <"
        + b"00" * 32
        + b"> /U <"
        + b"11" * 32
        + b"> >>\n/ID [<0123456789abcdef0123456789abcdef> <0123456789abcdef0123456789abcdef>]\n"
    )
    path.write_bytes(buffer.getvalue().replace(b"/Root 3 0 R\n", b"/Root 3 0 R\n" + lock))
    return path


def test_pdf_pages_are_rendered_at_the_dpi_one_by_one(tmp_path):
    pdf = write_pdf(tmp_path / "book.pdf", [(300, 400), (200, 100)])
    pages = list(iter_pages([str(pdf)], dpi=144))
    assert [(page.number, page.image.size) for page in pages] == [(1, (600, 800)), (2, (400, 200))]
    assert [page.id for page in pages] == [f"{pdf}#page=1", f"{pdf}#page=2"]


def test_pages_already_done_are_not_rendered(tmp_path):
    pdf = write_pdf(tmp_path / "book.pdf", [(100, 100)] * 3)
    pages = list(iter_pages([str(pdf)], done={f"{pdf}#page=2"}))
    assert [page.image is None for page in pages] == [False, True, False]


def test_images_are_pages_of_their_own(tmp_path):
    Image.new("RGBA", (1280, 800), (0, 0, 0, 0)).save(tmp_path / "shot.png")
    (page,) = iter_pages([str(tmp_path / "shot.png")])
    assert page == Page(str(tmp_path / "shot.png"), None, page.image)
    assert page.image.mode == "RGB" and page.image.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda path: path.write_bytes(b""), "book.pdf: empty file"),
        (lambda path: path.write_bytes(b"%PDF-1.4 torn"), "book.pdf: not a PDF that can be read"),
        (encrypted_pdf, "book.pdf: the PDF is encrypted: it needs a password"),
    ],
    ids=["empty", "corrupt", "encrypted"],
)
def test_bad_pdfs_are_named_and_the_others_go_on(tmp_path, make, problem):
    bad = tmp_path / "book.pdf"
    make(bad)
    good = write_pdf(tmp_path / "good.pdf", [(100, 100)])
    first, second = iter_pages([str(bad), str(good)])
    assert first.image is None and problem in str(first.error)
    assert second.image is not None


def test_pages_over_the_pixel_limit_are_refused_by_page(tmp_path):
    pdf = write_pdf(tmp_path / "book.pdf", [(100, 100), (2000, 2000)])
    Image.new("RGB", (3000, 2000)).save(tmp_path / "scan.png")
    pages = list(iter_pages([str(pdf), str(tmp_path / "scan.png")], dpi=72, max_pixels=3_000_000))
    assert pages[0].image is not None
    assert "book.pdf: page 2: 2000x2000 px is over the limit of 3 megapixels" in str(pages[1].error)
    assert "scan.png: 3000x2000 px is over the limit" in str(pages[2].error)


def test_folders_give_their_images_and_pdfs(tmp_path):
    write_pdf(tmp_path / "b.pdf", [(100, 100)])
    Image.new("RGB", (80, 80)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("no")
    names = [Path(path).name for path, _ in collect_page_paths([str(tmp_path)])]
    assert names == ["a.png", "b.pdf"]
