"""Training speed of the `small` preset on CPU: prompt, extra losses, target and precision.

Builds a small synthetic VLM dataset twice (the compact target's prompt, and `SHORT_PROMPT` as
the quickstart uses), then trains the preset from scratch through `chessvlm.training.train`
(all weights, batch 32 by default) for a few steps per variant and reports seconds per
optimizer step, samples per second, tokens per sample and the speed relative to the first
variant (the compact prompt and answer in fp32), from the step times the run logs to
metrics.jsonl. The first steps (warm-up of allocators and caches) are left out of the timing.

    OMP_NUM_THREADS=2 python bench/bench_train_small.py [--steps 12] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from chessvlm.datasets import create_vlm_dataset, synth_json_dataset
from chessvlm.modeling import init_model, load_model_and_processor
from chessvlm.prompts import SHORT_PROMPT
from chessvlm.training import TrainConfig, VLMCollator, load_examples, train

SKIPPED_STEPS = 2


# (name, VLM dataset, TrainConfig overrides); the first is the baseline of the ratios.
VARIANTS = (
    ("compact prompt and answer, fp32", "vlm", {}),
    ("short prompt", "vlm-short", {}),
    ("short prompt + square loss", "vlm-short", {"square_loss": True}),
    (
        "short prompt + square and routing losses",
        "vlm-short",
        {"square_loss": True, "routing_loss": True},
    ),
    ("compact prompt and answer, bf16 autocast", "vlm", {"bf16_cpu": True}),
    ("seed prompt and answer, fp32", "vlm", {"target": "seed"}),
)


def build_data(root: Path, samples: int, style: str) -> None:
    """The synthetic boards and their VLM datasets with the compact and the short prompt."""
    synth_json_dataset(root / "json", {"train": samples}, seed=0, style=style)
    create_vlm_dataset(root / "json", root / "vlm")
    create_vlm_dataset(root / "json", root / "vlm-short", prompt=SHORT_PROMPT)


def mean_length(model_dir: Path, data: Path, target: str | None, batch_size: int) -> float:
    """Mean tokens per sample (prompt, image and answer) of one collated batch."""
    _, processor = load_model_and_processor(model_dir, device="cpu")
    examples, _ = load_examples(data / "train.json", data.parent / "json", target, batch_size)
    size = json.loads((model_dir / "chessvlm_config.json").read_text())["image_size"]
    batch = VLMCollator(processor, size)(examples)
    return float(batch["attention_mask"].sum()) / len(examples)


def time_run(model_dir: Path, data: Path, out: Path, overrides: dict, args) -> dict:
    """Train a few steps and return the steady-state seconds per step."""
    config = TrainConfig(
        data_dir=data,
        image_base_dir=data.parent / "json",
        output_dir=out,
        model_name=str(model_dir),
        use_lora=False,
        batch_size=args.batch_size,
        max_steps=args.steps,
        logging_steps=1,
        save_steps=10**6,
        max_length=4096,
        **overrides,
    )
    started = time.monotonic()
    train(config)
    wall = time.monotonic() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # The log's stamps have 0.1 s resolution: time the steps after the warm-up as one span.
    stamps = [r["elapsed_s"] for r in records if "loss" in r][SKIPPED_STEPS:]
    seconds = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return {
        "s_per_step": round(seconds, 2),
        "samples_per_s": round(args.batch_size / seconds, 1),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--style", default="simple")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_data(root, args.batch_size * args.steps, args.style)
        model_dir = init_model(args.preset, root / "model")
        results = []
        for index, (name, dataset, overrides) in enumerate(VARIANTS):
            data = root / dataset
            length = mean_length(model_dir, data, overrides.get("target"), args.batch_size)
            result = time_run(model_dir, data, root / f"run-{index}", overrides, args)
            results.append({"variant": name, **result, "tokens_per_sample": round(length)})
    baseline = results[0]["s_per_step"]
    print(f"\n{args.preset} preset, batch {args.batch_size}, {args.steps} steps each:")
    print("| variant | s/step | samples/s | tokens/sample | speed vs first |")
    print("|---|---|---|---|---|")
    for r in results:
        speed = baseline / r["s_per_step"]
        print(
            f"| {r['variant']} | {r['s_per_step']} | {r['samples_per_s']} "
            f"| {r['tokens_per_sample']} | {speed:.2f}x |"
        )


if __name__ == "__main__":
    main()
