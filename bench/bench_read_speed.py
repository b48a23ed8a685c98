"""Reading speed of reader checkpoints side by side: boards/s end to end (file decoding,
locating, cropping, the network and decoding the answer), and the time of each part.

    OMP_NUM_THREADS=1 python bench/bench_read_speed.py --images DIR --boards 256 \
        --reader NEW_DIR [--reader OLD_DIR] [--rounds 2] [--decoders 2] [--as_predict_only]

Each reader is read as `chessvlm predict` reads today (`predict_boards`: the input
normalisation and the batch norms folded into the convolutions, the network in bfloat16 where
the CPU computes it natively, each batch cut out on its own thread while the network reads the
batch before, the boards it is unsure of read again at their exact corners), then without that
second reading (`Reader.recut_below = 0`); `--as_predict_only` stops there. Then the same
model one batch after the other (`read_images` per batch of decoded files), then that with the
model as trained (unfolded, float32), as before these changes; and as `predict` reads but in
float32, then without the margin reader (`chessvlm.reader.margin`: coordinates outside the
board), without the square context (`chessvlm.reader.context`, part of decoding) and without
the square matcher (`chessvlm.reader.matching`: look-alike squares), to show what each costs.
Torch runs on 1 thread, files are decoded on `--decoders` threads. Each round reads the same
boards with every variant in turn, so that a busy shared CPU weighs on all of them alike;
the ratio to the first is printed per round, with the process's CPU time per board.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from chessvlm.reader.images import crop_board, iter_loaded, load_scene
from chessvlm.reader.margin import cut_margins, margin_evidence
from chessvlm.reader.matching import with_look_alikes
from chessvlm.reader.model import LOCATOR_SIZE
from chessvlm.reader.read import (
    Reader,
    decode_outputs,
    load_reader,
    locate,
    predict_boards,
    read_images,
    run_network,
)

BATCH = 64


def parts_ms(reader: Reader, paths: list[Path]) -> dict[str, float]:
    """Milliseconds per board of each part, run one after the other in batches of 64."""
    n, timings = len(paths), {}
    started = time.perf_counter()
    views = [load_scene(path, size=reader.image_size, scene_size=LOCATOR_SIZE) for path in paths]
    timings["load"] = time.perf_counter() - started
    scenes = torch.from_numpy(np.stack([view[1] for view in views])).permute(0, 3, 1, 2)
    started = time.perf_counter()
    boxes = torch.cat([locate(reader.model, scenes[i : i + 64]) for i in range(0, n, 64)])
    timings["locate"] = time.perf_counter() - started
    started = time.perf_counter()
    crops = [
        crop_board(view[0], box, reader.image_size)
        for view, box in zip(views, boxes.tolist(), strict=True)
    ]
    timings["crop"] = time.perf_counter() - started
    if reader.margin_reader is not None:
        started = time.perf_counter()
        images = [view[0] for view in views]
        for i in range(0, n, 64):
            strips = cut_margins(images[i : i + 64], boxes[i : i + 64].tolist())
            margin_evidence(reader.margin_reader, strips)
        timings["margins"] = time.perf_counter() - started
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    started = time.perf_counter()
    outputs = [
        run_network(reader.model, batch[i : i + 64], reader.precision) for i in range(0, n, 64)
    ]
    timings["network"] = time.perf_counter() - started
    if reader.square_matcher is not None:
        started = time.perf_counter()
        for start, (log_probs, _) in zip(range(0, n, 64), outputs, strict=True):
            with_look_alikes(reader.square_matcher, batch[start : start + 64], log_probs)
        timings["matcher"] = time.perf_counter() - started
    started = time.perf_counter()
    for log_probs, meta in outputs:
        decode_outputs(log_probs, meta, reader.decode, with_to_move=False)
    timings["decode"] = time.perf_counter() - started
    return {part: seconds / n * 1e3 for part, seconds in timings.items()}


def pipelined(reader: Reader, paths: list[Path], decoders: int) -> int:
    """`predict_boards`, as `chessvlm predict` reads files; the boards read."""
    return sum(1 for _ in predict_boards(reader, paths, batch_size=BATCH, workers=decoders))


def one_batch_after_another(reader: Reader, paths: list[Path], decoders: int) -> int:
    """The baseline: decoded files read with `read_images`, one batch at a time."""
    load = partial(load_scene, size=reader.image_size, scene_size=LOCATOR_SIZE)
    # Decoding runs ahead of the reading (iter_loaded's lookahead), as it did before.
    views = (view for view, _ in iter_loaded(paths, load, workers=decoders, lookahead=2 * BATCH))
    count = 0
    while batch := list(islice(views, BATCH)):
        read_images(reader, [image for image, _ in batch], [scene for _, scene in batch])
        count += len(batch)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="a folder of board images")
    parser.add_argument("--reader", type=Path, action="append", required=True)
    parser.add_argument("--boards", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--decoders", type=int, default=2, help="file decoding threads")
    parser.add_argument(
        "--as_predict_only",
        action="store_true",
        help="read each checkpoint only as `chessvlm predict` does (more rounds in the time)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = sorted(args.images.glob("*.png"))[: args.boards]
    variants = {}
    for path in args.reader:
        folded = load_reader(path)
        unfolded = load_reader(path, fold=False, precision="float32")
        variants[f"{path}: predict_boards (folded, {folded.precision}, crops apart)"] = (
            folded,
            pipelined,
        )
        variants[f"{path}: predict_boards without exact corners for unsure boards"] = (
            dataclasses.replace(folded, recut_below=0.0),
            pipelined,
        )
        if args.as_predict_only:
            continue
        variants[f"{path}: predict_boards in float32"] = (
            dataclasses.replace(folded, precision="float32"),
            pipelined,
        )
        variants[f"{path}: predict_boards without the margin reader"] = (
            dataclasses.replace(folded, margin_reader=None),
            pipelined,
        )
        variants[f"{path}: predict_boards without the square context"] = (
            dataclasses.replace(folded, square_context=None),
            pipelined,
        )
        variants[f"{path}: predict_boards without the square matcher"] = (
            dataclasses.replace(folded, square_matcher=None),
            pipelined,
        )
        variants[f"{path}: folded, one batch after another"] = (folded, one_batch_after_another)
        variants[f"{path}: unfolded, one batch after another (before)"] = (
            unfolded,
            one_batch_after_another,
        )
    for reader, read in variants.values():  # warm-up: thread pools, allocator, kernels
        read(reader, paths[:BATCH], args.decoders)
    for round_number in range(1, args.rounds + 1):
        speeds = []
        for name, (reader, read) in variants.items():
            parts = ", ".join(f"{part} {ms:.2f}" for part, ms in parts_ms(reader, paths).items())
            wall, cpu = time.perf_counter(), time.process_time()
            count = read(reader, paths, args.decoders)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            speeds.append(count / wall)
            print(
                f"round {round_number} {name}: {speeds[-1]:.1f} boards/s "
                f"({speeds[-1] / speeds[0]:.2f}x the first), CPU {cpu / count * 1e3:.2f} ms a "
                f"board; parts, ms a board: {parts}",
                flush=True,
            )


if __name__ == "__main__":
    main()
