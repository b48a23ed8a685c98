"""Board finder: boards found, false boards, corners, reading from its crops, and speed, on
scenes drawn only with the designs and looks that training never sees.

    OMP_NUM_THREADS=1 python bench/bench_finder.py --work /tmp/finder_bench \
        [--scenes 400] [--negatives 200] [--speed 100] [--against GIT_REV]

Steps, each resumed when its output exists:

1. Test scenes (`chessvlm data scenes --designs held-out`): screenshots, pages of several
   boards, book pages (some scanned askew) and negatives, in WORK/scenes; and a set of
   negatives only (text, textures, draughts boards, spreadsheets, other checkered
   patterns) in WORK/negatives, for the false-board rate.
2. `chessvlm finder evaluate` with the shipped reader on both (`detection.evaluate_scenes`).
3. Speed on the screenshots (1280 x 800), one thread: finding and reading each board,
   against the baseline of reading the same boards from crops at their labelled corners
   (the reader alone), per wall-clock and per CPU second, and their ratio.
4. With `--against REV`: the finder of that git revision (`src/chessvlm/finder.py` as it was
   there) beside today's on the same screenshots, finding only, rounds interleaved so that
   other jobs slow both alike: CPU ms per screenshot, their ratio, and on how many
   screenshots both find the same boards (every corner within 0.05 px).

Prints the issue's targets beside the figures and writes WORK/bench.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import torch

import chessvlm.finder
from chessvlm.detection import SceneEvalConfig, evaluate_scenes
from chessvlm.finder import FoundBoard, find_boards
from chessvlm.io import atomic_write_json, read_jsonl
from chessvlm.reader.default import default_reader
from chessvlm.reader.images import open_image
from chessvlm.reader.read import load_reader, locate_board, read_found_boards
from chessvlm.scenes import LABELS_FILE, write_scenes


def speed(scenes_dir: Path, count: int) -> dict:
    """Screenshots per second (wall and CPU): found and read, and read from exact crops."""
    reader = load_reader(default_reader())
    shots = [s for s in read_jsonl(scenes_dir / LABELS_FILE) if s["kind"] == "screenshot"]
    images = [open_image(scenes_dir / s["image_path"]) for s in shots[:count]]
    exact = [
        [FoundBoard(tuple(map(tuple, b["corners"])), 1.0, 0.0) for b in s["boards"]]
        for s in shots[:count]
    ]
    read_found_boards(reader, images[0], exact[0])  # warm up
    locate = partial(locate_board, reader)  # as `chessvlm predict` finds boards
    timings = {}
    for name, work in (
        (
            "found_and_read",
            lambda image, _: read_found_boards(reader, image, find_boards(image, locate=locate)),
        ),
        ("read_exact_crops", lambda image, boards: read_found_boards(reader, image, boards)),
    ):
        wall, cpu = time.perf_counter(), time.process_time()
        for image, boards in zip(images, exact, strict=True):
            work(image, boards)
        timings[name] = {
            "per_second": len(images) / (time.perf_counter() - wall),
            "per_cpu_second": len(images) / (time.process_time() - cpu),
        }
    return {"screenshots": len(images), **timings}


ROUNDS = 3


def finder_at(revision: str) -> ModuleType:
    """`chessvlm.finder` as it was at git `revision`, imported beside today's."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{revision}:src/chessvlm/finder.py"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "finder_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("finder_then", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["finder_then"] = module
    spec.loader.exec_module(module)
    return module


def against(scenes_dir: Path, count: int, revision: str) -> dict:
    """Step 4: CPU ms per screenshot of the finder at `revision` and today's, interleaved."""
    reader = load_reader(default_reader())
    locate = partial(locate_board, reader)
    shots = [s for s in read_jsonl(scenes_dir / LABELS_FILE) if s["kind"] == "screenshot"]
    images = [open_image(scenes_dir / s["image_path"]) for s in shots[:count]]
    finders = {revision: finder_at(revision), "today": chessvlm.finder}
    found = {name: [f.find_boards(i, locate=locate) for i in images] for name, f in finders.items()}
    same = sum(
        len(a) == len(b)
        and all(
            np.abs(np.subtract(x.corners, y.corners)).max() <= 0.05
            for x, y in zip(a, b, strict=True)
        )
        for a, b in zip(*found.values(), strict=True)
    )
    cpu = {name: [] for name in finders}
    for _ in range(ROUNDS):
        for name, finder in finders.items():
            started = time.process_time()
            for image in images:
                finder.find_boards(image, locate=locate)
            cpu[name].append(1000 * (time.process_time() - started) / len(images))
    return {"revision": revision, "ms_per_screenshot": cpu, "same_boards": same, "of": len(images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=400)
    parser.add_argument("--negatives", type=int, default=200)
    parser.add_argument("--speed", type=int, default=100, help="screenshots timed")
    parser.add_argument("--against", help="a git revision whose finder to time beside today's")
    args = parser.parse_args()
    # The speed target is for one thread: torch follows OMP_NUM_THREADS, OpenCV would
    # otherwise spread its resizes and filters over every core.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    write_scenes(args.work / "scenes", args.scenes, seed=0, designs="held-out")
    write_scenes(
        args.work / "negatives", args.negatives, seed=0, designs="held-out", kind="negative"
    )
    reader = str(default_reader())
    scenes = evaluate_scenes(
        SceneEvalConfig(str(args.work / "scenes"), reader, str(args.work / "run"))
    )
    negatives = evaluate_scenes(
        SceneEvalConfig(str(args.work / "negatives"), reader, str(args.work / "run-negatives"))
    )
    timed = speed(args.work / "scenes", args.speed)
    false_rate = (scenes["false_boards_on_negatives"] + negatives["false_boards_on_negatives"]) / (
        scenes["negative_scenes"] + negatives["negative_scenes"]
    )
    gap = 100 * (
        scenes["per_square_accuracy_exact_crops"] - scenes["per_square_accuracy_found_boards"]
    )
    found = timed["found_and_read"]
    rows = [
        ("boards found", f"{100 * scenes['recall']:.2f}%", ">= 99.5%"),
        (
            "boards found in place (corners within half a square)",
            f"{100 * scenes['recall_in_place']:.2f}%",
            "",
        ),
        ("false boards on negatives (per negative)", f"{100 * false_rate:.2f}%", "<= 0.5%"),
        (
            "false boards in scenes with boards",
            str(scenes["false_boards"] - scenes["false_boards_on_negatives"]),
            "",
        ),
        (
            "corners within 1/8 square",
            f"{100 * scenes['corners_within_eighth_square']:.2f}%",
            "all",
        ),
        (
            "corner error, mean / p99 / max (squares)",
            "{:.3f} / {:.3f} / {:.3f}".format(
                scenes["corner_error_squares_mean"],
                scenes["corner_error_squares_p99"],
                scenes["corner_error_squares_max"],
            ),
            "<= 0.125",
        ),
        (
            "per-square, finder's crops / exact crops",
            "{:.2f}% / {:.2f}% (gap {:.2f} points)".format(
                100 * scenes["per_square_accuracy_found_boards"],
                100 * scenes["per_square_accuracy_exact_crops"],
                gap,
            ),
            "gap <= 0.2",
        ),
        (
            "book pages: every diagram found, in reading order",
            f"{100 * scenes['pages_all_found_in_reading_order']:.1f}%",
            "100%",
        ),
        (
            "screenshots/s, found and read (wall / CPU)",
            f"{found['per_second']:.1f} / {found['per_cpu_second']:.1f}",
            ">= 20",
        ),
        (
            "baseline: read from exact crops only (wall / CPU)",
            "{:.1f} / {:.1f}".format(
                timed["read_exact_crops"]["per_second"], timed["read_exact_crops"]["per_cpu_second"]
            ),
            "",
        ),
        (
            "finding + reading / reading alone, CPU time",
            "{:.2f}x".format(timed["read_exact_crops"]["per_cpu_second"] / found["per_cpu_second"]),
            "",
        ),
    ]
    print(
        f"{scenes['scenes']} scenes ({scenes['boards']} boards, {scenes['negative_scenes']} "
        f"negatives) + {negatives['scenes']} negatives, designs-held-out, 1 thread\n"
    )
    print("| figure | measured | target |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    atomic_write_json(
        args.work / "bench.json", {"scenes": scenes, "negatives": negatives, "speed": timed}
    )
    print(json.dumps(timed))
    if args.against:
        compared = against(args.work / "scenes", args.speed, args.against)
        then, today = compared["ms_per_screenshot"].values()
        print(
            f"\nfinding only, CPU ms per screenshot over {ROUNDS} interleaved rounds: "
            f"{args.against} {' '.join(f'{t:.1f}' for t in then)}, today "
            f"{' '.join(f'{t:.1f}' for t in today)}; {args.against} / today "
            f"{min(then) / min(today):.2f}x (fastest rounds); the same boards on "
            f"{compared['same_boards']} of {compared['of']} screenshots"
        )


if __name__ == "__main__":
    main()
