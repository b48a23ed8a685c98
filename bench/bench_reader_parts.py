"""Where the reader's time goes: milliseconds per board of each part of the network, for a
training step (forward and backward) and for reading (forward, eval mode), side by side with
the whole network, and the coordinates view (`EdgeReader`) at other widths beside the one
the network has.

    OMP_NUM_THREADS=1 python bench/bench_reader_parts.py [--reader DIR] [--image_size 256] \
        [--edge_channels 16 8 4] [--batch 32] [--rounds 3]

Without `--reader` the network is the one `chessvlm reader train` would build with its
defaults (random weights: time does not depend on them). Both are channels-last, as
`load_reader` leaves them; reading times the network as trained (`load_reader` also folds the
batch norms, which took the whole network from 10.0 to 7.6 ms a board: docs/reader.md).
Each round times every part in turn, so that a busy shared CPU weighs on all of them alike;
the median round is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from chessvlm.reader.model import (
    LOCATOR_SIZE,
    BoardReader,
    EdgeReader,
    ReaderEnsemble,
    ReaderSpec,
)
from chessvlm.reader.read import load_reader, prepare_for_cpu


def per_board(work: Callable[[], object], boards: int, repeats: int = 3) -> float:
    """Milliseconds per board of `work`, which handles `boards` boards (after a warm-up)."""
    work()
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    return 1000 * (time.perf_counter() - started) / repeats / boards


def training_step(module: torch.nn.Module, inputs: torch.Tensor) -> Callable[[], None]:
    """Forward and backward through `module` alone (its output's mean as the loss)."""

    def run() -> None:
        module.train()
        output = module(inputs)
        (output[0] if isinstance(output, tuple) else output).float().mean().backward()

    return run


def reading(module: torch.nn.Module, inputs: torch.Tensor) -> Callable[[], None]:
    """Forward through `module` in eval mode, without autograd."""

    def run() -> None:
        module.eval()
        with torch.inference_mode():
            module(inputs)

    return run


def parts(
    model: BoardReader, batch: int, edge_widths: list[int]
) -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    """The timed modules and their inputs' shapes: the whole network, then each part (the
    locator reads the whole image beside the network, so it is not in the whole)."""
    size = model.spec.image_size
    timed = {
        "whole network": (model, (batch, 3, size, size)),
        "encoder (squares)": (model.encoder, (batch, 3, size, size)),
        "coordinates view (edges)": (model.edges, (batch, 3, size, size)),
        "locator": (model.locator, (batch, 3, LOCATOR_SIZE, LOCATOR_SIZE)),
    }
    if model.context is not None:
        channels = model.encoder.out_channels
        timed["context layers"] = (model.context, (batch, channels, 8, 8))
    for width in edge_widths:
        timed[f"coordinates view, {width} channels"] = (
            EdgeReader(size, width).to(memory_format=torch.channels_last),
            (batch, 3, size, size),
        )
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader", help="checkpoint folder (default: a fresh default network)")
    parser.add_argument("--image_size", type=int, default=ReaderSpec.image_size)
    parser.add_argument("--edge_channels", type=int, nargs="*", default=[16, 8, 4])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.reader:
        model = load_reader(args.reader, fold=False).model
        if isinstance(model, ReaderEnsemble):
            # The parts are one reader's; an ensemble runs each member's in turn.
            model = model.members[0]
    else:
        model = BoardReader(ReaderSpec(image_size=args.image_size))
        prepare_for_cpu(model)
    model.requires_grad_(True)
    timed = parts(model, args.batch, args.edge_channels)
    inputs = {
        name: torch.rand(shape).contiguous(memory_format=torch.channels_last)
        for name, (_, shape) in timed.items()
    }
    rounds: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, (module, _) in timed.items():
            for mode, make in (("training", training_step), ("reading", reading)):
                rounds.setdefault((name, mode), []).append(
                    per_board(make(module, inputs[name]), args.batch)
                )
    whole = {
        mode: statistics.median(rounds[("whole network", mode)]) for mode in ("training", "reading")
    }
    print(
        f"{model.spec.encoder} reader, {model.spec.image_size} px, batch {args.batch}, "
        f"{torch.get_num_threads()} thread(s), median of {args.rounds} rounds\n"
    )
    print("| part | training step, ms/board | share | reading, ms/board | share |")
    print("|---|---|---|---|---|")
    for name in timed:
        cells = []
        for mode in ("training", "reading"):
            value = statistics.median(rounds[(name, mode)])
            cells += [f"{value:.2f}", f"{value / whole[mode]:.0%}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
