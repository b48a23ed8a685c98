"""File helpers shared by every long job: atomic writes and resumable JSONL."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from chessvlm.errors import ConfigError, InputError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def require_folder(field: str, path: str | Path) -> Path:
    """`path` when it is a folder; a `ConfigError` naming `field` otherwise."""
    path = Path(path)
    if not path.is_dir():
        problem = "is a file, not a folder" if path.exists() else "folder not found"
        raise ConfigError(field, f"{path}: {problem}")
    return path


def require_file(field: str, path: str | Path, what: str = "") -> Path:
    """`path` when it is a file; a `ConfigError` naming `field` (and `what` the file is for,
    e.g. "the VLM test set") otherwise."""
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "file not found"
        raise ConfigError(field, f"{path}: {problem}" + (f" ({what})" if what else ""))
    return path


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part.

    `durable` also flushes the data to the disk before the rename, so the file survives a power
    loss; files that are cheap to make again (rendered images) skip it, since the rename alone
    already survives a crashed process.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        # mkstemp makes owner-only files; give the file the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """Atomically write `data` as JSON."""
    atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Atomically write records as JSON Lines."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def iter_jsonl(
    path: str | Path, *, allow_truncated_tail: bool = False
) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, record)` for each non-empty line of a JSONL file.

    A malformed line raises `InputError` naming the file and line. With
    `allow_truncated_tail`, a final line without a newline that does not parse (a write cut
    by a crash) is dropped instead, so an append-only log can be resumed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "file not found")
    with path.open("r", encoding="utf-8") as handle:
        lines = handle.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            is_cut_tail = number == len(lines) and not line.endswith("\n")
            if allow_truncated_tail and is_cut_tail:
                return
            raise InputError(str(path), f"not valid JSON ({error.msg})", line=number) from None
        if not isinstance(record, dict):
            raise InputError(str(path), "expected a JSON object", line=number)
        yield number, record


def read_jsonl(path: str | Path) -> list[dict]:
    """Read every record of a JSONL file (strict: a bad line is an `InputError`)."""
    return [record for _, record in iter_jsonl(path)]


class JsonlAppender:
    """Append records to a JSONL log one line at a time, flushed, so a crash loses at most one.

    On open, a torn last line left by a crash is cut off, so the file stays valid JSONL and
    `done_ids` lists the records already written (the resume point).
    """

    def __init__(self, path: str | Path, key: str = "id") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.done_ids: set[str] = set()
        if self.path.exists():
            self._repair_and_index()
        self._handle = self.path.open("a", encoding="utf-8")

    def _repair_and_index(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            raw = raw[: raw.rfind(b"\n") + 1]
            atomic_write_bytes(self.path, raw)
        for _, record in iter_jsonl(self.path):
            self.done_ids.add(str(record[self.key]))

    def write(self, record: dict) -> None:
        """Append one record and flush it to disk."""
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        self.done_ids.add(str(record[self.key]))

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
