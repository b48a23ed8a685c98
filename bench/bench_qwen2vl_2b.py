"""Qwen2-VL-2B at full scale without a download: LoRA size, memory and one training step.

Builds the Qwen2-VL-2B-Instruct architecture from its published config with random weights,
the real Qwen2 tokenizer (built offline) and the stock processor, wraps it in the seed's LoRA
(r 16, alpha 32, dropout 0.1 on q,k,v,o,gate,up,down_proj) and prints the trainable
parameter count (the seed reports 18.5M, 0.83%). Then it times LoRA training steps through
the project's own collator and loss, for the compact and the seed targets, and reports peak
memory. On CPU it runs one timed step per target (bf16 weights, bf16 autocast; minutes each);
on a GPU it runs --gpu-steps steps per target and prints throughput.

    OMP_NUM_THREADS=2 python bench/bench_qwen2vl_2b.py [--image-size 448] [--batch-size 1]
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from pathlib import Path

import chess
import torch

from chessvlm.modeling import build_processor, count_parameters
from chessvlm.positions import answer_text
from chessvlm.prompts import PROMPTS
from chessvlm.rendering import render_board, sample_render_params
from chessvlm.tokenizer import build_qwen2_tokenizer
from chessvlm.training import Example, TrainConfig, VLMCollator, VLMTrainer, lora_config

# Qwen/Qwen2-VL-2B-Instruct config.json (hub layout, flat text config).
QWEN2_VL_2B_CONFIG = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 1536,
    "initializer_range": 0.02,
    "intermediate_size": 8960,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2_vl",
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_chans": 3,
        "hidden_size": 1536,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}


def build_model(device: torch.device):
    """The 2B architecture with random bf16 weights, wrapped in the seed's LoRA."""
    from peft import get_peft_model
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    config = Qwen2VLConfig(**QWEN2_VL_2B_CONFIG)
    started = time.monotonic()
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    print(f"built random 2B model in {time.monotonic() - started:.0f} s")
    lora = lora_config(TrainConfig(data_dir=Path("."), output_dir=Path(".")))
    model = get_peft_model(model, lora)
    model.config.use_cache = False
    return model


def examples(folder: Path, count: int, target: str, seed: int = 0) -> list[Example]:
    """Boards from random games, rendered in the seed's look, with their answers."""
    rng = random.Random(seed)
    result = []
    for index in range(count):
        board = chess.Board()
        for _ in range(rng.randint(10, 60)):
            moves = list(board.legal_moves)
            if not moves:
                break
            board.push(rng.choice(moves))
        path = folder / f"{index}.png"
        render_board(board, sample_render_params("seed", rng)).save(path)
        result.append(Example(str(index), path, PROMPTS[target], answer_text(board, target)))
    return result


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_steps(trainer, model, batch: dict, steps: int, device: torch.device) -> float:
    """Seconds per LoRA training step (forward, answer-only loss, backward, AdamW)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    batch = {key: value.to(device) for key, value in batch.items()}
    durations = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.monotonic()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = trainer.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        durations.append(time.monotonic() - started)
    # The first step pays for allocations and kernel selection.
    return min(durations[1:]) if len(durations) > 1 else durations[0]


def main() -> None:
    from transformers import TrainingArguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--gpu-steps", type=int, default=6)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(device)
    trainable, total = count_parameters(model)
    print(f"LoRA trainable parameters: {trainable / 1e6:.2f}M of {total / 1e9:.3f}B ", end="")
    print(f"({100 * trainable / total:.2f}%)")
    processor = build_processor(build_qwen2_tokenizer(), args.image_size)
    collator = VLMCollator(processor, args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingArguments(output_dir=tmp, report_to="none", use_cpu=device.type == "cpu")
        trainer = VLMTrainer(model=model, args=training)
        model.train()
        for target in ("compact", "seed"):
            batch = collator(examples(Path(tmp), args.batch_size, target))
            tokens = int(batch["attention_mask"].sum())
            learned = int((batch["labels"] != -100).sum())
            steps = args.gpu_steps if device.type == "cuda" else 1
            seconds = time_steps(trainer, model, batch, steps, device)
            print(
                f"{target}: batch {args.batch_size}, {tokens / args.batch_size:.0f} tokens a "
                f"sample ({learned / args.batch_size:.0f} learned), {seconds:.2f} s a step, "
                f"{args.batch_size / seconds:.2f} samples/s, {tokens / seconds:.0f} tokens/s, "
                f"peak memory {peak_memory_gib(device):.1f} GiB on {device.type}"
            )


if __name__ == "__main__":
    main()
