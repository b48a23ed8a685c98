"""The report's plots: accuracy by square class, and each run's confusion matrix and squares."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import chess

from chessvlm.io import atomic_write_bytes
from chessvlm.positions import SQUARE_CLASSES
from chessvlm.reports.document import Block, Heading, Image, Table
from chessvlm.reports.runs import Run, slug


def plots_section(runs: Sequence[Run], out: Path) -> list[Block]:
    """Draw the plots into `out/plots` and return the section that shows them."""
    plots = out / "plots"
    class_plot = plots / "class_accuracy.png"
    _save_figure(_class_accuracy_figure(runs), class_plot)
    blocks: list[Block] = [
        Heading(2, "Plots"),
        Heading(3, "Accuracy by piece class"),
        Image("plots/class_accuracy.png", "recall and precision per square class"),
    ]
    for run in runs:
        stem = slug(run.name)
        _save_figure(_confusion_figure(run), plots / f"{stem}_confusion.png")
        _save_figure(_square_figure(run), plots / f"{stem}_squares.png")
        blocks += [
            Heading(3, run.name),
            Table(
                ["Confusion matrix (parsed answers)", "Per-square accuracy"],
                [
                    [
                        Image(f"plots/{stem}_confusion.png", f"{run.name} confusion matrix", 520),
                        Image(f"plots/{stem}_squares.png", f"{run.name} per-square accuracy", 420),
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
