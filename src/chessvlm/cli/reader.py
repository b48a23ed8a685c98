"""`chessvlm` subcommands for reader (being written)."""


def register(subparsers) -> None:
    """Add this module's subcommands."""
