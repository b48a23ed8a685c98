"""Atomic writes and resumable JSONL logs."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from chessvlm.errors import InputError
from chessvlm.io import (
    JsonlAppender,
    atomic_write_bytes,
    atomic_write_json,
    iter_jsonl,
    read_jsonl,
)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": \n')
    with pytest.raises(InputError, match=r"train.jsonl:3: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(InputError, match=r"train.jsonl:2: expected a JSON object"):
        read_jsonl(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match=r"nope\.jsonl: file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_appender_resumes_after_a_torn_last_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    with JsonlAppender(path) as log:
        log.write({"id": "a", "answer": "x"})
        log.write({"id": "b", "answer": "y"})
    with path.open("a") as handle:
        handle.write('{"id": "c", "ans')  # a crash in the middle of a write
    with pytest.raises(InputError):
        read_jsonl(path)
    assert [r["id"] for _, r in iter_jsonl(path, allow_truncated_tail=True)] == ["a", "b"]
    with JsonlAppender(path) as log:
        assert log.done_ids == {"a", "b"}
        log.write({"id": "c", "answer": "z"})
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c"]


def test_atomic_files_get_ordinary_permissions(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    target = tmp_path / "image.png"
    atomic_write_bytes(target, b"png", durable=False)
    assert target.read_bytes() == b"png"
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_input_errors_survive_pickling_between_processes():
    error = pickle.loads(pickle.dumps(InputError("train.jsonl", "bad FEN", line=3)))
    assert str(error) == "train.jsonl:3: bad FEN" and error.line == 3
