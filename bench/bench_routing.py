"""What the routing loss buys a small VLM trained from scratch: the same run with and without it.

Trains the `small` preset from scratch twice through `chessvlm.training.train`, with the same
data, seed and data order, the one-line prompt and the square loss (the quickstart's recipe),
once without and once with `--routing_loss`, for the same number of steps. Prints the val loss
along the way and, for each run, greedy generation scored on the test split (per-square,
exact boards, valid JSON) with `chessvlm.evaluation.evaluate`.

The data is a quickstart folder's (`--data runs/quickstart`: its `data/` and `vlm_data/`), or
boards rendered here in the `mixed` style when `--data` is not given.

    OMP_NUM_THREADS=2 python bench/bench_routing.py --data runs/quickstart [--steps 600]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from chessvlm.datasets import create_vlm_dataset, synth_json_dataset
from chessvlm.evaluation import EvaluateConfig, evaluate
from chessvlm.modeling import init_model
from chessvlm.prompts import SHORT_PROMPT
from chessvlm.training import TrainConfig, train

# (name, TrainConfig overrides); the first is the baseline.
ARMS = (
    ("square loss", {}),
    ("square loss + routing loss", {"routing_loss": True}),
)


def render_data(root: Path, train_samples: int, workers: int) -> tuple[Path, Path]:
    """Mixed-style boards and their VLM dataset with the one-line prompt."""
    counts = {"train": train_samples, "val": 200, "test": 300}
    synth_json_dataset(root / "data", counts, seed=0, style="mixed", workers=workers)
    create_vlm_dataset(root / "data", root / "vlm_data", prompt=SHORT_PROMPT)
    return root / "data", root / "vlm_data"


def run_arm(model: Path, images: Path, vlm: Path, out: Path, overrides: dict, args) -> dict:
    """Train one arm, then score its greedy answers on the test split."""
    config = TrainConfig(
        data_dir=vlm,
        image_base_dir=images,
        output_dir=out / "model",
        model_name=str(model),
        use_lora=False,
        square_loss=True,
        max_steps=args.steps,
        eval_steps=args.eval_every,
        save_steps=10**6,
        logging_steps=20,
        **overrides,
    )
    started = time.monotonic()
    train(config)
    minutes = (time.monotonic() - started) / 60
    log = [json.loads(line) for line in (out / "model" / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["eval_loss"] for r in log if "eval_loss" in r}
    scores = evaluate(
        EvaluateConfig(
            model_path=str(out / "model"),
            test_data=vlm / "test.json",
            image_base_dir=images,
            output=out / "metrics.json",
            batch_size=50,
        )
    )
    return {"minutes": minutes, "val": val, **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a quickstart output folder to reuse")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--train-samples", type=int, default=20000, help="when rendering")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.data:
            images, vlm = args.data / "data", args.data / "vlm_data"
        else:
            images, vlm = render_data(root, args.train_samples, args.workers)
        model = init_model("small", root / "init")
        results = [
            (name, run_arm(model, images, vlm, root / f"arm-{i}", overrides, args))
            for i, (name, overrides) in enumerate(ARMS)
        ]
    steps = sorted(results[0][1]["val"])
    print(f"\nsmall preset from scratch, batch 32, {args.steps} steps each, same data and seed")
    print("| run | minutes | " + " | ".join(f"val loss @{s}" for s in steps), end=" ")
    print("| per-square | exact boards | valid JSON |")
    print("|---" * (len(steps) + 5) + "|")
    for name, r in results:
        losses = " | ".join(f"{r['val'].get(s, float('nan')):.4f}" for s in steps)
        print(
            f"| {name} | {r['minutes']:.1f} | {losses} | {r['per_square_accuracy']:.2%} "
            f"| {r['exact_board_match']:.1%} | {r['valid_json_rate']:.0%} |"
        )
    base, routed = results[0][1], results[1][1]
    wrong = (1 - base["per_square_accuracy"], 1 - routed["per_square_accuracy"])
    ratio = f"{wrong[0] / wrong[1]:.0f}x fewer" if wrong[1] else "none left"
    print(
        f"wrong squares: {wrong[0]:.4%} without the routing loss, {wrong[1]:.4%} with it ({ratio})"
    )


if __name__ == "__main__":
    main()
