"""Board reader: accuracy on held-out looks, training time, reading speed, load time, size.

    OMP_NUM_THREADS=2 python bench/bench_reader.py --work /tmp/reader_bench \
        [--train 10000 --val 500 --test 1000] [--minutes 18] [--image_size 256] [--clip]

Steps, each skipped when its output exists (a rerun resumes where it stopped):

1. A synthetic JSON dataset (`chessvlm.datasets.synth_json_dataset`, 2 workers). Training and
   validation use `reader-train`: the `mixed` style (every piece set and theme, half the
   boards flipped, coordinates, last-move highlights, some JPEG) at sizes 224..512 px in steps
   of 32. The test split uses `reader-test`: the same looks at sizes 232..488 px that training
   never saw, so every test board's piece set x theme x size combination is new to the model.
2. Training (`train_reader`) with `--minutes` for its loop; decoding the images into memory
   and the final validation come on top, and the whole step is timed.
3. Evaluation of the test split (`evaluate_reader`, scored by `chessvlm.metrics`) with each
   decoding (`argmax`, and `chess_rules`: one king a side, no pawns on ranks 1/8), and once
   with the orientation given (as a user who says which side is at the bottom).
4. Reading speed: boards/s over the test images read from disk in batches of 64 (decoding
   included), per wall-clock second and per CPU second; the model load time in a fresh process.

The CPU here is shared with other jobs: wall-clock figures are pessimistic, CPU-second
figures less so. Prints a Markdown summary and writes WORK/bench.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from chessvlm import rendering
from chessvlm.datasets import synth_json_dataset
from chessvlm.io import atomic_write_json, read_jsonl
from chessvlm.reader.evaluate import ReaderEvalConfig, evaluate_reader
from chessvlm.reader.read import CONFIG_FILE, WEIGHTS_FILE, load_reader, predict_boards
from chessvlm.reader.train import ReaderTrainConfig, train_reader

TRAIN_SIZES = tuple(range(224, 513, 32))
TEST_SIZES = tuple(range(232, 489, 64))  # 232, 296, 360, 424, 488: none is a training size
# (decoding, orientation): the reader as it is, with chess rules, and told the orientation.
EVALUATIONS = (
    ("argmax", "predicted"),
    ("chess_rules", "predicted"),
    ("chess_rules", "given"),
)
LOAD_SCRIPT = """
import sys, time
started = time.perf_counter()
from chessvlm.reader.read import load_reader
imported = time.perf_counter()
load_reader(sys.argv[1])
print(imported - started, time.perf_counter() - imported)
"""


def evaluate(model: Path, data: Path, work: Path, decode: str, orientation: str) -> dict:
    """Step 3 for one decoding and orientation mode: the main figures of the test split."""
    out = work / f"eval_{decode}_{orientation}"
    config = ReaderEvalConfig(
        model=str(model),
        data_dir=str(data),
        output=str(out),
        decode=decode,
        orientation=orientation,
    )
    metrics = evaluate_reader(config)
    keys = (
        "per_square_accuracy",
        "exact_board_match",
        "boards_with_at_most_one_error",
        "valid_position_rate",
        "all_empty_baseline",
        "by_orientation",
        "reader",
    )
    return {key: metrics[key] for key in keys}


def register_styles() -> None:
    """The bench's two looks, as named styles the dataset builder can use."""
    mixed = rendering.STYLES["mixed"]
    rendering.STYLES["reader-train"] = dataclasses.replace(mixed, sizes=TRAIN_SIZES)
    rendering.STYLES["reader-test"] = dataclasses.replace(mixed, sizes=TEST_SIZES)


def make_dataset(data: Path, counts: dict[str, int], seed: int) -> None:
    """Step 1 (resumable through the dataset builder)."""
    started = time.perf_counter()
    synth_json_dataset(data, counts, seed, "reader-train", "reader-test", workers=2)
    print(f"dataset: {counts} in {time.perf_counter() - started:.0f} s")


def reading_speed(model: Path, data: Path, limit: int) -> dict[str, dict[str, float]]:
    """Boards per wall-clock and per CPU second reading test images from disk (step 4), with
    1 and 2 torch threads (decoding always runs in 2 threads beside them)."""
    import torch

    reader = load_reader(model)
    records = read_jsonl(data / "test.jsonl")[:limit]
    paths = [data / record["image_path"] for record in records]
    list(predict_boards(reader, paths[:64]))  # warm-up: thread pool, allocator
    speeds = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        wall, cpu = time.perf_counter(), time.process_time()
        read = sum(reading is not None for _, reading, _ in predict_boards(reader, paths))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        speeds[f"{threads} torch threads"] = {
            "boards": read,
            "boards_per_second": read / wall,
            "boards_per_cpu_second": read / cpu,
        }
    return speeds


def clip_speed(batch: int = 16) -> dict[str, float]:
    """The seed's encoder family for comparison: a ViT-B/32 reader (random weights: the speed
    does not depend on them), boards per CPU second for inference and for training steps."""
    import torch

    from chessvlm.reader.model import BoardReader, ReaderSpec, square_loss

    model = BoardReader(ReaderSpec(encoder="clip", image_size=256))
    images = torch.rand(batch, 3, 256, 256)
    with torch.inference_mode():
        model.eval()(images)
        cpu = time.process_time()
        model(images)
        inference = batch / (time.process_time() - cpu)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = torch.zeros(batch, 64, dtype=torch.long)
    cpu = time.process_time()
    squares, _ = model(images)
    square_loss(squares, labels).backward()
    optimizer.step()
    return {
        "inference_boards_per_cpu_second": inference,
        "training_boards_per_cpu_second": batch / (time.process_time() - cpu),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def load_seconds(model: Path) -> dict[str, float]:
    """Import and load times of a reader in a fresh Python process."""
    output = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(model)], check=True, capture_output=True, text=True
    ).stdout.split()
    return {"import_seconds": float(output[0]), "load_seconds": float(output[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/reader_bench"))
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=18.0)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip", action="store_true", help="also time a ViT-B/32 reader")
    args = parser.parse_args()

    register_styles()
    data, model = args.work / "data", args.work / "model"
    make_dataset(data, {"train": args.train, "val": args.val, "test": args.test}, args.seed)
    started = time.perf_counter()
    train_reader(
        ReaderTrainConfig(
            data_dir=str(data),
            out=str(model),
            image_size=args.image_size,
            epochs=args.epochs,
            max_minutes=args.minutes,
            seed=args.seed,
        )
    )
    results: dict = {"config": {k: str(v) for k, v in vars(args).items()}}
    # Decoding the images into memory and the final validation included.
    results["train_step_minutes"] = (time.perf_counter() - started) / 60
    results["reader"] = json.loads((model / CONFIG_FILE).read_text())
    results["evaluations"] = {
        f"{decode}, {orientation} orientation": evaluate(
            model, data, args.work, decode, orientation
        )
        for decode, orientation in EVALUATIONS
    }
    results["speed"] = reading_speed(model, data, args.test)
    results["load"] = load_seconds(model)
    results["checkpoint_bytes"] = sum(
        (model / name).stat().st_size for name in (CONFIG_FILE, WEIGHTS_FILE)
    )
    if args.clip:
        results["clip"] = clip_speed()
    atomic_write_json(args.work / "bench.json", results)
    print_summary(results)


def print_summary(results: dict) -> None:
    """The figures against the issue's targets, as a Markdown table."""
    reader = results["reader"]
    rows = [
        ("training loop minutes (wall)", f"{reader['train_minutes']:.1f}", ""),
        ("training CPU minutes", f"{reader['train_cpu_minutes']:.1f}", ""),
        ("whole training step minutes (wall)", f"{results['train_step_minutes']:.1f}", "<= 20"),
        ("epochs completed", str(reader["epoch"]), ""),
    ]
    for name, scores in results["evaluations"].items():
        rows += [
            (f"per-square accuracy ({name})", f"{scores['per_square_accuracy']:.5f}", ">= 0.999"),
            (f"exact boards ({name})", f"{scores['exact_board_match']:.4f}", ">= 0.97"),
        ]
    orientation = results["evaluations"]["argmax, predicted orientation"]["reader"]
    rows.append(("orientation accuracy", f"{orientation['orientation_accuracy']:.4f}", ""))
    load = results["load"]
    for threads, speed in results["speed"].items():
        rows += [
            (f"boards/s, wall, {threads}", f"{speed['boards_per_second']:.0f}", ">= 100"),
            (f"boards per CPU second, {threads}", f"{speed['boards_per_cpu_second']:.0f}", ""),
        ]
    rows += [
        ("model load s (after imports)", f"{load['load_seconds']:.2f}", "< 2"),
        ("import s (torch, chessvlm.reader)", f"{load['import_seconds']:.2f}", ""),
        ("checkpoint MB", f"{results['checkpoint_bytes'] / 1e6:.2f}", "< 20"),
    ]
    if "clip" in results:
        clip = results["clip"]
        rows += [
            (
                "ViT-B/32 reader: boards per CPU s, reading",
                f"{clip['inference_boards_per_cpu_second']:.1f}",
                "",
            ),
            (
                "ViT-B/32 reader: boards per CPU s, training",
                f"{clip['training_boards_per_cpu_second']:.1f}",
                "",
            ),
        ]
    print("| figure | measured | target |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
