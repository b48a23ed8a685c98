"""`chessvlm quickstart`: the whole pipeline on the built-in default, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from chessvlm.cli.arguments import OUT, positive_float, positive_int
from chessvlm.modeling import PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `quickstart` subcommand."""
    from chessvlm.quickstart import QuickstartConfig

    defaults = QuickstartConfig(out=Path("."))
    parser = subparsers.add_parser(
        "quickstart",
        help="render boards, train a small VLM and a board reader on CPU, evaluate, report",
        description=(
            "From nothing to a trained board-reading VLM and a report, on CPU. Rerun the same "
            "command after an interruption to resume."
        ),
    )
    parser.add_argument(OUT, type=Path, required=True, help="folder for everything it makes")
    parser.add_argument(
        "--minutes",
        type=positive_float,
        default=defaults.minutes,
        help="training budget of the VLM in minutes (default %(default)s)",
    )
    parser.add_argument(
        "--reader_minutes",
        "--reader-minutes",
        dest="reader_minutes",
        type=positive_float,
        default=defaults.reader_minutes,
        help="training budget of the board reader in minutes (default %(default)s)",
    )
    parser.add_argument(
        "--style",
        default=defaults.style,
        help="rendering style of the training data and the in-distribution test (default "
        "%(default)s)",
    )
    parser.add_argument(
        "--unseen_style",
        "--unseen-style",
        dest="unseen_style",
        default=defaults.unseen_style,
        help="rendering style of the second test split, designs kept out of training "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--preset",
        default=defaults.preset,
        choices=tuple(PRESETS),
        help="model built from scratch (default %(default)s; tiny is for smoke tests)",
    )
    parser.add_argument(
        "--train",
        type=positive_int,
        default=defaults.train_samples,
        help="train boards (default: %(default)s)",
    )
    parser.add_argument(
        "--val",
        type=positive_int,
        default=defaults.val_samples,
        help="validation boards (default: %(default)s)",
    )
    parser.add_argument(
        "--test",
        type=positive_int,
        default=defaults.test_samples,
        help="test boards (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=defaults.workers,
        help="worker processes (default: %(default)s)",
    )
    parser.set_defaults(func=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from chessvlm.quickstart import QuickstartConfig, run_quickstart
    from chessvlm.reports import summary

    config = QuickstartConfig(
        out=args.out,
        minutes=args.minutes,
        reader_minutes=args.reader_minutes,
        style=args.style,
        unseen_style=args.unseen_style,
        preset=args.preset,
        train_samples=args.train,
        val_samples=args.val,
        test_samples=args.test,
        seed=args.seed,
        workers=args.workers,
    )
    results = run_quickstart(config)
    print(f"\nreport: {args.out / 'report' / 'report.md'} (and report.html)")
    for key, name in (
        ("vlm", "small VLM, in distribution"),
        ("reader", "board reader, in distribution"),
        ("vlm_unseen", "small VLM, unseen designs"),
        ("reader_unseen", "board reader, unseen designs"),
    ):
        print(f"{name + ':':31} {summary(results[key])}")
    return 0
