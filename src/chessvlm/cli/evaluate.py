"""`chessvlm` subcommands for evaluate (being written)."""


def register(subparsers) -> None:
    """Add this module's subcommands."""
