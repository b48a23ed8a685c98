"""`chessvlm` subcommands for quickstart (being written)."""


def register(subparsers) -> None:
    """Add this module's subcommands."""
