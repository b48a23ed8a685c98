"""A Markdown and HTML report comparing evaluation runs, with plots and the worst boards.

`chessvlm report RUN... --out DIR` writes `DIR/report.md`, `DIR/report.html` (the same page),
`DIR/plots/*.png` and `DIR/gallery/*.png`. A RUN is a run directory or a metrics JSON file
(`chessvlm.reports.runs`). This module builds the page's sections; `document` renders them,
`plots` and `gallery` draw the pictures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from chessvlm.errors import ChessVLMError
from chessvlm.io import atomic_write_text
from chessvlm.metrics import METADATA_FIELDS, design_of
from chessvlm.reports.document import (
    Block,
    Heading,
    Paragraph,
    Table,
    render_html,
    render_markdown,
)
from chessvlm.reports.gallery import gallery_section, run_gallery
from chessvlm.reports.plots import plots_section
from chessvlm.reports.runs import Run, load_run, slug

__all__ = ["SEED_REFERENCES", "Reference", "Run", "load_run", "percent", "summary", "write_report"]

METADATA_NOTE = (
    "An image cannot show castling rights or an en passant square (they depend on earlier "
    "moves), and shows the side to move only through hints such as a highlighted last move, so "
    "these rates measure guessing from the placement. 'Constant answer' is the seed's fixed "
    "metadata (white to move, no castling, no en passant) scored on the same labels."
)


@dataclass(frozen=True)
class Reference:
    """Published figures of a system the runs are compared with."""

    name: str
    source: str
    figures: dict[str, str]


SEED_REFERENCES = (
    Reference(
        "Seed Qwen2-VL-2B LoRA",
        "the seed repository's fine-tune: 50 test images, about 1,000 training samples, "
        "189 steps; its per-square figure counts only the 46% of answers that parsed",
        {
            "n_samples": "50",
            "valid_json_rate": "46%",
            "per_square_accuracy_parsed_only": "43.55%",
            "exact_board_match": "0%",
            "all_empty_baseline": "≈70%",
        },
    ),
    Reference(
        "Seed CLIP JSON predictor",
        "the seed repository's frozen CLIP ViT-B/32 with a 7x7->8x8 aligner and 64 square heads",
        {
            "per_square_accuracy": "79.32%",
            "exact_board_match": "0.008%",
            "all_empty_baseline": "≈70%",
        },
    ),
)


# ---------------------------------------------------------------- formatting


def percent(value: float | None) -> str:
    """A rate as a percentage, with more digits for tiny rates (e.g. 0.008%)."""
    if value is None:
        return "—"
    return f"{value:.3%}" if 0 < value < 0.001 else f"{value:.2%}"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _tokens(value: dict | None) -> str:
    if value is None:
        return "—"
    return f"{value['mean']:.1f} / {value['median']:g} / {value['max']} ({value['truncated']:,})"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(round(float(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _plain(value: object) -> str:
    return "—" if value is None else str(value)


def _file_name(value: str | None) -> str:
    return "—" if value is None else Path(value).name


# Rows of the results table: metrics key, row title, formatter.
RESULT_ROWS: tuple[tuple[str, str, Callable], ...] = (
    ("n_samples", "Test samples", _count),
    ("valid_json_rate", "Valid JSON", percent),
    ("valid_position_rate", "Valid position", percent),
    ("exact_json_match", "Exact JSON match", percent),
    ("fen_accuracy", "FEN accuracy", percent),
    ("per_square_accuracy", "Per-square accuracy (all answers)", percent),
    ("per_square_accuracy_parsed_only", "Per-square accuracy (parsed answers only)", percent),
    ("exact_board_match", "Exact board", percent),
    ("all_empty_baseline", "All-empty baseline, per-square (this test set)", percent),
    ("occupied_square_accuracy", "Occupied-square accuracy", percent),
    ("mean_wrong_squares", "Mean wrong squares per board", _number),
    ("boards_with_at_most_one_error", "Boards with at most one wrong square", percent),
    ("answer_tokens", "Answer tokens: mean / median / max (answers cut at the limit)", _tokens),
    ("boards_per_second", "Boards per second", _number),
)
BREAKDOWN_COLUMNS: tuple[tuple[str, str, Callable], ...] = (
    ("n_samples", "Samples", _count),
    ("valid_json_rate", "Valid JSON", percent),
    ("per_square_accuracy", "Per-square", percent),
    ("per_square_accuracy_parsed_only", "Per-square (parsed)", percent),
    ("exact_board_match", "Exact board", percent),
    ("all_empty_baseline", "All-empty baseline", percent),
)
# Rows of the runs table: run.json key, row title, formatter.
RUN_ROWS: tuple[tuple[str, str, Callable], ...] = (
    ("model", "Model", _plain),
    ("adapter", "Adapter", _file_name),
    ("target", "Answer format", _plain),
    ("train_data", "Training data", _file_name),
    ("train_samples", "Training samples", _count),
    ("steps", "Steps", _count),
    ("epochs", "Epochs", _plain),
    ("train_seconds", "Training time", _duration),
    ("recipe", "Training recipe", _plain),
    ("test_data", "Test data", _file_name),
    ("eval_seconds", "Evaluation time", _duration),
    ("device", "Device", _plain),
    ("notes", "Notes", _plain),
)

# ---------------------------------------------------------------- the report


def write_report(
    runs: Sequence[Run], out: str | Path, *, worst: int = 8, title: str = "chessvlm evaluation"
) -> Path:
    """Write the report for `runs` into `out`; returns the Markdown file's path."""
    if not runs:
        raise ChessVLMError("no runs to report")
    out = Path(out)
    runs = _unique_names(runs)
    blocks: list[Block] = [
        Heading(1, title),
        Paragraph(
            "Rates are over all test samples unless a row says otherwise: an answer that does "
            "not parse counts as wrong on all 64 squares. Exact definitions: the docstring of "
            "chessvlm.metrics. Reference columns are the seed repository's published figures "
            "on its own test data, not re-measured here."
        ),
    ]
    blocks += _runs_section(runs)
    blocks += _results_section(runs)
    blocks += _metadata_section(runs)
    blocks += _breakdown_sections(runs)
    blocks += _unseen_section(runs, out, worst)
    blocks += _errors_section(runs)
    blocks += plots_section(runs, out)
    blocks += gallery_section(runs, out, worst)
    atomic_write_text(out / "report.html", render_html(blocks, title))
    markdown_path = out / "report.md"
    atomic_write_text(markdown_path, render_markdown(blocks))
    return markdown_path


def _unique_names(runs: Sequence[Run]) -> list[Run]:
    """The runs, renamed `name (2)`, ... where names (or their file names) would clash."""
    taken: set[str] = set()
    unique = []
    for run in runs:
        name, number = run.name, 1
        while slug(name) in taken:
            number += 1
            name = f"{run.name} ({number})"
        taken.add(slug(name))
        unique.append(replace(run, name=name))
    return unique


def _runs_section(runs: Sequence[Run]) -> list[Block]:
    rows = []
    for key, title, fmt in RUN_ROWS:
        values = [run.info.get(key, run.metrics.get(key)) for run in runs]
        if any(value is not None for value in values):
            rows.append([title, *(fmt(value) for value in values)])
    if not rows:
        return []
    return [Heading(2, "Runs"), Table(["", *(run.name for run in runs)], rows)]


def _results_section(runs: Sequence[Run]) -> list[Block]:
    header = [
        "Metric",
        *(run.name for run in runs),
        *(f"{r.name} (reference)" for r in SEED_REFERENCES),
    ]
    rows = [
        [
            title,
            *(fmt(run.metrics.get(key)) for run in runs),
            *(ref.figures.get(key, "—") for ref in SEED_REFERENCES),
        ]
        for key, title, fmt in RESULT_ROWS
    ]
    notes = [f"{ref.name}: {ref.source}." for ref in SEED_REFERENCES]
    return [Heading(2, "Results"), Table(header, rows), Paragraph(" ".join(notes))]


def _metadata_section(runs: Sequence[Run]) -> list[Block]:
    scored = [run for run in runs if run.metrics.get("metadata_accuracy")]
    if not scored:
        return []
    header = [
        "Field",
        *(run.name for run in scored),
        *(f"{run.name}: constant answer" for run in scored),
    ]
    rows = [
        [
            name.replace("_", " "),
            *(percent(run.metrics["metadata_accuracy"][name]) for run in scored),
            *(
                percent(run.metrics["metadata_accuracy"]["constant_baseline"][name])
                for run in scored
            ),
        ]
        for name in METADATA_FIELDS
    ]
    return [Heading(2, "Metadata"), Table(header, rows), Paragraph(METADATA_NOTE)]


def _breakdown_sections(runs: Sequence[Run]) -> list[Block]:
    blocks: list[Block] = []
    for key, title in (
        ("by_style", "By piece set (image style)"),
        ("by_orientation", "By board orientation"),
    ):
        tables: list[Block] = []
        for run in runs:
            groups = run.metrics.get(key)
            if not groups:
                continue
            rows = [
                [group, *(fmt(figures.get(metric)) for metric, _, fmt in BREAKDOWN_COLUMNS)]
                for group, figures in groups.items()
            ]
            header = ["Group", *(name for _, name, _ in BREAKDOWN_COLUMNS)]
            tables += [Heading(3, run.name), Table(header, rows)]
        if tables:
            blocks += [Heading(2, title), *tables]
    return blocks


def _unseen_section(runs: Sequence[Run], out: Path, worst: int) -> list[Block]:
    """The boards drawn in designs kept out of training: by design, worst first, and the
    worst of those boards."""
    tested = [
        run
        for run in runs
        if any(f.get("held_out") for f in (run.metrics.get("by_design") or {}).values())
    ]
    if not tested:
        return []
    blocks: list[Block] = [
        Heading(2, "Unseen designs"),
        Paragraph(
            "Boards drawn in the piece designs that the leave-designs-out styles keep out of "
            "training (`designs-held-out`, docs/looks.md): for a model trained on "
            "`designs-seen`, designs it never saw. Worst designs first, then the worst boards "
            "of those designs."
        ),
    ]
    header = ["Design", *(name for _, name, _ in BREAKDOWN_COLUMNS)]
    for run in tested:
        held = {
            name: figures
            for name, figures in run.metrics["by_design"].items()
            if figures.get("held_out")
        }
        ordered = sorted(held.items(), key=lambda item: item[1]["per_square_accuracy"])
        rows = [
            [name, *(fmt(figures.get(metric)) for metric, _, fmt in BREAKDOWN_COLUMNS)]
            for name, figures in ordered
        ]
        blocks += [Heading(3, run.name), Table(header, rows)]
        blocks += run_gallery(
            run,
            out,
            worst,
            keep=lambda label, held=held: design_of(label) in held,
            prefix="unseen_",
        )
    return blocks


def _errors_section(runs: Sequence[Run]) -> list[Block]:
    codes = sorted({code for run in runs for code in run.metrics.get("error_counts", {})})
    if not codes:
        return [Heading(2, "Answer errors"), Paragraph("Every answer parsed.")]
    rows = [
        [code, *(_count(run.metrics["error_counts"].get(code, 0)) for run in runs)]
        for code in codes
    ]
    return [
        Heading(2, "Answer errors"),
        Paragraph("How many answers failed to parse, by the first problem found."),
        Table(["Error", *(run.name for run in runs)], rows),
    ]


def summary(metrics: dict) -> str:
    """A few headline figures of a metrics dict, one line, for the console."""
    parts = [
        f"{metrics['n_samples']} samples",
        f"valid JSON {percent(metrics['valid_json_rate'])}",
        f"per-square {percent(metrics['per_square_accuracy'])}",
        f"(parsed only {percent(metrics['per_square_accuracy_parsed_only'])})",
        f"exact boards {percent(metrics['exact_board_match'])}",
        f"all-empty baseline {percent(metrics['all_empty_baseline'])}",
    ]
    return ", ".join(parts)
