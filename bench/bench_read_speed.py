"""Reading speed of reader checkpoints side by side: boards/s end to end (file decoding,
locating, cropping, the network and decoding the answer), and the time of each part.

    OMP_NUM_THREADS=1 python bench/bench_read_speed.py --images DIR --boards 256 \
        --reader NEW_DIR [--reader OLD_DIR] [--rounds 2]

Each reader is read as `load_reader` loads it (input normalisation folded into its stems)
and, as the baseline, unfolded. Each round reads the same boards with every variant in turn,
so that a busy shared CPU weighs on all of them alike; the ratio to the first is printed per
round.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from chessvlm.reader.images import crop_board, load_scene
from chessvlm.reader.model import LOCATOR_SIZE
from chessvlm.reader.read import (
    Reader,
    decode_outputs,
    load_reader,
    locate,
    predict_boards,
    run_network,
)


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
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    started = time.perf_counter()
    outputs = [run_network(reader.model, batch[i : i + 64]) for i in range(0, n, 64)]
    timings["network"] = time.perf_counter() - started
    started = time.perf_counter()
    for log_probs, meta in outputs:
        decode_outputs(log_probs, meta, reader.decode, with_to_move=False)
    timings["decode"] = time.perf_counter() - started
    return {part: seconds / n * 1e3 for part, seconds in timings.items()}


def boards_per_second(reader: Reader, paths: list[Path]) -> float:
    """`predict_boards` end to end, as `chessvlm predict` reads files."""
    started = time.perf_counter()
    count = sum(1 for _ in predict_boards(reader, paths, workers=1))
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="a folder of board images")
    parser.add_argument("--reader", type=Path, action="append", required=True)
    parser.add_argument("--boards", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = sorted(args.images.glob("*.png"))[: args.boards]
    variants = {
        f"{path} ({'folded' if fold else 'unfolded'})": load_reader(path, fold_normalisation=fold)
        for path in args.reader
        for fold in (True, False)
    }
    for round_number in range(1, args.rounds + 1):
        speeds = []
        for name, reader in variants.items():
            parts = ", ".join(f"{part} {ms:.2f}" for part, ms in parts_ms(reader, paths).items())
            speeds.append(boards_per_second(reader, paths))
            ratio = speeds[-1] / speeds[0]
            print(
                f"round {round_number} {name}: {speeds[-1]:.1f} boards/s "
                f"({ratio:.2f}x the first); ms/board: {parts}"
            )


if __name__ == "__main__":
    main()
