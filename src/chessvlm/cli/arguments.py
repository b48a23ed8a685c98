"""What every command module shares: the parser class, argument types, defaults and choices
read from the library's own config dataclasses and constants, and the flag spellings.

Defaults and choices that live in modules importing torch are read lazily (`ConfigDefault`,
`ModuleChoices`): building the parser and checking the arguments must not import them, so that
`chessvlm --help`, the data commands and a command's own checks of its paths take a second.
A command module registers a flag and builds its config like this:

    READER = config_defaults("chessvlm.reader.train", "ReaderTrainConfig")
    parser.add_argument("--epochs", type=positive_int, default=READER("epochs"),
                        help="passes over the training data (default: %(default)s)")
    ...
    config = ReaderTrainConfig(**config_options(args, ReaderTrainConfig))
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property

from chessvlm.errors import ChessVLMError, ConfigError

# One spelling per concept across commands; the seed's names (SPEC) stay as aliases.
OUT = "--out"
MODEL = "--model"
EPOCHS = "--epochs"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that remembers which (sub)command parser read the arguments, so that
    an error can be told in that command's flag names (`in_flag_names`)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        # The innermost subcommand parses first; its record is copied up and kept.
        if not hasattr(namespace, "command_parser"):
            namespace.command_parser = self
        return namespace, extras


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each destination (config field) of `parser` and the flag that sets it."""
    return {
        action.dest: action.option_strings[0]
        for action in parser._actions  # argparse keeps no public list of its actions
        if action.option_strings
    }


def in_flag_names(error: ChessVLMError, parser: argparse.ArgumentParser) -> str:
    """The error as a command line user should read it: the config fields it names (a
    `ConfigError`'s field, and fields in backquotes) become this command's flags."""
    flags = flag_names(parser)

    def flag(match: re.Match) -> str:
        return flags.get(match[1], match[0])

    if isinstance(error, ConfigError) and error.field:
        message = f"`{error.field}`: {error.problem}"
    else:
        message = str(error)
    return re.sub(r"`(\w+)`", flag, message)


@dataclasses.dataclass(frozen=True)
class ConfigDefault:
    """A flag's default: the value of a config dataclass field, read only to show it in help.

    Left in the parsed arguments, it means "not given"; `config_options` drops it.
    """

    module: str
    config: str
    field: str

    @property
    def value(self) -> object:
        """The field's default in the dataclass (importing its module)."""
        config = getattr(importlib.import_module(self.module), self.config)
        for field in dataclasses.fields(config):
            if field.name == self.field:
                return field.default
        raise AttributeError(f"{self.config} has no field {self.field!r}")

    def __str__(self) -> str:
        return str(self.value)


def config_defaults(module: str, config: str) -> Callable[[str], ConfigDefault]:
    """`field -> ConfigDefault` for the dataclass `config` of `module`."""
    return lambda field: ConfigDefault(module, config, field)


def config_options(args: argparse.Namespace, config: type) -> dict[str, object]:
    """The options of `args` that set fields of the dataclass `config`. A flag left at its
    `ConfigDefault` is left out, so the dataclass's default applies (and nothing imports)."""
    fields = {field.name for field in dataclasses.fields(config)}
    return {
        name: value
        for name, value in vars(args).items()
        if name in fields and not isinstance(value, ConfigDefault)
    }


class ModuleChoices(Sequence[str]):
    """A module's tuple of allowed values, imported when a value is checked or help shown.

    Give the argument a `metavar`: argparse then never lists the choices while building.
    """

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    @cached_property
    def _values(self) -> tuple[str, ...]:
        return tuple(getattr(importlib.import_module(self.module), self.name))

    def __getitem__(self, index):
        return self._values[index]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values


def positive_int(text: str) -> int:
    """Argument type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def positive_int_list(text: str) -> tuple[int, ...]:
    """Argument type: comma-separated positive integers, e.g. `16,32,64,128`."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        message = f"expected integers separated by commas, got {text}"
        raise argparse.ArgumentTypeError(message) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text}")
    return values


def zoom_list(text: str) -> tuple[float, ...]:
    """Argument type: comma-separated view widths relative to the board's (e.g. `0.97,1.03`),
    or `none`; the reader checks their range (`chessvlm.reader.model.checked_zoom_views`)."""
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        message = f"expected numbers separated by commas, or none, got {text}"
        raise argparse.ArgumentTypeError(message) from None
    return values


def non_negative_int(text: str) -> int:
    """Argument type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    """Argument type: a number above 0."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value
