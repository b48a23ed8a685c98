"""What was run: the `run.json` beside a run's metrics, written by training and evaluation.

`run.json` (every key optional, unknown keys refused on writing, ignored on reading):

```
{"name": "qwen2vl-lora-compact",         # the run's column title (default: folder name)
 "model": "Qwen/Qwen2-VL-2B-Instruct",   # base model id or path
 "adapter": "/abs/checkpoints/lora",     # adapter folder, when one was loaded
 "target": "compact",                    # answer format (default: from metrics.json)
 "train_data": "/abs/data/vlm/train.json", "train_samples": 1000,
 "steps": 189, "epochs": 3, "train_seconds": 5400.0,
 "test_data": "/abs/data/vlm/test.json", # labels: the gallery's true boards and images
 "image_base_dir": "/abs/data/json",     # where the labels' image paths are relative to
 "predictions": "predictions.jsonl",     # default: predictions.jsonl in the run directory
 "eval_seconds": 120.0, "device": "1x H100", "notes": "free text"}
```

Relative paths (`PATH_KEYS`) are taken relative to the run directory; `write_run_info` stores
them absolute.
"""

from __future__ import annotations

import json
from pathlib import Path

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.io import atomic_write_json

RUN_INFO_KEYS = (
    "name",
    "model",
    "adapter",
    "target",
    "train_data",
    "train_samples",
    "steps",
    "epochs",
    "train_seconds",
    "recipe",
    "test_data",
    "image_base_dir",
    "predictions",
    "eval_seconds",
    "device",
    "notes",
)
PATH_KEYS = ("adapter", "train_data", "test_data", "image_base_dir", "predictions")


def write_run_info(run_dir: str | Path, **info: object) -> Path:
    """Create or update `run_dir/run.json` with `info` (keys from RUN_INFO_KEYS).

    Training and evaluation can each add their part; path values are stored absolute so the
    report finds them from anywhere.
    """
    unknown = sorted(set(info) - set(RUN_INFO_KEYS))
    if unknown:
        raise ChessVLMError(f"unknown run.json keys {unknown}; known: {', '.join(RUN_INFO_KEYS)}")
    path = Path(run_dir) / "run.json"
    current = read_json_object(path) if path.exists() else {}
    for key, value in info.items():
        is_path = key in PATH_KEYS and value is not None
        current[key] = str(Path(str(value)).resolve()) if is_path else value
    atomic_write_json(path, current)
    return path


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; an InputError names the file (and line) otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(str(path), f"not valid JSON ({error.msg})", line=error.lineno) from None
    if not isinstance(data, dict):
        raise InputError(str(path), "expected a JSON object")
    return data
