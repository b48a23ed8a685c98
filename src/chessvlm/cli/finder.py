"""`chessvlm finder evaluate`: the board finder scored on labelled scenes."""

from __future__ import annotations

import argparse
from pathlib import Path

from chessvlm.cli.arguments import MODEL, OUT, positive_int


def register(subparsers) -> None:
    """Add the `finder` command group."""
    finder = subparsers.add_parser(
        "finder",
        help="score the board finder on scenes (screenshots, pages, negatives)",
        description=(
            "The board finder finds every chess board in an image by the 7x7 grid of corners "
            "where its squares meet (chessvlm.finder); `chessvlm predict` uses it."
        ),
    )
    commands = finder.add_subparsers(dest="finder_command", required=True, metavar="COMMAND")
    parser = commands.add_parser(
        "evaluate",
        help="find and read the boards of a scenes folder and score them",
        description=(
            "Find every board of each scene of `chessvlm data scenes`, read it with a reader, "
            "and write OUT/predictions.jsonl (resumable) and OUT/metrics.json: boards "
            "found, false boards (on the negatives too), corner error in squares, pages in "
            "reading order, per-square accuracy from the finder's crops beside the same "
            "boards cut at their labelled corners, and scenes per second on one thread."
        ),
    )
    parser.add_argument("--scenes", required=True, help="scenes folder (scenes.jsonl)")
    parser.add_argument(OUT, "--output", dest="out", required=True, help="run folder to write")
    parser.add_argument(
        MODEL, help="reader checkpoint (default: the reader shipped in the package)"
    )
    parser.add_argument("--max_samples", type=positive_int, help="first N scenes only")
    parser.set_defaults(func=_run_evaluate)
    tune = commands.add_parser(
        "tune",
        help="compare the finder's settings on scenes of the seen designs",
        description=(
            "Find the boards of a scenes folder (make it with `chessvlm data scenes --designs "
            "seen`: the held-out scenes stay for testing) with each combination of the "
            "finder's thresholds and print recall, false boards and CPU time per scene, best "
            "first; the shipped settings (chessvlm.finder.FinderSettings) are marked. This is "
            "how they were chosen: the finder has nothing else to train."
        ),
    )
    tune.add_argument("--scenes", required=True, help="scenes folder (scenes.jsonl)")
    tune.add_argument("--max_samples", type=positive_int, help="first N scenes only")
    tune.set_defaults(func=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from chessvlm.detection import tune_settings

    print("quadrant\tmin_score\tmin_corners\trecall\tfalse boards\tCPU s/scene")
    for row in tune_settings(args.scenes, args.max_samples):
        print(
            f"{row['quadrant']}\t{row['min_score']:g}\t{row['min_corners']}\t"
            f"{row['recall']:.4f}\t{row['false_boards']}\t{row['cpu_seconds_per_scene']:.4f}"
            + ("\t<- shipped" if row["shipped"] else "")
        )
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from chessvlm.detection import SceneEvalConfig, evaluate_scenes, format_figures
    from chessvlm.reader.default import default_reader

    config = SceneEvalConfig(
        scenes_dir=args.scenes,
        reader=str(args.model or default_reader()),
        output=args.out,
        max_scenes=args.max_samples,
    )
    metrics = evaluate_scenes(config)
    print(format_figures(metrics))
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0
