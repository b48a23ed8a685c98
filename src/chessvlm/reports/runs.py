"""The runs a report compares: a run folder or a metrics JSON file, and where its inputs are.

A run folder holds `metrics.json` (the output of `chessvlm.metrics.compute_metrics`, required),
`predictions.jsonl` (the predictions that were scored, needed for the worst-board gallery) and
`run.json` (what was run, optional: `chessvlm.run_info`).

Naming a run folder's `metrics.json` reads the whole folder. Any other metrics JSON file may
carry the same path keys under `"sources"` (`chessvlm metrics` writes them), so a lone metrics
file can still feed the gallery. Precedence: the report command's `--test_data` /
`--image_base_dir`, then `run.json`, then `sources`. The image base directory defaults to the
labels' folder (right for the JSON dataset's `{split}.jsonl`, whose image paths are relative to
it); the VLM dataset's paths are relative to the `--image_base_dir` it was made for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from chessvlm.errors import InputError
from chessvlm.run_info import read_json_object


@dataclass
class Run:
    """One evaluation to report: its metrics and, when known, where its inputs are."""

    name: str
    metrics: dict
    info: dict = field(default_factory=dict)
    predictions: Path | None = None
    test_data: Path | None = None
    image_base_dir: Path | None = None


def load_run(
    path: str | Path,
    *,
    test_data: str | Path | None = None,
    image_base_dir: str | Path | None = None,
) -> Run:
    """Read a run directory or a metrics JSON file (see the module docstring)."""
    path = Path(path)
    if path.name == "metrics.json" and path.is_file():
        path = path.parent  # a run folder's own metrics file: read the whole folder
    if path.is_dir():
        folder, metrics_path = path, path / "metrics.json"
    else:
        folder, metrics_path = path.parent, path
    if not metrics_path.is_file():
        raise InputError(
            str(metrics_path), "no metrics file (expected a run folder or a metrics JSON)"
        )
    metrics = read_json_object(metrics_path)
    if "per_square_accuracy" not in metrics:
        raise InputError(str(metrics_path), "not a chessvlm metrics file (no per_square_accuracy)")
    info = dict(metrics.get("sources") or {})
    if path.is_dir() and (path / "run.json").is_file():
        info.update(read_json_object(path / "run.json"))
    if path.is_dir():
        info.setdefault("predictions", "predictions.jsonl")
    # Command-line paths are relative to the working directory, not to the run.
    overrides = {"test_data": test_data, "image_base_dir": image_base_dir}
    info.update({key: str(Path(v).resolve()) for key, v in overrides.items() if v is not None})

    def located(key: str) -> Path | None:
        return folder / info[key] if info.get(key) else None

    predictions = located("predictions")
    return Run(
        name=str(info.get("name") or (path.name if path.is_dir() else path.stem)),
        metrics=metrics,
        info=info,
        predictions=predictions if predictions is not None and predictions.is_file() else None,
        test_data=located("test_data"),
        image_base_dir=located("image_base_dir"),
    )


def slug(name: str) -> str:
    """The run name as a file-name stem: letters, digits and dashes."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "run"
