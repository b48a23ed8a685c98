"""The report's document model: headings, paragraphs, tables and images, as Markdown or HTML."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Image:
    """An image file, relative to the report folder."""

    path: str
    alt: str
    width: int | None = None


Cell = str | Image | list[str]  # a list of strings is one line each


@dataclass(frozen=True)
class Heading:
    """A section title."""

    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of plain text."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table with a header row."""

    header: list[str]
    rows: list[list[Cell]]


Block = Heading | Paragraph | Table | Image


def render_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as GitHub-flavoured Markdown."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Image):
            parts.append(_markdown_cell(block))
        else:
            lines = [_markdown_row(block.header), "|" + "---|" * len(block.header)]
            lines += [_markdown_row(row) for row in block.rows]
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _markdown_row(cells: Sequence[Cell]) -> str:
    return "| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |"


def _markdown_cell(cell: Cell) -> str:
    if isinstance(cell, Image):
        return f"![{cell.alt}]({cell.path})"
    if isinstance(cell, list):
        return "<br>".join(_markdown_cell(line) for line in cell)
    return cell.replace("|", "\\|")


def render_html(blocks: Sequence[Block], title: str) -> str:
    """The blocks as one self-contained HTML page (images stay beside it)."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Image):
            body.append(f"<p>{_html_cell(block)}</p>")
        else:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _html_cell(cell: Cell) -> str:
    if isinstance(cell, Image):
        width = f' width="{cell.width}"' if cell.width else ""
        return f'<img src="{html.escape(cell.path)}" alt="{html.escape(cell.alt)}"{width}>'
    if isinstance(cell, list):
        return "<br>".join(_html_cell(line) for line in cell)
    return html.escape(cell)
