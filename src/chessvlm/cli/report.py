"""`chessvlm report` (compare runs in one page) and `chessvlm metrics` (score any predictions)."""

from __future__ import annotations

import argparse
from pathlib import Path

from chessvlm.cli.arguments import OUT, positive_int
from chessvlm.positions import TARGETS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `report` and `metrics` subcommands."""
    report = subparsers.add_parser(
        "report",
        help="compare evaluation runs in one Markdown/HTML page with plots and the worst boards",
        description=(
            "Each RUN is a run folder (metrics.json, predictions.jsonl, optional run.json) or a "
            "metrics JSON file. Writes OUT/report.md, OUT/report.html, OUT/plots, OUT/gallery."
        ),
    )
    report.add_argument("runs", nargs="+", metavar="RUN", help="run folder or metrics JSON")
    report.add_argument(OUT, required=True, help="folder for the report")
    report.add_argument(
        "--test_data", help="test labels for the gallery, for runs whose run.json names none"
    )
    report.add_argument(
        "--image_base_dir", help="folder the labels' image paths are relative to (for the gallery)"
    )
    report.add_argument(
        "--worst",
        type=positive_int,
        default=8,
        help="boards in each run's gallery (default: %(default)s)",
    )
    report.add_argument(
        "--title", default="chessvlm evaluation", help="the page title (default: %(default)s)"
    )
    report.set_defaults(func=run_report)

    metrics = subparsers.add_parser(
        "metrics",
        help="score a predictions file from any system against test labels",
        description=(
            "Predictions are JSONL lines {id, answer} (a model's raw answer) or {id, fen} "
            "(placement-only or full FEN). Labels are a VLM dataset .json or a JSON dataset .jsonl."
        ),
    )
    metrics.add_argument("--labels", required=True, help="test labels (.json or .jsonl)")
    metrics.add_argument("--predictions", required=True, help="predictions JSONL")
    metrics.add_argument(
        OUT, "--output", dest="output", metavar="FILE", required=True, help="metrics JSON to write"
    )
    metrics.add_argument(
        "--target",
        choices=TARGETS,
        help="answer format to score (default: the labels' target, else compact)",
    )
    metrics.add_argument(
        "--partial",
        action="store_true",
        help="score labels without a prediction as unparseable instead of failing",
    )
    metrics.add_argument(
        "--elapsed_seconds", type=float, help="wall time of the predictions, for boards/second"
    )
    metrics.add_argument(
        "--image_base_dir", help="recorded for `chessvlm report`'s gallery of worst boards"
    )
    metrics.set_defaults(func=run_metrics)


def run_report(args: argparse.Namespace) -> int:
    """Write the report for the given runs."""
    from chessvlm.reports import load_run, write_report

    runs = [
        load_run(path, test_data=args.test_data, image_base_dir=args.image_base_dir)
        for path in args.runs
    ]
    markdown = write_report(runs, args.out, worst=args.worst, title=args.title)
    print(f"wrote {markdown} and {markdown.with_suffix('.html')}")
    return 0


def run_metrics(args: argparse.Namespace) -> int:
    """Score a predictions file and write the metrics JSON."""
    from chessvlm.io import atomic_write_json
    from chessvlm.metrics import compute_metrics, infer_target, read_labels, read_predictions
    from chessvlm.reports import summary

    labels = read_labels(args.labels)
    predictions = read_predictions(args.predictions)
    target = args.target or infer_target(labels)
    metrics = compute_metrics(
        labels,
        predictions,
        target,
        elapsed_seconds=args.elapsed_seconds,
        allow_missing=args.partial,
    )
    # Where the inputs are, so `chessvlm report` can draw this run's worst boards.
    sources = {"test_data": args.labels, "predictions": args.predictions}
    if args.image_base_dir:
        sources["image_base_dir"] = args.image_base_dir
    metrics["sources"] = {key: str(Path(value).resolve()) for key, value in sources.items()}
    atomic_write_json(args.output, metrics)
    print(summary(metrics))
    print(f"wrote {args.output}")
    return 0
