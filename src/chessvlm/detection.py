"""Scoring the board finder on labelled scenes: boards found, false boards, corner error,
reading order, and how well the boards it cuts out are read.

`evaluate_scenes` runs the finder and a reader over a scenes folder (`chessvlm data scenes`),
writes one prediction line per scene as it goes (a rerun resumes), and scores them:

- recall: labelled boards matched by a found board (boxes overlapping by IoU >= 0.5), and
  `recall_in_place`: those whose corners are also within half a square of the label's;
- false boards: found boards matching no label, in all scenes and in the negatives;
- corner error: per matched board, the largest distance of a found corner from its label
  along x or y, in squares (the target: within 1/8);
- reading order: pages whose boards were all found and come out in the labels' order;
- per-square accuracy of the matched boards read from the finder's crops, beside the same
  boards read from crops at their labelled corners; missed boards count as all wrong in
  `per_square_accuracy_all_boards`;
- scenes per second, finding and reading, one thread (the screenshots only too, also per
  CPU second: on a shared machine the wall clock counts other jobs' time).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from chessvlm.errors import InputError
from chessvlm.finder import FoundBoard, box_iou, find_boards
from chessvlm.io import JsonlAppender, atomic_write_json, read_jsonl
from chessvlm.positions import board_from_fen, square_symbols
from chessvlm.scenes import LABELS_FILE

MATCH_IOU = 0.5
# A found board whose corners are all within half a square of the label's is in place.
IN_PLACE = 0.5


def corners_box(corners: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    """The axis-aligned box around four corners: left, top, right, bottom."""
    xs = [float(x) for x, _ in corners]
    ys = [float(y) for _, y in corners]
    return min(xs), min(ys), max(xs), max(ys)


def match_boards(
    found: Sequence[Sequence[Sequence[float]]], labels: Sequence[Sequence[Sequence[float]]]
) -> list[tuple[int, int]]:
    """Pairs (found index, label index), greedily by IoU of their boxes, IoU >= 0.5."""
    pairs = sorted(
        (
            (box_iou(corners_box(f), corners_box(label)), i, j)
            for i, f in enumerate(found)
            for j, label in enumerate(labels)
        ),
        reverse=True,
    )
    used_found, used_label, matches = set(), set(), []
    for iou, i, j in pairs:
        if iou >= MATCH_IOU and i not in used_found and j not in used_label:
            used_found.add(i)
            used_label.add(j)
            matches.append((i, j))
    return sorted(matches, key=lambda pair: pair[1])


def corner_error_squares(
    found: Sequence[Sequence[float]], label: Sequence[Sequence[float]]
) -> float:
    """The largest distance of a found corner from its label along x or y, in squares."""
    truth = np.asarray(label, dtype=np.float64)
    side = float(np.mean(np.linalg.norm(truth - np.roll(truth, 1, axis=0), axis=1))) / 8
    return float(np.abs(np.asarray(found, dtype=np.float64) - truth).max()) / side


@dataclass
class SceneEvalConfig:
    """What `evaluate_scenes` reads and where it writes."""

    scenes_dir: str
    reader: str
    output: str
    max_scenes: int | None = None


def evaluate_scenes(config: SceneEvalConfig) -> dict:
    """Find and read every board of the scenes; write `predictions.jsonl` (resumable) and
    `metrics.json` into `output`, and return the metrics."""
    from tqdm import tqdm

    from chessvlm.reader.read import load_reader

    reader = load_reader(config.reader)
    scenes_dir = Path(config.scenes_dir)
    labels_path = scenes_dir / LABELS_FILE
    if not labels_path.is_file():
        raise InputError(str(labels_path), "no scenes here (make them with chessvlm data scenes)")
    scenes = read_jsonl(labels_path)[: config.max_scenes]
    out = Path(config.output)
    with JsonlAppender(out / "predictions.jsonl") as log:
        for scene in tqdm([s for s in scenes if s["id"] not in log.done_ids], desc="scenes"):
            log.write(_predict_scene(reader, scenes_dir, scene))
    by_id = {p["id"]: p for p in read_jsonl(out / "predictions.jsonl")}
    metrics = scene_metrics(scenes, [by_id[s["id"]] for s in scenes])
    metrics["reader"] = str(config.reader)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _predict_scene(reader, scenes_dir: Path, scene: dict) -> dict:
    from chessvlm.reader.images import open_image
    from chessvlm.reader.read import locate_board, read_found_boards

    image = open_image(scenes_dir / scene["image_path"])
    started, cpu_started = time.perf_counter(), time.process_time()
    # As `chessvlm predict` finds boards: a picture of one board is taken where the reader's
    # locator puts it.
    found = find_boards(image, locate=partial(locate_board, reader))
    readings = read_found_boards(reader, image, found)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    # The same boards read from their labelled corners: what a perfect finder would give.
    exact = [FoundBoard(tuple(map(tuple, label["corners"])), 1.0, 0.0) for label in scene["boards"]]
    exact_readings = read_found_boards(reader, image, exact)
    return {
        "id": scene["id"],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "boards": [
            {"corners": [list(c) for c in board.corners], "fen": reading.board.board_fen()}
            for board, reading in zip(found, readings, strict=True)
        ],
        "exact_crop_fens": [reading.board.board_fen() for reading in exact_readings],
    }


def scene_metrics(scenes: Sequence[dict], predictions: Sequence[dict]) -> dict:
    """The detection and reading figures (see the module docstring) of `predictions`, one
    per scene, against the scenes' labels."""
    labelled = found_count = false_boards = negative_false = 0
    negatives = order_pages = order_right = 0
    corner_errors: list[float] = []
    read_right = exact_right = squares = 0
    for scene, prediction in zip(scenes, predictions, strict=True):
        labels = [board["corners"] for board in scene["boards"]]
        found = [board["corners"] for board in prediction["boards"]]
        matches = match_boards(found, labels)
        labelled += len(labels)
        found_count += len(matches)
        false_boards += len(found) - len(matches)
        if not labels:
            negatives += 1
            negative_false += len(found)
        if scene["kind"] == "page":
            order_pages += 1
            in_order = [j for _, j in sorted(matches)] == list(range(len(labels)))
            order_right += len(matches) == len(labels) == len(found) and in_order
        for i, j in matches:
            corner_errors.append(corner_error_squares(found[i], labels[j]))
            truth = square_symbols(board_from_fen(scene["boards"][j]["fen"]))
            read = square_symbols(board_from_fen(prediction["boards"][i]["fen"]))
            exact = square_symbols(board_from_fen(prediction["exact_crop_fens"][j]))
            read_right += sum(a == b for a, b in zip(read, truth, strict=True))
            exact_right += sum(a == b for a, b in zip(exact, truth, strict=True))
            squares += 64
    screenshots = [p for s, p in zip(scenes, predictions, strict=True) if s["kind"] == "screenshot"]
    errors = np.asarray(corner_errors) if corner_errors else np.zeros(0)
    return {
        "scenes": len(scenes),
        "boards": labelled,
        "boards_found": found_count,
        "recall": _ratio(found_count, labelled),
        # A board found a square off overlaps its label well but is read wrong.
        "recall_in_place": _ratio(sum(error <= IN_PLACE for error in corner_errors), labelled),
        "false_boards": false_boards,
        "negative_scenes": negatives,
        "false_boards_on_negatives": negative_false,
        "false_board_rate_on_negatives": _ratio(negative_false, negatives),
        "corner_error_squares_mean": _stat(errors, np.mean),
        "corner_error_squares_p99": _stat(errors, lambda e: np.percentile(e, 99)),
        "corner_error_squares_max": _stat(errors, np.max),
        "corners_within_eighth_square": _stat(errors, lambda e: np.mean(e <= 0.125)),
        "pages": order_pages,
        "pages_all_found_in_reading_order": _ratio(order_right, order_pages),
        "per_square_accuracy_found_boards": _ratio(read_right, squares),
        "per_square_accuracy_exact_crops": _ratio(exact_right, squares),
        "per_square_accuracy_all_boards": _ratio(read_right, 64 * labelled),
        "scenes_per_second": _ratio(len(predictions), sum(p["seconds"] for p in predictions)),
        "screenshots_per_second": _ratio(len(screenshots), sum(p["seconds"] for p in screenshots)),
        # On a machine shared with other jobs, CPU time is the fairer clock.
        "screenshots_per_cpu_second": _ratio(
            len(screenshots), sum(p.get("cpu_seconds", p["seconds"]) for p in screenshots)
        ),
    }


# The settings `chessvlm finder tune` compares (the shipped `FinderSettings` is one of them).
TUNING_GRID = {"quadrant": (3, 4), "min_score": (10.0, 15.0), "min_corners": (24, 30)}


def tune_settings(scenes_dir: str | Path, max_scenes: int | None = None) -> list[dict]:
    """Find the boards of the scenes (seen designs: the test scenes stay unseen) with every
    combination of `TUNING_GRID`: per combination its recall, false boards and CPU seconds
    per scene, best recall first (then fewest false boards, then speed)."""
    from itertools import product

    from tqdm import tqdm

    from chessvlm.finder import FinderSettings
    from chessvlm.reader.images import open_image

    scenes = read_jsonl(Path(scenes_dir) / LABELS_FILE)[:max_scenes]
    images = [open_image(Path(scenes_dir) / scene["image_path"]) for scene in scenes]
    rows = []
    for values in tqdm(list(product(*TUNING_GRID.values())), desc="settings"):
        settings = FinderSettings(**dict(zip(TUNING_GRID, values, strict=True)))
        found = labelled = false = 0
        started = time.process_time()
        for scene, image in zip(scenes, images, strict=True):
            boards = [board.corners for board in find_boards(image, settings)]
            labels = [board["corners"] for board in scene["boards"]]
            matches = len(match_boards(boards, labels))
            found, labelled, false = (
                found + matches,
                labelled + len(labels),
                false + len(boards) - matches,
            )
        seconds = (time.process_time() - started) / len(scenes)
        rows.append(
            {
                **dict(zip(TUNING_GRID, values, strict=True)),
                "recall": _ratio(found, labelled),
                "false_boards": false,
                "cpu_seconds_per_scene": seconds,
                "shipped": settings == FinderSettings(),
            }
        )
    return sorted(
        rows,
        key=lambda row: (-(row["recall"] or 0), row["false_boards"], row["cpu_seconds_per_scene"]),
    )


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _stat(values: np.ndarray, function) -> float | None:
    return float(function(values)) if len(values) else None


def format_figures(metrics: dict) -> str:
    """The headline figures on a few lines, for the command and the bench."""
    return json.dumps(
        {key: value for key, value in metrics.items() if not isinstance(value, dict)}, indent=1
    )
