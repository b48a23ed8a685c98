"""Leave-designs-out: train on the seen piece designs and board looks, test on designs never seen.

    OMP_NUM_THREADS=2 python bench/bench_generalisation.py --work /tmp/generalisation \
        [--train 20000 --val 500 --test 1000] [--reader-minutes 20] [--vlm-minutes 30] [--no-vlm]
        [--reader DIR] [--pair designs|inner]

`--pair inner` runs the same steps on the inner pair (`designs-inner-seen` to train,
`designs-inner-held-out` to test: seen designs kept apart, `chessvlm.rendering.
inner_held_out_designs`), for tuning on unseen designs without touching the held-out ones.
The shipped square matcher was trained on those designs, so that pair's reader reads with a
square matcher trained in step 2 on the pair's training boards (`WORK/matcher`).

Steps, each skipped when its output exists (a rerun resumes where it stopped):

1. Two synthetic JSON datasets. `seen`: train, validation and an in-distribution test split
   in the `designs-seen` style (only the seen piece designs and board looks). `held-out`: a
   test split in `designs-held-out` (only designs and looks that `designs-seen` never draws),
   from other games.
2. The board reader, trained on `seen` for `--reader-minutes` of its training loop (or
   `--reader DIR`: a reader already trained on `designs-seen`, such as the shipped default),
   then evaluated on both test splits (`evaluate_reader`: it locates each board in the image,
   then reads it).
3. The small VLM (`init-model --preset small`, all weights, one-line prompt, square and
   routing losses, annealed over the last fifth), trained on `seen` for `--vlm-minutes`; each
   training image is cut to its labelled board box, and each test image to the box the reader
   found (`--crop_with`), since a VLM sees no label at test time.
4. A table per model: in-distribution against unseen designs (per-square, exact boards,
   orientation), and one row per piece design of the held-out test, worst first.

Prints Markdown and writes WORK/bench.json. The CPU is shared: minutes are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from chessvlm.datasets import synth_json_dataset
from chessvlm.io import atomic_write_json
from chessvlm.pieces import PIECE_SETS
from chessvlm.reader.evaluate import ReaderEvalConfig, evaluate_reader
from chessvlm.reader.read import PRECISIONS
from chessvlm.reader.train import ReaderTrainConfig, train_reader

# The styles of each pair: train (and test in distribution) on `seen`, test on `held-out`.
PAIRS = {
    "designs": {"seen": "designs-seen", "held-out": "designs-held-out"},
    "inner": {"seen": "designs-inner-seen", "held-out": "designs-inner-held-out"},
}
SPLITS = PAIRS["designs"]


def make_datasets(
    work: Path, args: argparse.Namespace, seen_style: str | None = None, pair: str = "designs"
) -> dict[str, Path]:
    """Step 1 (resumable through the dataset builder): `seen` (train, val and an
    in-distribution test split) in `seen_style` (default: `pair`'s), `held-out` (test) in
    `pair`'s held-out style (`PAIRS`)."""
    styles = PAIRS[pair]
    seen, held_out = work / "data-seen", work / "data-held-out"
    counts = {"train": args.train, "val": args.val, "test": args.test}
    started = time.perf_counter()
    synth_json_dataset(seen, counts, args.seed, seen_style or styles["seen"], workers=2)
    # Another seed: other games, so no test board is a training board in another look.
    synth_json_dataset(held_out, {"test": args.test}, args.seed + 1, styles["held-out"], workers=2)
    print(f"datasets in {time.perf_counter() - started:.0f} s")
    return {"seen": seen, "held-out": held_out}


def reader_figures(
    work: Path, data: dict[str, Path], args: argparse.Namespace
) -> tuple[Path, dict]:
    """Step 2: train on `seen` (unless `--reader` gives a trained one), evaluate on both test
    splits; returns the reader's folder and its figures."""
    model = args.reader or work / "reader"
    started = time.perf_counter()
    if args.reader is None:
        train_reader(
            ReaderTrainConfig(
                data_dir=str(data["seen"]),
                out=str(model),
                epochs=args.reader_epochs,
                max_minutes=args.reader_minutes,
                seed=args.seed,
                precision=args.reader_precision,
            )
        )
    figures: dict = {"train_step_minutes": (time.perf_counter() - started) / 60}
    config = json.loads((model / "reader.json").read_text())
    if args.reader is not None:
        figures["train_step_minutes"] = config["train_minutes"]
    figures["train_minutes"] = config["train_minutes"]
    figures["train_cpu_minutes"] = config["train_cpu_minutes"]
    figures["train_precision"] = config.get("train_precision", "float32")
    figures["epochs_trained"] = config.get("epochs_trained")
    matcher = own_square_matcher(work, data["seen"], figures) if args.pair == "inner" else None
    for name, folder in data.items():
        metrics = evaluate_reader(
            ReaderEvalConfig(
                model=str(model),
                data_dir=str(folder),
                output=str(work / f"reader-{name}"),
                square_matcher=matcher,
            )
        )
        figures[name] = summary(metrics)
    return model, figures


def own_square_matcher(work: Path, seen: Path, figures: dict) -> str:
    """A square matcher trained on the `seen` data's training boards (the shipped recipe) into
    WORK/matcher, unless one is there; its minutes go into `figures`."""
    from chessvlm.reader.matching import (
        MATCHER_CONFIG_FILE,
        MatcherRecipe,
        save_square_matcher,
        train_square_matcher,
    )

    out = work / "matcher"
    if not (out / MATCHER_CONFIG_FILE).is_file():
        started = time.perf_counter()
        recipe = MatcherRecipe()
        matcher, val = train_square_matcher(seen, recipe)
        save_square_matcher(matcher, out, recipe, val)
        figures["matcher_train_minutes"] = (time.perf_counter() - started) / 60
    return str(out)


def vlm_figures(
    work: Path,
    data: dict[str, Path],
    reader: Path,
    args: argparse.Namespace,
    family: str = "qwen2_vl",
) -> dict:
    """Step 3: the small VLM of `family`, trained on label crops, tested on the reader's crops.

    Besides the test figures: wall minutes of the step, CPU minutes and steps of training."""
    from chessvlm.datasets import create_vlm_dataset
    from chessvlm.evaluation import EvaluateConfig, evaluate
    from chessvlm.modeling import init_model, read_run_config
    from chessvlm.prompts import SHORT_PROMPT
    from chessvlm.training import TrainConfig, train

    name = "vlm" if family == "qwen2_vl" else f"vlm-{family}"
    base, model = work / f"{name}-base", work / name
    init_model("small", base, seed=args.seed, family=family)
    vlm_data = {}
    for split, folder in data.items():
        vlm_data[split] = work / f"vlm-data-{split}"
        create_vlm_dataset(folder, vlm_data[split], base_dir=folder, prompt=SHORT_PROMPT)
    started, cpu = time.perf_counter(), time.process_time()
    train(
        TrainConfig(
            data_dir=vlm_data["seen"],
            model_name=str(base),
            output_dir=model,
            image_base_dir=data["seen"],
            use_lora=False,
            num_epochs=100.0,  # the time budget ends training, not the epoch count
            resume=model.is_dir(),
            square_loss=True,
            routing_loss=True,
            max_minutes=args.vlm_minutes,
            lr_decay_fraction=0.2,
            seed=args.seed,
        )
    )
    run = read_run_config(model)
    figures: dict = {
        "train_step_minutes": (time.perf_counter() - started) / 60,
        "train_cpu_minutes": (time.process_time() - cpu) / 60,
        "steps": run["step"],
        "image_size": run["image_size"],
    }
    for split, folder in data.items():
        output = work / f"{name}-{split}" / "metrics.json"
        metrics = evaluate(
            EvaluateConfig(
                model_path=str(model),
                test_data=str(vlm_data[split] / "test.json"),
                image_base_dir=str(folder),
                output=str(output),
                crop_with=str(reader),
            )
        )
        figures[split] = summary(metrics)
    return figures


def summary(metrics: dict) -> dict:
    """The main figures, the orientation and the per-design breakdown of one evaluation."""
    by_design: dict[str, dict] = {}
    for piece_set, scores in (metrics.get("by_style") or {}).items():
        design = PIECE_SETS[piece_set].design if piece_set in PIECE_SETS else piece_set
        by_design.setdefault(design, {"boards": 0, "right_squares": 0.0, "exact": 0.0})
        entry = by_design[design]
        entry["boards"] += scores["n_samples"]
        entry["right_squares"] += scores["per_square_accuracy"] * scores["n_samples"]
        entry["exact"] += scores["exact_board_match"] * scores["n_samples"]
    designs = {
        design: {
            "boards": entry["boards"],
            "per_square_accuracy": entry["right_squares"] / entry["boards"],
            "exact_board_match": entry["exact"] / entry["boards"],
        }
        for design, entry in by_design.items()
    }
    reader = metrics.get("reader") or {}
    return {
        "per_square_accuracy": metrics["per_square_accuracy"],
        "exact_board_match": metrics["exact_board_match"],
        "all_empty_baseline": metrics["all_empty_baseline"],
        "boards_per_second": metrics.get("boards_per_second"),
        "by_orientation": metrics.get("by_orientation"),
        "orientation_accuracy": reader.get("orientation_accuracy"),
        "orientation_accuracy_pawns_no_coordinates": reader.get(
            "orientation_accuracy_pawns_no_coordinates"
        ),
        "box_error_squares": reader.get("box_error_squares"),
        "by_design": designs,
    }


def print_tables(results: dict, styles: dict[str, str]) -> None:
    """Side by side: in distribution and unseen designs (the pair's `styles`), then the unseen
    designs one by one."""
    for model in ("reader", "vlm"):
        if model not in results:
            continue
        figures = results[model]
        trained = f"trained {figures['train_step_minutes']:.1f} min (wall)"
        if "train_precision" in figures:
            trained += f" in {figures['train_precision']}, {figures['epochs_trained']} epochs"
        print(f"\n### {model}: {trained}\n")
        print(
            f"| figure | in distribution ({styles['seen']}) | "
            f"unseen designs ({styles['held-out']}) |"
        )
        print("|---|---|---|")
        for key in (
            "per_square_accuracy",
            "exact_board_match",
            "all_empty_baseline",
            "orientation_accuracy",
            "orientation_accuracy_pawns_no_coordinates",
            "box_error_squares",
            "boards_per_second",
        ):
            values = [figures[split].get(key) for split in styles]
            if any(value is not None for value in values):
                cells = ["-" if v is None else f"{v:.4f}" for v in values]
                print(f"| {key} | {cells[0]} | {cells[1]} |")
        print("\n| unseen design | boards | per-square | exact boards |\n|---|---|---|---|")
        designs = figures["held-out"]["by_design"]
        for design, scores in sorted(designs.items(), key=lambda d: d[1]["per_square_accuracy"]):
            print(
                f"| {design} | {scores['boards']} | {scores['per_square_accuracy']:.4f} | "
                f"{scores['exact_board_match']:.4f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/generalisation"))
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--reader-minutes", type=float, default=20.0)
    parser.add_argument("--reader-epochs", type=int, default=30)
    parser.add_argument(
        "--reader-precision",
        choices=PRECISIONS,
        default="float32",
        help="what the reader trains in (as `chessvlm reader train --precision`)",
    )
    parser.add_argument("--vlm-minutes", type=float, default=30.0)
    parser.add_argument("--no-vlm", action="store_true", help="the reader only")
    parser.add_argument(
        "--reader", type=Path, help="a reader trained on designs-seen: skip training one"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pair",
        choices=PAIRS,
        default="designs",
        help="designs: test on the held-out designs; inner: tune on seen designs kept apart",
    )
    args = parser.parse_args()

    data = make_datasets(args.work, args, pair=args.pair)
    results: dict = {"config": {k: str(v) for k, v in vars(args).items()}}
    reader, results["reader"] = reader_figures(args.work, data, args)
    if not args.no_vlm:
        results["vlm"] = vlm_figures(args.work, data, reader, args)
    atomic_write_json(args.work / "bench.json", results)
    print_tables(results, PAIRS[args.pair])


if __name__ == "__main__":
    main()
