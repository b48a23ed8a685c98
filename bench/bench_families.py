"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL and SmolVLM side by side: small presets trained alike, real sizes.

    OMP_NUM_THREADS=2 python bench/bench_families.py --work /tmp/families \
        [--train 2000 --val 100 --test 200] [--minutes 30] [--families qwen2_vl,smolvlm]
        [--style seed] [--real] [--real-step FAMILY]

Small presets (the default): one synthetic dataset (`designs-seen` train/val/test, or the
`--style` given, such as the seed's own look `seed`, and a `designs-held-out` test of piece
designs and board looks never trained on, from `bench_generalisation.make_datasets`); for each
family `init-model --preset small --family F` (the same widths and depths in every family, one
visual token per square), trained from scratch on all weights with the same recipe (one-line
prompt, square and routing losses, images cut to their labelled board box, learning rate
annealed over the last fifth) for the same `--minutes` of wall-clock; then scored by `chessvlm
evaluate` on both test splits (each test image cut to the board the shipped reader locates).
Steps resume: a family whose metrics exist is not retrained.

`--real`: for each family's released 2B-4B model, its architecture from the published
config.json (built on the meta device: no memory, no download): parameters, the seed's LoRA
parameters, and visual tokens per board at the size `chessvlm` uses for it.
`--real-step F`: one LoRA training step of F at real size on this CPU (bf16 weights and
autocast, batch 1, compact answer): seconds and peak resident memory. One family per process,
so that the peak is that family's.

Prints Markdown and writes WORK/small-FAMILY.json (one a family: families may train in
parallel processes sharing WORK, once one has made the datasets) and WORK/families.json.
The CPU is shared: minutes are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import torch
from bench_generalisation import SPLITS, make_datasets, vlm_figures
from bench_qwen2vl_2b import QWEN2_VL_2B_CONFIG, examples, time_steps

from chessvlm.families import FAMILIES, get_family, image_tokens, pin_image_size, stock_processor
from chessvlm.io import atomic_write_json
from chessvlm.modeling import count_parameters, default_image_size
from chessvlm.rendering import STYLES
from chessvlm.tokenizer import build_chess_tokenizer, build_qwen2_tokenizer

# The released models' config.json (the hub's flat layout where the hub has one), as
# published on the Hugging Face hub; the hub cannot be reached here to reread them.
REAL_CONFIGS: dict[str, dict] = {
    "qwen2_vl": QWEN2_VL_2B_CONFIG,
    "qwen2_5_vl": {  # Qwen/Qwen2.5-VL-3B-Instruct
        "model_type": "qwen2_5_vl",
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": True,
        "vocab_size": 151936,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_config": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
    },
    "qwen3_vl": {  # Qwen/Qwen3-VL-2B-Instruct
        "model_type": "qwen3_vl",
        "image_token_id": 151655,
        "video_token_id": 151656,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "tie_word_embeddings": True,
        "text_config": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "max_position_embeddings": 262144,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
            "bos_token_id": 151643,
            "eos_token_id": 151645,
        },
        "vision_config": {
            "depth": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17],
        },
    },
    "smolvlm": {  # HuggingFaceTB/SmolVLM2-2.2B-Instruct
        "model_type": "smolvlm",
        "image_token_id": 49190,
        "scale_factor": 3,
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama",
            "vocab_size": 49280,
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 24,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 16384,
            "rms_norm_eps": 1e-5,
            "rope_theta": 273768.0,
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 384,
        },
    },
}
# The released processors' board grid: SmolVLM2-2.2B reads 384 px images as 9x9 tokens.
REAL_SMOLVLM_PROCESSOR = {"max_image_size": 384, "image_seq_len": 81}


# ---------------------------------------------------------------------------------------------
# Small presets, trained alike


def train_family(work: Path, family: str, data: dict[str, Path], args) -> dict:
    """Build, train and score one family's small preset (`bench_generalisation.vlm_figures`,
    each test image cut to the board the shipped reader locates); returns its figures."""
    from chessvlm.reader.default import default_reader

    return vlm_figures(work, data, default_reader(), args, family)


def print_small(results: dict) -> None:
    """One row per family: steps in the budget, in distribution and unseen designs."""
    print(
        "\n| family | board px | steps | train min (wall / CPU) | per-square (seen) | "
        "exact boards (seen) | per-square (unseen designs) | exact boards (unseen) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for family, figures in results.items():
        seen, unseen = figures["seen"], figures["held-out"]
        print(
            f"| {FAMILIES[family].title} | {figures['image_size']} | {figures['steps']} | "
            f"{figures['train_step_minutes']:.1f} / {figures['train_cpu_minutes']:.1f} | "
            f"{seen['per_square_accuracy']:.4f} | {seen['exact_board_match']:.4f} | "
            f"{unseen['per_square_accuracy']:.4f} | {unseen['exact_board_match']:.4f} |"
        )


# ---------------------------------------------------------------------------------------------
# Real sizes


def real_config(family: str):
    """The transformers config of `family`'s released 2B-4B model."""
    from transformers import AutoConfig

    settings = dict(REAL_CONFIGS[family])
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


def real_processor(family: str):
    """The family's stock processor around Qwen2's full vocabulary, at the board size
    `chessvlm` uses for the released model (`modeling.default_image_size`)."""
    chosen = get_family(family)
    if family == "smolvlm":
        # SmolLM2's 49k vocabulary is not on PyPI, and Qwen2's ids overflow its embedding:
        # the reduced Qwen2 vocabulary splits prompt and answer as Qwen2 does, so a sample
        # has Qwen2's token count.
        tokenizer = build_chess_tokenizer(family)
        token = REAL_CONFIGS[family]["vision_config"]["patch_size"] * 3
        processor = stock_processor(chosen, tokenizer, 8 * token)
        processor.image_processor.max_image_size = {
            "longest_edge": REAL_SMOLVLM_PROCESSOR["max_image_size"]
        }
        processor.image_seq_len = REAL_SMOLVLM_PROCESSOR["image_seq_len"]
    else:
        tokenizer = build_qwen2_tokenizer(family=family)
        processor = stock_processor(chosen, tokenizer, 16 * chosen.token_pixels)
    pin_image_size(processor, default_image_size(processor))
    return processor


def real_sizes(family: str) -> dict:
    """Parameters, LoRA parameters and visual tokens a board of `family`'s released model."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from chessvlm.training import TrainConfig, lora_config

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(real_config(family))
        _, total = count_parameters(model)
        lora = lora_config(TrainConfig(data_dir=Path("."), output_dir=Path(".")), family)
        trainable, _ = count_parameters(get_peft_model(model, lora))
    processor = real_processor(family)
    size = default_image_size(processor)
    return {
        "parameters": total,
        "lora_parameters": trainable,
        "image_size": size,
        "visual_tokens": image_tokens(processor, size),
    }


def real_step(family: str) -> dict:
    """One LoRA step of the released architecture on the CPU: seconds and peak memory."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText, TrainingArguments

    from chessvlm.training import TrainConfig, VLMCollator, VLMTrainer, lora_config

    torch.manual_seed(0)
    processor = real_processor(family)
    config = real_config(family)
    config.image_token_id = processor.image_token_id  # SmolVLM: the reduced vocabulary's
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    lora = lora_config(TrainConfig(data_dir=Path("."), output_dir=Path(".")), family)
    model = get_peft_model(model, lora)
    model.config.use_cache = False
    size = default_image_size(processor)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = VLMTrainer(
            model=model, args=TrainingArguments(output_dir=tmp, report_to="none", use_cpu=True)
        )
        model.train()
        batch = VLMCollator(processor, size)(examples(Path(tmp), 1, "compact"))
        seconds = time_steps(trainer, model, batch, 1, torch.device("cpu"))
    return {
        "step_seconds": seconds,
        "tokens": int(batch["attention_mask"].sum()),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def print_real(results: dict) -> None:
    print("\n| family (released model) | parameters | LoRA parameters | board px | visual tokens")
    print("| CPU LoRA step | peak memory |\n|---|---|---|---|---|---|---|")
    for family, figures in results.items():
        step = figures.get("step")
        timing = f"{step['step_seconds']:.0f} s" if step else "not measured"
        memory = f"{step['peak_rss_gib']:.1f} GiB" if step else "-"
        print(
            f"| {FAMILIES[family].title} ({FAMILIES[family].real_model}) | "
            f"{figures['parameters'] / 1e9:.3f}B | {figures['lora_parameters'] / 1e6:.2f}M "
            f"({100 * figures['lora_parameters'] / figures['parameters']:.2f}%) | "
            f"{figures['image_size']} | {figures['visual_tokens']} | {timing} | {memory} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/families"))
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument(
        "--minutes", dest="vlm_minutes", type=float, default=30.0, help="training a family"
    )
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument(
        "--style",
        default=SPLITS["seen"],
        choices=tuple(STYLES),
        help="rendering style trained on and tested in distribution (default: %(default)s; "
        "`seed` is the seed's own look); unseen designs are always designs-held-out",
    )
    parser.add_argument("--real", action="store_true", help="real-size figures, no training")
    parser.add_argument("--real-step", choices=tuple(FAMILIES), help="time one real LoRA step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    families = [get_family(name).name for name in args.families.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.work / "families.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if args.real or args.real_step:
        real = results.setdefault("real", {})
        for family in families:
            real[family] = {**real.get(family, {}), **real_sizes(family)}
        if args.real_step:
            real[args.real_step]["step"] = real_step(args.real_step)
        atomic_write_json(results_path, results)
        print_real(real)
        return
    data = make_datasets(args.work, args, args.style)
    for family in families:
        # One file a family, so that families can train in parallel processes.
        figures = args.work / f"small-{family}.json"
        if not figures.is_file():
            trained = train_family(args.work, family, data, args)
            atomic_write_json(figures, {"style": args.style, **trained})
    small = {
        family: json.loads((args.work / f"small-{family}.json").read_text())
        for family in FAMILIES
        if (args.work / f"small-{family}.json").is_file()
    }
    print(
        f"\nsmall presets, {args.vlm_minutes:g} min of training each, in distribution "
        f"{args.style}, unseen {SPLITS['held-out']}:"
    )
    print_small(small)


if __name__ == "__main__":
    sys.exit(main())
