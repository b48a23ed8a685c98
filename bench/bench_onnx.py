"""The exported reader under onnxruntime beside the same reader under torch.

    OMP_NUM_THREADS=1 python bench/bench_onnx.py [--out /tmp/onnx] [--boards 200]
        [--batches 1 8 32] [--seconds 5] [--threads 1]

Exports the shipped reader (`chessvlm export --format onnx`, checked against torch on
`--boards` rendered boards), then times each runtime on the same boards, already decoded and
cut to their squares, so the figures are the networks' alone: the locator on the whole image
at 128 px, then the reader on the 256 px crop. Each batch size runs `--seconds` per runtime,
interleaved (torch, onnxruntime, torch, onnxruntime) so that other jobs on a shared machine
slow both alike. Prints boards/s per wall-clock second and onnxruntime / torch ratios.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from chessvlm.export import OnnxReader, check_boards, export_onnx
from chessvlm.reader.default import default_reader
from chessvlm.reader.images import crop_board, scene_array
from chessvlm.reader.model import LOCATOR_SIZE
from chessvlm.reader.read import load_reader, locate, run_network

ROUNDS = 2


def boards_per_second(step: Callable[[], object], boards: int, seconds: float) -> float:
    """Boards/s of `step` (which reads `boards` boards) over about `seconds`."""
    step()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        done += boards
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/chessvlm-onnx-bench")
    parser.add_argument("--boards", type=int, default=200, help="boards checked and timed")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0, help="per runtime and round")
    parser.add_argument("--threads", type=int, default=1, help="for both runtimes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    check = export_onnx(default_reader(), args.out, check_boards=args.boards)
    print(
        f"check on {check.boards} boards: same FEN {check.same_fen}, largest square "
        f"probability difference {check.max_square_probability_difference:.2e}"
    )
    reader = load_reader(default_reader())
    exported = OnnxReader(args.out, reader.config, threads=args.threads)
    images = [image.convert("RGB") for image, _ in check_boards(args.boards)]
    scenes = np.stack([scene_array(image, LOCATOR_SIZE) for image in images])
    crops = np.stack([crop_board(image, (0, 0, 1, 1), reader.image_size) for image in images])
    print(f"\n{args.threads} thread(s); boards/s (wall clock), networks only\n")
    print("| batch | torch | onnxruntime | onnxruntime / torch |")
    print("|---|---|---|---|")
    for batch in args.batches:
        scene_batch, crop_batch = scenes[:batch], crops[:batch]
        torch_scenes = torch.from_numpy(scene_batch).permute(0, 3, 1, 2)
        torch_crops = torch.from_numpy(crop_batch).permute(0, 3, 1, 2)

        def with_torch(scenes=torch_scenes, crops=torch_crops):
            locate(reader.model, scenes)
            run_network(reader.model, crops)

        def with_onnx(scenes=scene_batch, crops=crop_batch):
            exported.locate(scenes)
            exported.probabilities(crops)

        rates = {"torch": [], "onnx": []}
        for _ in range(ROUNDS):
            rates["torch"].append(boards_per_second(with_torch, batch, args.seconds / ROUNDS))
            rates["onnx"].append(boards_per_second(with_onnx, batch, args.seconds / ROUNDS))
        torch_rate, onnx_rate = (sum(values) / ROUNDS for values in rates.values())
        print(f"| {batch} | {torch_rate:.0f} | {onnx_rate:.0f} | {onnx_rate / torch_rate:.2f}x |")


if __name__ == "__main__":
    main()
