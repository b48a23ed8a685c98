"""`chessvlm` subcommands for train (being written)."""


def register(subparsers) -> None:
    """Add this module's subcommands."""
