"""User-facing errors: each names the file (and line or sample) and what is wrong."""

from __future__ import annotations


class ChessVLMError(Exception):
    """An error caused by user input or environment, shown to the user without a traceback."""


class InputError(ChessVLMError):
    """Bad input data: names the file, the line or sample, and the problem."""

    def __init__(self, source: str, problem: str, line: int | None = None) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem

    def __reduce__(self) -> tuple:
        # Rebuilt from its own arguments, so it survives being sent back from a worker process.
        return (type(self), (self.source, self.problem, self.line))


class ConfigError(ChessVLMError):
    """A bad setting: names the config field and what is wrong with its value.

    Other fields the problem mentions are written in backquotes (`max_minutes`), so that the
    command line can name each by its flag instead (`chessvlm.cli.arguments.in_flag_names`).
    """

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem

    def __reduce__(self) -> tuple:
        return (type(self), (self.field, self.problem))
