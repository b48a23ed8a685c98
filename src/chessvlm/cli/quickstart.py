"""`chessvlm quickstart`: the whole pipeline on the built-in default, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    parser.add_argument("--out", type=Path, required=True, help="folder for everything it makes")
    parser.add_argument(
        "--minutes",
        type=float,
        default=defaults.minutes,
        help="training budget of the VLM in minutes (default %(default)s)",
    )
    parser.add_argument(
        "--reader-minutes",
        type=float,
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
        "--unseen-style",
        default=defaults.unseen_style,
        help="rendering style of the second test split, designs kept out of training "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--preset",
        default=defaults.preset,
        choices=("tiny", "small"),
        help="model built from scratch (default %(default)s; tiny is for smoke tests)",
    )
    parser.add_argument("--train", type=int, default=defaults.train_samples, help="train boards")
    parser.add_argument("--val", type=int, default=defaults.val_samples, help="validation boards")
    parser.add_argument("--test", type=int, default=defaults.test_samples, help="test boards")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="worker processes")
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
