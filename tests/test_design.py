"""docs/design.md stays true: every public name its module table lists can be imported."""

import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"
# A table row: | `module` | idea | `Name`, `other_name`, ... |
ROW = re.compile(r"^\| `(?P<module>[\w/]+(?:\.py)?/?)` \|[^|]*\| (?P<names>.*) \|$")


def module_table() -> list[tuple[str, list[str]]]:
    """Each row of the table: the module's import path and the names it lists."""
    rows = []
    for line in DESIGN.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            path = match["module"].removesuffix(".py").removesuffix("/__init__")
            module = "chessvlm." + path.strip("/").replace("/", ".")
            rows.append((module, re.findall(r"`(\w+)`", match["names"])))
    return rows


def test_the_table_covers_every_module():
    from chessvlm.cli import COMMAND_MODULES

    package = DESIGN.parents[1] / "src" / "chessvlm"
    found = set()
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        module = ".".join(("chessvlm", *parts)).removesuffix(".__init__")
        # A package's __init__ that defines nothing public is only a folder.
        empty = path.name == "__init__.py" and not _public_names(module)
        if path.name != "__main__.py" and not empty:
            found.add(module)
    # The command groups are one row: `cli/__init__.py`, each with register(subparsers).
    found -= {f"chessvlm.cli.{name}" for name in COMMAND_MODULES}
    listed = {module for module, _ in module_table()}
    assert found - listed == set(), "modules missing from docs/design.md's table"
    assert listed - found == set(), "docs/design.md lists modules that do not exist"


def _public_names(module: str) -> list[str]:
    """What the module defines, leaving out its submodules (attributes once imported)."""
    return [
        name
        for name, value in vars(importlib.import_module(module)).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    ]


@pytest.mark.parametrize(("module", "names"), module_table(), ids=lambda value: str(value))
def test_every_listed_name_exists(module, names):
    imported = importlib.import_module(module)
    assert names, f"{module}: the table lists no names"
    missing = [name for name in names if not hasattr(imported, name)]
    assert missing == [], f"{module} has no {missing} (docs/design.md)"
