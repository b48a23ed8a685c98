"""Training speed of the `small` preset on CPU: compact vs seed target, fp32 vs bf16 autocast.

Builds a small synthetic VLM dataset (or uses --data_dir), then for each target and precision
trains the preset from scratch through `chessvlm.training.train` (all weights, batch 32 by
default) for a few steps and reports seconds per optimizer step, samples per second and the
mean sequence length, from the step times the run logs to metrics.jsonl. The first steps
(warm-up of allocators and caches) are left out of the timing.

    OMP_NUM_THREADS=2 python bench/bench_train_small.py [--steps 8] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

from chessvlm.datasets import create_vlm_dataset, synth_json_dataset
from chessvlm.modeling import init_model, load_model_and_processor
from chessvlm.training import TrainConfig, VLMCollator, load_examples, train

SKIPPED_STEPS = 2


def build_data(root: Path, samples: int, style: str) -> Path:
    """A synthetic VLM dataset (compact answers; the seed target is rebuilt from FENs)."""
    synth_json_dataset(root / "json", {"train": samples}, seed=0, style=style)
    create_vlm_dataset(root / "json", root / "vlm")
    return root / "vlm"


def mean_length(model_dir: Path, data: Path, target: str, batch_size: int) -> float:
    """Mean tokens per sample (prompt, image and answer) of one collated batch."""
    _, processor = load_model_and_processor(model_dir, device="cpu")
    examples, _ = load_examples(data / "train.json", data.parent / "json", target, batch_size)
    size = json.loads((model_dir / "chessvlm_config.json").read_text())["image_size"]
    batch = VLMCollator(processor, size)(examples)
    return float(batch["attention_mask"].sum()) / len(examples)


def time_run(model_dir: Path, data: Path, out: Path, target: str, bf16: bool, args) -> dict:
    """Train a few steps and return the steady-state seconds per step."""
    config = TrainConfig(
        data_dir=data,
        image_base_dir=data.parent / "json",
        output_dir=out,
        model_name=str(model_dir),
        use_lora=False,
        target=target,
        batch_size=args.batch_size,
        max_steps=args.steps,
        logging_steps=1,
        save_steps=10**6,
        bf16_cpu=bf16,
        max_length=4096,
    )
    started = time.monotonic()
    train(config)
    wall = time.monotonic() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    stamps = [r["elapsed_s"] for r in records if "loss" in r]
    steps = [later - earlier for earlier, later in itertools.pairwise(stamps)][SKIPPED_STEPS:]
    seconds = statistics.median(steps)
    return {
        "target": target,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "s_per_step": round(seconds, 3),
        "samples_per_s": round(args.batch_size / seconds, 1),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--style", default="simple")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = build_data(root, args.batch_size * args.steps, args.style)
        model_dir = init_model(args.preset, root / "model")
        results = []
        for target in ("compact", "seed"):
            length = mean_length(model_dir, data, target, args.batch_size)
            for bf16 in (False, True):
                out = root / f"run-{target}-{bf16}"
                result = time_run(model_dir, data, out, target, bf16, args)
                results.append({**result, "tokens_per_sample": round(length)})
    print(f"\n{args.preset} preset, batch {args.batch_size}, {args.steps} steps each:")
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
