"""Where a reader training step's time goes: augmenting a batch, and whole steps of the real
training loop with the batches augmented ahead on a second thread, in turn with the training,
or not at all, side by side; optionally beside the augmentation of another commit.

    OMP_NUM_THREADS=2 python bench/bench_train_steps.py --work /tmp/train_steps \
        [--steps 40] [--rounds 3] [--precision float32] [--baseline COMMIT]

Renders the boards of 45 batches of 32 (`designs-seen`, `--steps` plus 5 that warm up, into
WORK/data once: a rerun reuses them), decodes them as `chessvlm reader train` does, then
times, in each round, every mode in turn on a fresh network (`ReaderTrainConfig` defaults), so
that a busy shared CPU weighs on all of them alike. `--baseline` adds the modes again with
`chessvlm/reader/augment.py` as it was at COMMIT (read with `git show`, run from this tree's
training loop). Prints the median round's milliseconds per step and each mode's speed against
the one training picks here (`spare_core`: ahead only when a core is free beyond torch's
threads), then the milliseconds of each augmentation on one batch, transform by transform.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from chessvlm.datasets import synth_json_dataset
from chessvlm.reader import augment
from chessvlm.reader import train as training
from chessvlm.reader.data import BoardSet, load_board_set, read_split
from chessvlm.reader.model import BoardReader
from chessvlm.reader.read import PRECISIONS, compute_precision, prepare_for_cpu
from chessvlm.reader.train import ReaderTrainConfig, _Trainer, spare_core

BATCH = 32
WARM_UP_STEPS = 5
SCHEDULES = ("ahead", "in turn")
NO_AUGMENTATION = "no augmentation"


def augmentation_at(commit: str) -> types.ModuleType:
    """`chessvlm.reader.augment` as it was at `commit`."""
    source = subprocess.run(
        ["git", "show", f"{commit}:src/chessvlm/reader/augment.py"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent,
    ).stdout
    module = types.ModuleType(f"augment_at_{commit}")
    exec(compile(source, f"{commit}:augment.py", "exec"), module.__dict__)
    return module


def steps_ms(
    train: BoardSet,
    config: ReaderTrainConfig,
    augmentation: types.ModuleType | None,
    schedule: str,
    steps: int,
) -> float:
    """Milliseconds a step of the real loop (`_Trainer.prepared` then `_Trainer.step`), with
    `augmentation`'s transforms (None: no augmentation) on the `schedule`."""
    torch.manual_seed(0)
    model = BoardReader(config.spec())
    prepare_for_cpu(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    progress = {"epoch": 0, "batch": 0, "step": 0, "seconds": 0.0, "best": None}
    run_config = ReaderTrainConfig(**{**vars(config), "augment": augmentation is not None})
    trainer = _Trainer(
        model, optimizer, 1e-3, run_config, config.precision, Path(config.out), progress, train
    )
    trainer.augment_ahead = schedule == "ahead"
    if augmentation is not None:
        training.augment_batch = augmentation.augment_batch
        training.augment_scenes = augmentation.augment_scenes
    batches = torch.arange(len(train)).split(BATCH)[: WARM_UP_STEPS + steps]
    started = 0.0
    for index, inputs in enumerate(trainer.prepared(batches)):
        if index == WARM_UP_STEPS:
            started = time.perf_counter()
        trainer.step(batches[index], inputs)
    return 1000 * (time.perf_counter() - started) / steps


def augmentation_ms(
    train: BoardSet, augmentation: types.ModuleType, rounds: int
) -> dict[str, float]:
    """Median milliseconds of each transform of `augmentation.augment_batch`, of the whole,
    and of `augment_scenes`, on batches of the training boards."""
    parts: dict[str, Callable[[torch.Tensor, torch.Generator], object]] = {
        "redraw pieces": augmentation._redraw_pieces,
        "stroke weight": augmentation._stroke_weight,
        "reframe": augmentation._reframe,
        "lower resolution": augmentation._lower_resolution,
        "recolour": augmentation._recolour,
        "jpeg": augmentation._jpeg,
    }
    times: dict[str, list[float]] = {name: [] for name in [*parts, "augment_batch", "scenes"]}
    batches = torch.arange(len(train)).split(BATCH)
    for round_index in range(rounds):
        for number, index in enumerate(batches):
            generator = torch.Generator().manual_seed(round_index * len(batches) + number)
            x = train.images[index].to(torch.float32).mul_(1 / 255)
            for name, transform in parts.items():
                started = time.perf_counter()
                result = transform(x, generator)
                times[name].append(time.perf_counter() - started)
                x = result if isinstance(result, torch.Tensor) else x
            started = time.perf_counter()
            augmentation.augment_batch(train.images[index], generator)
            times["augment_batch"].append(time.perf_counter() - started)
            started = time.perf_counter()
            augmentation.augment_scenes(train.scenes[index], train.boxes[index], generator)
            times["scenes"].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--baseline", help="also time the augmentation of this commit")
    args = parser.parse_args()
    data = Path(args.work) / "data"
    boards = BATCH * (WARM_UP_STEPS + args.steps)
    synth_json_dataset(data, {"train": boards, "val": 8}, 0, "designs-seen")
    config = ReaderTrainConfig(
        data_dir=str(data),
        out=str(Path(args.work) / "out"),
        precision=compute_precision(args.precision),
    )
    records = read_split(data, "train")
    train = load_board_set(data, records, config.image_size, workers=2, desc="decoding")

    augmentations = {"this tree": augment}
    if args.baseline:
        augmentations[args.baseline] = augmentation_at(args.baseline)
    modes: dict[str, tuple[types.ModuleType | None, str]] = {
        f"{name}, {schedule}": (module, schedule)
        for name, module in augmentations.items()
        for schedule in SCHEDULES
    }
    modes[NO_AUGMENTATION] = (None, "in turn")
    by_mode: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for mode, (module, schedule) in modes.items():
            by_mode[mode].append(steps_ms(train, config, module, schedule, args.steps))
    chosen = f"this tree, {'ahead' if spare_core() else 'in turn'}"
    median = {mode: statistics.median(values) for mode, values in by_mode.items()}
    print(f"\n{torch.get_num_threads()} torch threads, {config.precision}; training picks {chosen}")
    print("| augmentation, schedule | ms/step (median) | rounds | speed against the chosen |")
    print("|---|---|---|---|")
    for mode, values in by_mode.items():
        rounds = ", ".join(f"{value:.0f}" for value in values)
        print(f"| {mode} | {median[mode]:.1f} | {rounds} | {median[chosen] / median[mode]:.2f}x |")

    timings = {
        name: augmentation_ms(train, module, args.rounds) for name, module in augmentations.items()
    }
    names = list(timings)
    print(f"\n| one batch of 32, ms (median) | {' | '.join(names)} |")
    print("|---|" + "---|" * len(names))
    for part in timings["this tree"]:
        print(f"| {part} | {' | '.join(f'{timings[name][part]:.1f}' for name in names)} |")


if __name__ == "__main__":
    main()
