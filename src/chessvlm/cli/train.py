"""`chessvlm init-model`, `chessvlm train` and `chessvlm merge`."""

from __future__ import annotations

import argparse
from pathlib import Path

from chessvlm.errors import ChessVLMError
from chessvlm.modeling import DEFAULT_BASE_MODEL, PRESETS


def register(subparsers) -> None:
    """Add this module's subcommands."""
    _register_init_model(subparsers)
    _register_train(subparsers)
    _register_merge(subparsers)


def _register_init_model(subparsers) -> None:
    parser = subparsers.add_parser(
        "init-model",
        help="build a small Qwen2-VL with random weights (to train from scratch on CPU)",
        description=(
            "Build a Qwen2-VL-architecture model from a preset config with random weights, a "
            "reduced Qwen2 tokenizer and the stock processor, saved in the hub layout: it "
            "loads and trains through exactly the same code as Qwen/Qwen2-VL-2B-Instruct."
        ),
    )
    parser.add_argument("--preset", choices=tuple(PRESETS), default="small")
    parser.add_argument("--out", type=Path, required=True, help="folder to create")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.set_defaults(func=_run_init_model)


def _run_init_model(args: argparse.Namespace) -> int:
    from chessvlm.modeling import count_parameters, init_model, load_model_and_processor

    out = init_model(args.preset, args.out, seed=args.seed)
    model, processor = load_model_and_processor(out, device="cpu")
    _, total = count_parameters(model)
    print(
        f"{args.preset} model in {out}: {total / 1e6:.2f}M parameters, "
        f"vocabulary {len(processor.tokenizer)}"
    )
    return 0


def _register_train(subparsers) -> None:
    # Unset options stay out of the namespace, so TrainConfig's defaults are the only ones.
    parser = subparsers.add_parser(
        "train",
        argument_default=argparse.SUPPRESS,
        help="fine-tune Qwen2-VL on a VLM dataset (seed step 2)",
        description=(
            "Fine-tune a Qwen2-VL model on {train,val}.json of a VLM dataset, with LoRA (the "
            "seed's defaults) or all weights (--full). Loss covers only the answer. Run it "
            "under `accelerate launch` or `torchrun` to use several GPUs. Unset optimisation "
            "knobs depend on the run: LoRA uses the seed's (batch 4 x 4, lr 2e-4); --full on "
            "a model from `init-model` uses batch 32, lr 2e-3, warmup 100, weight decay 0.05."
        ),
    )
    paths = parser.add_argument_group("data and model")
    paths.add_argument("--data_dir", type=Path, required=True, help="VLM dataset folder")
    paths.add_argument("--output_dir", type=Path, required=True, help="run folder")
    paths.add_argument(
        "--model_name",
        help=f"hub id or local folder (hub layout, or from init-model); {DEFAULT_BASE_MODEL}",
    )
    paths.add_argument(
        "--image_base_dir", type=Path, help="folder image paths are relative to (--data_dir)"
    )
    paths.add_argument("--max_samples", type=int, help="use only the first N training samples")
    paths.add_argument("--max_eval_samples", type=int, help="val samples for eval loss (256)")
    paths.add_argument(
        "--target",
        choices=("compact", "seed"),
        help="answer format to teach; rebuilt from each record's FEN (default: the records')",
    )
    paths.add_argument(
        "--image_size",
        type=int,
        help="board size in px, a multiple of 28 (default: the model's; 448 for Qwen2-VL-2B)",
    )
    paths.add_argument("--max_length", type=int, help="longest sample in tokens (2048)")
    paths.add_argument(
        "--skip_bad_samples",
        action="store_true",
        help="skip unreadable or too long samples, listed in skipped_samples.jsonl",
    )

    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--use_lora", action="store_true", help="train a LoRA adapter (the default)")
    lora.add_argument("--full", action="store_true", help="train all weights, no LoRA")
    lora.add_argument("--lora_r", type=int, help="rank (16)")
    lora.add_argument("--lora_alpha", type=int, help="scale (32)")
    lora.add_argument("--lora_dropout", type=float, help="(0.1)")
    lora.add_argument(
        "--lora_vision", action="store_true", help="also adapt the vision tower's layers"
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch_size", type=int, help="per device")
    optim.add_argument("--gradient_accumulation_steps", type=int)
    optim.add_argument("--learning_rate", type=float)
    optim.add_argument("--warmup_steps", type=float, help="steps, or a fraction (< 1) of all")
    optim.add_argument("--weight_decay", type=float)
    optim.add_argument("--lr_scheduler", help="transformers scheduler name (linear)")
    optim.add_argument("--num_epochs", type=float, help="(3)")
    optim.add_argument("--max_steps", type=int, help="stop after this many optimizer steps")
    optim.add_argument(
        "--max_minutes",
        type=float,
        help="stop after this many minutes of training, saving a checkpoint",
    )
    optim.add_argument(
        "--lr_decay_fraction",
        type=float,
        help="with --max_minutes: after warmup keep the learning rate flat, then decay it "
        "linearly to 0 over this share of the time budget (e.g. 0.2)",
    )
    optim.add_argument("--gradient_checkpointing", action="store_true")
    optim.add_argument(
        "--bf16_cpu",
        action="store_true",
        help="on CPU, train with bf16 autocast instead of plain fp32",
    )
    optim.add_argument(
        "--square_loss",
        action="store_true",
        help="also teach each visual token the symbol of the square it shows (speeds up "
        "training from scratch; needs the records' fen and flipped, and 224 px multiples)",
    )
    optim.add_argument(
        "--routing_loss",
        action="store_true",
        help="also teach one attention head which visual tokens show each answer square "
        "(speeds up training from scratch; compact target, 224 px multiples)",
    )
    optim.add_argument("--seed", type=int, help="data order and initialisation seed (0)")

    run = parser.add_argument_group("checkpoints and logs")
    run.add_argument("--save_steps", type=int, help="checkpoint every N steps (500)")
    run.add_argument("--eval_steps", type=int, help="val loss every N steps (500)")
    run.add_argument("--save_total_limit", type=int, help="checkpoints kept (3)")
    run.add_argument("--logging_steps", type=int, help="log loss every N steps (10)")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    run.add_argument(
        "--dataloader_workers", type=int, help="image loading processes (GPU 4, CPU 0)"
    )
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from chessvlm.modeling import read_run_config
    from chessvlm.training import TrainConfig, train

    options = vars(args)
    if options.pop("full", False):
        if options.pop("use_lora", False):
            raise ChessVLMError("--full and --use_lora contradict each other; pick one")
        options["use_lora"] = False
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    out = train(TrainConfig(**{k: v for k, v in options.items() if k in known}))
    run = read_run_config(out)
    kind = "LoRA adapter" if run.get("use_lora") else "model"
    print(f"{kind} after {run.get('step')} steps in {out} (metrics: {out}/metrics.jsonl)")
    return 0


def _register_merge(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge a LoRA adapter into its base model (hub layout)",
        description=(
            "Merge a LoRA adapter written by `chessvlm train` into its base weights and save "
            "model + processor + run config in the hub layout."
        ),
    )
    parser.add_argument("--adapter", type=Path, required=True, help="adapter folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to create")
    parser.set_defaults(func=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    from chessvlm.training import merge_adapter

    out = merge_adapter(args.adapter, args.out)
    print(f"merged model in {out}")
    return 0
