"""A Markdown and HTML report comparing evaluation runs, with plots and the worst boards.

`chessvlm report RUN... --out DIR` writes `DIR/report.md`, `DIR/report.html` (the same page),
`DIR/plots/*.png` and `DIR/gallery/*.png`. A RUN is a run directory or a metrics JSON file.

A run directory holds:

- `metrics.json`: the output of `chessvlm.metrics.compute_metrics` (required);
- `predictions.jsonl`: the predictions that were scored (needed for the worst-board gallery);
- `run.json`: what was run (optional; every key optional, unknown keys ignored):

  ```
  {"name": "qwen2vl-lora-compact",         # the run's column title (default: folder name)
   "model": "Qwen/Qwen2-VL-2B-Instruct",   # base model id or path
   "adapter": "/abs/checkpoints/lora",     # adapter folder, when one was loaded
   "target": "compact",                    # answer format (default: from metrics.json)
   "train_data": "/abs/data/vlm/train.json", "train_samples": 1000,
   "steps": 189, "epochs": 3, "train_seconds": 5400.0,
   "test_data": "/abs/data/vlm/test.json", # labels: the gallery's true boards and images
   "image_base_dir": "/abs/data/json",     # where the labels' image paths are relative to
   "predictions": "predictions.jsonl",     # default: predictions.jsonl in the run directory
   "eval_seconds": 120.0, "device": "1x H100", "notes": "free text"}
  ```

  Relative paths (`adapter`, `train_data`, `test_data`, `image_base_dir`, `predictions`) are
  taken relative to the run directory; `write_run_info` stores them absolute.

Naming a run folder's `metrics.json` reads the whole folder. Any other metrics JSON file may
carry the same path keys under `"sources"` (`chessvlm metrics` writes them), so a lone metrics
file can still feed the gallery. Precedence: the report command's `--test_data` /
`--image_base_dir`, then `run.json`, then `sources`. The image base directory defaults to the
labels' folder (right for the JSON dataset's `{split}.jsonl`, whose image paths are relative to
it); the VLM dataset's paths are relative to the `--image_base_dir` it was made for.
"""

from __future__ import annotations

import html
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import chess

from chessvlm.datasets import resolve_image
from chessvlm.errors import ChessVLMError, InputError
from chessvlm.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from chessvlm.metrics import (
    METADATA_FIELDS,
    SampleScore,
    design_of,
    read_labels,
    read_predictions,
    score_samples,
)
from chessvlm.positions import SQUARE_CLASSES

RUN_INFO_KEYS = (
    "name",
    "model",
    "adapter",
    "target",
    "train_data",
    "train_samples",
    "steps",
    "epochs",
    "train_seconds",
    "recipe",
    "test_data",
    "image_base_dir",
    "predictions",
    "eval_seconds",
    "device",
    "notes",
)
PATH_KEYS = ("adapter", "train_data", "test_data", "image_base_dir", "predictions")
METADATA_NOTE = (
    "An image cannot show castling rights or an en passant square (they depend on earlier "
    "moves), and shows the side to move only through hints such as a highlighted last move, so "
    "these rates measure guessing from the placement. 'Constant answer' is the seed's fixed "
    "metadata (white to move, no castling, no en passant) scored on the same labels."
)
WRONG_FILL = "#e0303099"
GALLERY_SIZE = 256


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


@dataclass
class Run:
    """One evaluation to report: its metrics and, when known, where its inputs are."""

    name: str
    metrics: dict
    info: dict = field(default_factory=dict)
    predictions: Path | None = None
    test_data: Path | None = None
    image_base_dir: Path | None = None


# ---------------------------------------------------------------- loading runs


def write_run_info(run_dir: str | Path, **info: object) -> Path:
    """Create or update `run_dir/run.json` with `info` (keys from RUN_INFO_KEYS).

    Training and evaluation can each add their part; path values are stored absolute so the
    report finds them from anywhere.
    """
    unknown = sorted(set(info) - set(RUN_INFO_KEYS))
    if unknown:
        raise ChessVLMError(f"unknown run.json keys {unknown}; known: {', '.join(RUN_INFO_KEYS)}")
    path = Path(run_dir) / "run.json"
    current = _read_json_object(path) if path.exists() else {}
    for key, value in info.items():
        is_path = key in PATH_KEYS and value is not None
        current[key] = str(Path(str(value)).resolve()) if is_path else value
    atomic_write_json(path, current)
    return path


def load_run(
    path: str | Path,
    *,
    test_data: str | Path | None = None,
    image_base_dir: str | Path | None = None,
) -> Run:
    """Read a run directory or a metrics JSON file (see the module docstring)."""
    path = Path(path)
    if path.name == "metrics.json" and path.is_file():
        path = path.parent  # a run folder's own metrics file: read the whole folder
    if path.is_dir():
        folder, metrics_path = path, path / "metrics.json"
    else:
        folder, metrics_path = path.parent, path
    if not metrics_path.is_file():
        raise InputError(
            str(metrics_path), "no metrics file (expected a run folder or a metrics JSON)"
        )
    metrics = _read_json_object(metrics_path)
    if "per_square_accuracy" not in metrics:
        raise InputError(str(metrics_path), "not a chessvlm metrics file (no per_square_accuracy)")
    info = dict(metrics.get("sources") or {})
    if path.is_dir() and (path / "run.json").is_file():
        info.update(_read_json_object(path / "run.json"))
    if path.is_dir():
        info.setdefault("predictions", "predictions.jsonl")
    # Command-line paths are relative to the working directory, not to the run.
    overrides = {"test_data": test_data, "image_base_dir": image_base_dir}
    info.update({key: str(Path(v).resolve()) for key, v in overrides.items() if v is not None})

    def located(key: str) -> Path | None:
        return folder / info[key] if info.get(key) else None

    predictions = located("predictions")
    return Run(
        name=str(info.get("name") or (path.name if path.is_dir() else path.stem)),
        metrics=metrics,
        info=info,
        predictions=predictions if predictions is not None and predictions.is_file() else None,
        test_data=located("test_data"),
        image_base_dir=located("image_base_dir"),
    )


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(str(path), f"not valid JSON ({error.msg})", line=error.lineno) from None
    if not isinstance(data, dict):
        raise InputError(str(path), "expected a JSON object")
    return data


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


# ---------------------------------------------------------------- document model


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
    blocks += _plots_section(runs, out)
    blocks += _gallery_section(runs, out, worst)
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
        while _slug(name) in taken:
            number += 1
            name = f"{run.name} ({number})"
        taken.add(_slug(name))
        unique.append(replace(run, name=name))
    return unique


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "run"


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
        blocks += _run_gallery(
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


# ---------------------------------------------------------------- plots


def _plots_section(runs: Sequence[Run], out: Path) -> list[Block]:
    plots = out / "plots"
    class_plot = plots / "class_accuracy.png"
    _save_figure(_class_accuracy_figure(runs), class_plot)
    blocks: list[Block] = [
        Heading(2, "Plots"),
        Heading(3, "Accuracy by piece class"),
        Image("plots/class_accuracy.png", "recall and precision per square class"),
    ]
    for run in runs:
        slug = _slug(run.name)
        _save_figure(_confusion_figure(run), plots / f"{slug}_confusion.png")
        _save_figure(_square_figure(run), plots / f"{slug}_squares.png")
        blocks += [
            Heading(3, run.name),
            Table(
                ["Confusion matrix (parsed answers)", "Per-square accuracy"],
                [
                    [
                        Image(f"plots/{slug}_confusion.png", f"{run.name} confusion matrix", 520),
                        Image(f"plots/{slug}_squares.png", f"{run.name} per-square accuracy", 420),
                    ]
                ],
            ),
        ]
    return blocks


def _save_figure(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _class_names() -> list[str]:
    return ["empty" if symbol == "." else symbol for symbol in SQUARE_CLASSES]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _class_accuracy_figure(runs: Sequence[Run]):
    plt = _pyplot()
    figure, axes = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    width = 0.8 / len(runs)
    for index, run in enumerate(runs):
        per_class = run.metrics["per_class"]
        positions = [i + (index - (len(runs) - 1) / 2) * width for i in range(len(SQUARE_CLASSES))]
        for axis, measure in zip(axes, ("recall", "precision"), strict=True):
            # A class never predicted (or absent) has no precision (recall): no bar.
            values = [_or_nan(per_class[symbol][measure]) for symbol in SQUARE_CLASSES]
            axis.bar(positions, values, width, label=run.name)
    for axis, measure in zip(axes, ("Recall (all answers)", "Precision"), strict=True):
        axis.set_ylabel(measure)
        axis.set_ylim(0, 1.05)
        axis.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(range(len(SQUARE_CLASSES)), _class_names())
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    axes[0].set_title("Accuracy by square class (white pieces upper case)")
    return figure


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _short_count(value: int) -> str:
    """A count that fits in a heatmap cell: 987, 12.3k, 1.2M."""
    if value < 1000:
        return str(value)
    return f"{value / 1000:.3g}k" if value < 1_000_000 else f"{value / 1_000_000:.3g}M"


def _confusion_figure(run: Run):
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    counts = run.metrics["confusion_matrix"]["counts"]
    # Shares of each true class on a log scale, so that rare confusions stay visible.
    shares = [[value / sum(row) if value else float("nan") for value in row] for row in counts]
    figure, axis = plt.subplots(figsize=(7, 6))
    image = axis.imshow(shares, cmap="Blues", norm=LogNorm(vmin=1e-4, vmax=1))
    for row, values in enumerate(counts):
        for column, value in enumerate(values):
            if value:
                colour = "white" if shares[row][column] > 0.1 else "black"
                axis.text(
                    column,
                    row,
                    _short_count(value),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color=colour,
                )
    names = _class_names()
    axis.set_xticks(range(len(names)), names)
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"{run.name}: squares of parsed answers")
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the true class (log)")
    return figure


def _square_figure(run: Run):
    plt = _pyplot()
    accuracy = run.metrics["square_accuracy"]
    grid = [[accuracy[chess.square(file, rank)] for file in range(8)] for rank in range(7, -1, -1)]
    figure, axis = plt.subplots(figsize=(5.5, 5))
    image = axis.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1)
    for row in range(8):
        for column in range(8):
            axis.text(column, row, f"{grid[row][column]:.0%}", ha="center", va="center", fontsize=7)
    axis.set_xticks(range(8), list("abcdefgh"))
    axis.set_yticks(range(8), [str(rank) for rank in range(8, 0, -1)])
    axis.set_title(f"{run.name}: accuracy per square (white's view)")
    figure.colorbar(image, ax=axis, fraction=0.046)
    return figure


# ---------------------------------------------------------------- worst-board gallery


def _gallery_section(runs: Sequence[Run], out: Path, worst: int) -> list[Block]:
    blocks: list[Block] = [
        Heading(2, "Worst boards"),
        Paragraph(
            "The parsed answers with the most wrong squares: the test image beside the predicted "
            "board, drawn the same way up, with the wrong squares in red."
        ),
    ]
    for run in runs:
        blocks.append(Heading(3, run.name))
        blocks += _run_gallery(run, out, worst)
    return blocks


def _run_gallery(
    run: Run,
    out: Path,
    worst: int,
    keep: Callable[[dict], bool] | None = None,
    prefix: str = "",
) -> list[Block]:
    """The worst boards of a run (of those whose label `keep` accepts), image files named
    with `prefix` so that two galleries of one run do not collide."""
    if run.predictions is None or run.test_data is None:
        return [
            Paragraph(
                "No gallery: the run names no predictions file or no test labels (see run.json)."
            )
        ]
    if not run.test_data.is_file():
        return [Paragraph(f"No gallery: test labels {run.test_data} not found.")]
    labels = read_labels(run.test_data)
    predictions = read_predictions(run.predictions)
    predicted = {str(record["id"]) for record in predictions}
    labels = [
        label
        for label in labels
        if str(label.get("id")) in predicted and (keep is None or keep(label))
    ]
    kept = {str(label.get("id")) for label in labels}
    predictions = [record for record in predictions if str(record["id"]) in kept]
    target = run.metrics.get("target", "compact")
    scores = score_samples(labels, predictions, target)
    base = run.image_base_dir or run.test_data.parent
    images = {score.id: _image_path(score.label, base) for score in scores}
    missing = [i for i, path in images.items() if path is None or not path.is_file()]
    blocks: list[Block] = []
    if missing:
        blocks.append(
            Paragraph(f"{len(missing)} of {len(scores)} test images are missing under {base}.")
        )
    unparsed = [score for score in scores if not score.parsed]
    if unparsed:
        blocks += _unparsed_examples(unparsed)
    chosen = sorted(
        (s for s in scores if s.parsed and s.wrong_squares),
        key=lambda s: (-len(s.wrong_squares), s.id),
    )
    if not chosen:
        return [*blocks, Paragraph("Every parsed answer is right on all 64 squares.")]
    rows = [
        _gallery_row(run, score, images[score.id], out, f"{prefix}{rank:02d}")
        for rank, score in enumerate(chosen[:worst])
    ]
    return [*blocks, Table(["Image", "Predicted board (wrong squares red)", "Details"], rows)]


def _image_path(label: dict, base: Path) -> Path | None:
    if label.get("image_path"):
        return resolve_image(base, str(label["image_path"]))
    return base / str(label["image"]) if label.get("image") else None


def _unparsed_examples(unparsed: Sequence[SampleScore], limit: int = 3) -> list[Block]:
    rows = []
    for score in unparsed[:limit]:
        answer = str((score.prediction or {}).get("answer") or "")
        shown = answer if len(answer) <= 160 else answer[:160] + "…"
        rows.append([score.id, ", ".join(score.error_codes), shown.replace("\n", " ") or "—"])
    return [
        Paragraph(f"Answers that did not parse: {len(unparsed)} (the first {len(rows)} below)."),
        Table(["Sample", "Error", "Answer (start)"], rows),
    ]


def _gallery_row(
    run: Run, score: SampleScore, image: Path | None, out: Path, rank: str
) -> list[Cell]:
    stem = f"gallery/{_slug(run.name)}_{rank}"
    flipped = bool(score.label.get("flipped", False))
    atomic_write_bytes(
        out / f"{stem}_board.png", _board_png(score.pred_board, score.wrong_squares, flipped)
    )
    board_cell = Image(f"{stem}_board.png", f"predicted board for {score.id}", GALLERY_SIZE)
    image_cell: Cell = [f"image missing: {image}"]
    thumbnail = _thumbnail_png(image) if image is not None else None
    if thumbnail is not None:
        atomic_write_bytes(out / f"{stem}_image.png", thumbnail)
        image_cell = Image(f"{stem}_image.png", f"test image {score.id}", GALLERY_SIZE)
    changes = [
        f"{chess.square_name(sq)}: {score.true_symbols[sq]} read as {score.pred_symbols[sq]}"
        for sq in score.wrong_squares
    ]
    shown = changes[:8] + ([f"... {len(changes) - 8} more"] if len(changes) > 8 else [])
    details = [
        f"sample {score.id}",
        f"wrong squares: {len(score.wrong_squares)}",
        f"style {score.label.get('style', '—')}, {'black' if flipped else 'white'} at the bottom",
        f"true: {score.true_board.board_fen()}",
        f"read: {score.pred_board.board_fen()}",
        *shown,
    ]
    return [image_cell, board_cell, details]


def _board_png(board: chess.Board, wrong: Sequence[int], flipped: bool) -> bytes:
    import cairosvg
    import chess.svg

    svg = chess.svg.board(
        board,
        orientation=chess.BLACK if flipped else chess.WHITE,
        fill=dict.fromkeys(wrong, WRONG_FILL),
        size=GALLERY_SIZE,
    )
    return cairosvg.svg2png(bytestring=svg.encode("utf-8"))


def _thumbnail_png(path: Path) -> bytes | None:
    """The image scaled to the gallery size, or None when it is missing or unreadable."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as image:
            picture = image.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None
    picture.thumbnail((GALLERY_SIZE, GALLERY_SIZE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


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
