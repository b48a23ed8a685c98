"""`chessvlm` subcommands for report (being written)."""


def register(subparsers) -> None:
    """Add this module's subcommands."""
