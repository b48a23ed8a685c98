"""The shipped reader beside the best public board reader (PyPI `chessvision`), same boards.

    OMP_NUM_THREADS=1 python bench/bench_public_reader.py --data /tmp/ev/held --data /tmp/ev/seen \
        [--boards 1000] [--scenes /tmp/finder_bench/scenes] [--out /tmp/public_reader.json]

`--data` folders are `chessvlm data synth` outputs (their test split); `--scenes` is a
`chessvlm data scenes` folder, of which the screenshots are read. Each image is decoded
once and handed to both readers, on one thread each (torch and OpenCV), and each board is
read two ways:

- **from the labelled corners**: the reader alone, given the board's squares exactly
  (ours: `read_found_boards` at the label's corners; chessvision: its `BoardPredictor` on
  the image cropped to the label's box);
- **as a user feeds it**: the whole image, found and read (ours: `find_boards` then
  `read_found_boards`, as `chessvlm predict`; chessvision: `BoardDetector` then
  `BoardPredictor`, as its `chessvision board` command). The found board overlapping the
  label's box (IoU >= 0.5) is scored; a board not found scores 0 on every square.

Both infer the orientation (chessvision from where each colour's pieces stand, ours from
its network). Printed: per-square accuracy, exact boards, orientation, boards/s (CPU time:
the reading only, decoding excluded) per source and way, then the unseen designs read
worst by either. `pip install chessvision` first (it is in the `dev` extra).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import torch
from PIL import Image
from tqdm import tqdm

from chessvlm.detection import match_boards
from chessvlm.finder import FoundBoard, find_boards
from chessvlm.io import atomic_write_json, read_jsonl
from chessvlm.metrics import compute_metrics
from chessvlm.reader.data import read_split
from chessvlm.reader.default import default_reader
from chessvlm.reader.images import open_image
from chessvlm.reader.read import load_reader, locate_board, read_found_boards
from chessvlm.scenes import LABELS_FILE

Corners = tuple[tuple[float, float], ...]


@dataclass
class Reading:
    """One board read: its corners in the image, placement FEN and whether black is below."""

    corners: Corners
    board_fen: str
    flipped: bool


@dataclass
class Contender:
    """A board reader under test: read at given corners, and find-and-read a whole image."""

    name: str
    read_at: Callable[[Image.Image, Corners], Reading]
    find_and_read: Callable[[Image.Image], list[Reading]]


def ours() -> Contender:
    """The shipped default reader and board finder, as `chessvlm predict` uses them."""
    reader = load_reader(default_reader())
    locate = partial(locate_board, reader)

    def read(image: Image.Image, boards: Sequence[FoundBoard]) -> list[Reading]:
        readings = read_found_boards(reader, image, boards)
        return [
            Reading(b.corners, r.board.board_fen(), r.flipped_probability > 0.5)
            for b, r in zip(boards, readings, strict=True)
        ]

    return Contender(
        "chessvlm (shipped reader)",
        read_at=lambda image, corners: read(image, [FoundBoard(corners, 1.0, 0.0)])[0],
        find_and_read=lambda image: read(image, find_boards(image, locate=locate)),
    )


def chessvision() -> Contender:
    """PyPI chessvision's detector and piece classifier, with its own orientation guess."""
    from chessvision import BoardDetector, BoardPredictor, Orientation

    detector, predictor = BoardDetector(), BoardPredictor()

    def read(board, corners: Corners) -> Reading:
        prediction = predictor.predict(board)
        placement = prediction.fen.split()[0]
        return Reading(corners, placement, prediction.orientation is Orientation.BLACK)

    def find_and_read(image: Image.Image) -> list[Reading]:
        found = []
        for board in detector.detect(image):
            x, y, w, h = board.box
            found.append(read(board, ((x, y), (x + w, y), (x + w, y + h), (x, y + h))))
        return found

    def read_at(image: Image.Image, corners: Corners) -> Reading:
        xs, ys = [x for x, _ in corners], [y for _, y in corners]
        return read(image.crop((min(xs), min(ys), max(xs), max(ys))), corners)

    return Contender("chessvision 0.13.1", read_at, find_and_read)


@dataclass
class Board:
    """A labelled board to read: its image, its corners, and its label record."""

    image_path: Path
    corners: Corners
    record: dict


def dataset_boards(data_dir: Path, count: int) -> list[Board]:
    """The test split's boards, each at its labelled box (the whole image without one)."""
    boards = []
    for record in read_split(data_dir, "test", count):
        path = data_dir / str(record["image_path"])
        left, top, right, bottom = record.get("board_box") or (0, 0, *Image.open(path).size)
        corners = ((left, top), (right, top), (right, bottom), (left, bottom))
        boards.append(Board(path, corners, record))
    return boards


def screenshot_boards(scenes_dir: Path, count: int) -> list[Board]:
    """The boards of the first `count` screenshots of a scenes folder."""
    shots = [s for s in read_jsonl(scenes_dir / LABELS_FILE) if s["kind"] == "screenshot"]
    return [
        Board(
            scenes_dir / str(shot["image_path"]),
            tuple(map(tuple, label["corners"])),
            # Scenes label the placement only; the metrics want a whole FEN.
            {
                **label,
                "id": f"{shot['id']}:{j}",
                "style": label["look"],
                "fen": f"{label['fen']} w - - 0 1",
            },
        )
        for shot in shots[:count]
        for j, label in enumerate(shot["boards"])
    ]


WAYS = ("labelled corners", "whole image")


def run(contenders: Sequence[Contender], boards: Sequence[Board], source: str) -> list[dict]:
    """Every contender reads every board both ways; one row of figures per pair."""
    results = {(c.name, way): [] for c in contenders for way in WAYS}
    cpu = dict.fromkeys(results, 0.0)
    for board in tqdm(boards, desc=source):
        image = open_image(board.image_path)
        for contender in contenders:
            for way in WAYS:
                started = time.process_time()
                try:
                    if way == WAYS[0]:
                        reading = contender.read_at(image, board.corners)
                    else:
                        reading = _matching(contender.find_and_read(image), board.corners)
                except Exception as error:  # a reader crashing on a board has not read it
                    reading = f"{type(error).__name__}: {error}"
                cpu[contender.name, way] += time.process_time() - started
                results[contender.name, way].append(reading)
    return [
        _figures(source, name, way, boards, readings, cpu[name, way])
        for (name, way), readings in results.items()
    ]


def _matching(readings: list[Reading], corners: Corners) -> Reading | str:
    matches = match_boards([r.corners for r in readings], [corners])
    return readings[matches[0][0]] if matches else "no board found at the label"


def _figures(
    source: str,
    name: str,
    way: str,
    boards: Sequence[Board],
    readings: Sequence[Reading | str],
    cpu_seconds: float,
) -> dict:
    records = [board.record for board in boards]
    predictions = [
        {"id": r["id"], "error": reading}
        if isinstance(reading, str)
        else {"id": r["id"], "fen": reading.board_fen}
        for r, reading in zip(records, readings, strict=True)
    ]
    metrics = compute_metrics(records, predictions, target="compact")
    oriented = [
        not isinstance(reading, str) and reading.flipped == bool(r.get("flipped"))
        for r, reading in zip(records, readings, strict=True)
    ]
    return {
        "source": source,
        "reader": name,
        "way": way,
        "boards": len(boards),
        "per_square": metrics["per_square_accuracy"],
        "exact_boards": metrics["exact_board_match"],
        "orientation": sum(oriented) / len(oriented),
        "not_read": sum(isinstance(reading, str) for reading in readings),
        "boards_per_cpu_second": len(boards) / cpu_seconds if cpu_seconds else None,
        "by_design": {
            design: figures["per_square_accuracy"]
            for design, figures in (metrics["by_design"] or {}).items()
        },
    }


def print_tables(rows: Sequence[dict], worst: int) -> None:
    """The figures side by side, then the designs read worst (the unseen ones)."""
    print(
        "\n| boards | way | reader | per square | exact boards | orientation | not read "
        "| boards/s (1 thread) |\n|---|---|---|---|---|---|---|---|"
    )
    for row in rows:
        speed = row["boards_per_cpu_second"]
        print(
            f"| {row['source']} ({row['boards']}) | {row['way']} | {row['reader']} "
            f"| {row['per_square']:.2%} | {row['exact_boards']:.1%} | {row['orientation']:.1%} "
            f"| {row['not_read']} | {speed:.1f} |"
        )
    for source in dict.fromkeys(row["source"] for row in rows):
        pair = [r for r in rows if r["source"] == source and r["way"] == WAYS[0]]
        designs = sorted(
            {d for r in pair for d in r["by_design"]},
            key=lambda d: min(r["by_design"].get(d, 1) for r in pair),
        )[:worst]
        if not designs:
            continue
        print(f"\n{source}, read from the labelled corners: the {len(designs)} worst designs")
        print("| design | " + " | ".join(r["reader"] for r in pair) + " |")
        print("|---|" + "---|" * len(pair))
        for design in designs:
            cells = " | ".join(f"{r['by_design'].get(design, float('nan')):.1%}" for r in pair)
            print(f"| {design} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", default=[], help="synth folder")
    parser.add_argument("--scenes", type=Path, help="a `chessvlm data scenes` folder")
    parser.add_argument("--boards", type=int, default=1000, help="per --data folder")
    parser.add_argument("--screenshots", type=int, default=200)
    parser.add_argument("--worst", type=int, default=8, help="designs listed per source")
    parser.add_argument("--out", type=Path, default=Path("/tmp/public_reader.json"))
    args = parser.parse_args()
    if not args.data and not args.scenes:
        parser.error("give --data and/or --scenes")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    contenders = [ours(), chessvision()]
    sources = [(d.name, dataset_boards(d, args.boards)) for d in args.data]
    if args.scenes:
        sources.append(("screenshots", screenshot_boards(args.scenes, args.screenshots)))
    rows = []
    for source, boards in sources:
        rows += run(contenders, boards, source)
        atomic_write_json(args.out, rows)
    print_tables(rows, args.worst)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
