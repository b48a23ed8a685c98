"""The `chessvlm` command: one parser, one subcommand group per module in this package.

Each command module exposes `register(subparsers)`, which adds its subcommands and sets
`func` on each; `func(args)` returns an exit code. Shared argument types, defaults and flag
spellings: `chessvlm.cli.arguments`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from chessvlm.cli.arguments import Parser, in_flag_names
from chessvlm.errors import ChessVLMError

COMMAND_MODULES = (
    "data",
    "train",
    "evaluate",
    "reader",
    "finder",
    "report",
    "quickstart",
    "serve",
    "export",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand."""
    parser = Parser(
        prog="chessvlm",
        description="Teach vision-language models to read chess boards.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"chessvlm.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `chessvlm` console command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ChessVLMError as error:
        # The library names config fields; the user typed flags.
        print(f"chessvlm: error: {in_flag_names(error, args.command_parser)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chessvlm: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
