"""`chessvlm` subcommands for data (being written)."""


def register(subparsers) -> None:
    """Add this module's subcommands."""
