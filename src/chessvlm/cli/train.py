"""`chessvlm init-model`, `chessvlm train` and `chessvlm merge`."""

from __future__ import annotations

import argparse
from pathlib import Path

from chessvlm.cli.arguments import (
    EPOCHS,
    MODEL,
    OUT,
    config_defaults,
    config_options,
    non_negative_int,
    positive_float,
    positive_int,
)
from chessvlm.errors import ChessVLMError, ConfigError
from chessvlm.families import DEFAULT_FAMILY, FAMILIES
from chessvlm.modeling import PRESETS
from chessvlm.positions import TARGETS


def register(subparsers) -> None:
    """Add this module's subcommands."""
    _register_init_model(subparsers)
    _register_train(subparsers)
    _register_merge(subparsers)


def _register_init_model(subparsers) -> None:
    parser = subparsers.add_parser(
        "init-model",
        help="build a small VLM with random weights (to train from scratch on CPU)",
        description=(
            "Build a model of one family's architecture (Qwen2-VL by default, Qwen2.5-VL, "
            "Qwen3-VL or SmolVLM) from a preset config with random weights, a reduced Qwen2 "
            "tokenizer and the family's stock processor and chat template, saved in the hub "
            "layout: it loads and trains through exactly the same code as the family's "
            "released models. Presets have the same widths and depths in every family."
        ),
    )
    parser.add_argument(
        "--preset", choices=tuple(PRESETS), default="small", help="default: %(default)s"
    )
    parser.add_argument(
        "--family", choices=tuple(FAMILIES), default=DEFAULT_FAMILY, help="default: %(default)s"
    )
    parser.add_argument(OUT, type=Path, required=True, help="folder to create")
    parser.add_argument(
        "--seed", type=int, default=0, help="weight initialisation seed (default: %(default)s)"
    )
    parser.set_defaults(func=_run_init_model)


def _run_init_model(args: argparse.Namespace) -> int:
    from chessvlm.families import image_tokens
    from chessvlm.modeling import (
        count_parameters,
        init_model,
        load_model_and_processor,
        pinned_image_size,
    )

    out = init_model(args.preset, args.out, seed=args.seed, family=args.family)
    model, processor = load_model_and_processor(out, device="cpu")
    _, total = count_parameters(model)
    size = pinned_image_size(processor)
    print(
        f"{args.preset} {args.family} model in {out}: {total / 1e6:.2f}M parameters, "
        f"vocabulary {len(processor.tokenizer)}, {size} px boards "
        f"({image_tokens(processor, size)} visual tokens)"
    )
    return 0


TRAIN = config_defaults("chessvlm.training", "TrainConfig")
# Knobs whose default depends on the kind of run (`training.resolve_defaults`).
BY_RUN = "default: by the kind of run, see above"


def _register_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
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
    # Required, but checked after the data folder: a wrong folder is the first thing to hear.
    paths.add_argument(
        OUT,
        "--output_dir",
        dest="output_dir",
        metavar="DIR",
        type=Path,
        help="run folder (required)",
    )
    paths.add_argument(
        MODEL,
        "--model_name",
        dest="model_name",
        metavar="MODEL",
        default=TRAIN("model_name"),
        help="hub id or local folder (hub layout, or from init-model) of a Qwen2-VL, "
        "Qwen2.5-VL, Qwen3-VL or SmolVLM model (default: %(default)s)",
    )
    paths.add_argument(
        "--image_base_dir", type=Path, help="folder image paths are relative to (--data_dir)"
    )
    paths.add_argument(
        "--max_samples", type=positive_int, help="use only the first N training samples"
    )
    paths.add_argument(
        "--max_eval_samples",
        type=positive_int,
        default=TRAIN("max_eval_samples"),
        help="val samples for eval loss (default: %(default)s)",
    )
    paths.add_argument(
        "--target",
        choices=TARGETS,
        help="answer format to teach; rebuilt from each record's FEN (default: the records')",
    )
    paths.add_argument(
        "--image_size",
        type=positive_int,
        help="board size in px, a multiple of the visual token (Qwen2-VL, Qwen2.5-VL: 28; "
        "Qwen3-VL: 32; default: the model's; 448 for Qwen2-VL-2B)",
    )
    paths.add_argument(
        "--max_length",
        type=positive_int,
        default=TRAIN("max_length"),
        help="longest sample in tokens (default: %(default)s)",
    )
    paths.add_argument(
        "--skip_bad_samples",
        action="store_true",
        help="skip unreadable or too long samples, listed in skipped_samples.jsonl",
    )

    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--use_lora", action="store_true", help="train a LoRA adapter (the default)")
    lora.add_argument("--full", action="store_true", help="train all weights, no LoRA")
    for name, text in (("lora_r", "rank"), ("lora_alpha", "scale")):
        lora.add_argument(
            f"--{name}",
            type=positive_int,
            default=TRAIN(name),
            help=f"{text} (default: %(default)s)",
        )
    lora.add_argument(
        "--lora_dropout", type=float, default=TRAIN("lora_dropout"), help="default: %(default)s"
    )
    lora.add_argument(
        "--lora_vision", action="store_true", help="also adapt the vision tower's layers"
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch_size", type=positive_int, help=f"per device ({BY_RUN})")
    optim.add_argument("--gradient_accumulation_steps", type=positive_int, help=BY_RUN)
    optim.add_argument("--learning_rate", type=positive_float, help=BY_RUN)
    optim.add_argument(
        "--warmup_steps", type=float, help=f"steps, or a fraction (< 1) of all ({BY_RUN})"
    )
    optim.add_argument("--weight_decay", type=float, help=BY_RUN)
    optim.add_argument(
        "--lr_scheduler",
        default=TRAIN("lr_scheduler"),
        help="transformers scheduler name (default: %(default)s)",
    )
    optim.add_argument(
        EPOCHS,
        "--num_epochs",
        dest="num_epochs",
        metavar="N",
        type=positive_float,
        default=TRAIN("num_epochs"),
        help="passes over the training data (default: %(default)s)",
    )
    optim.add_argument(
        "--max_steps", type=positive_int, help="stop after this many optimizer steps"
    )
    optim.add_argument(
        "--max_minutes",
        type=positive_float,
        help="stop after this many minutes of training, saving a checkpoint",
    )
    optim.add_argument(
        "--lr_decay_fraction",
        type=positive_float,
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
    optim.add_argument(
        "--augment",
        action="store_true",
        help="redraw and recolour each training board as the board reader's training does "
        "(pieces warped and restroked, colours, blur, noise, JPEG; the crop is kept): in "
        "30-minute runs of the small preset, more squares of unseen designs read right and "
        "fewer in-distribution boards (docs/training.md)",
    )
    optim.add_argument(
        "--seed",
        type=int,
        default=TRAIN("seed"),
        help="data order and initialisation seed (default: %(default)s)",
    )

    run = parser.add_argument_group("checkpoints and logs")
    for name, text in (
        ("save_steps", "checkpoint every N steps"),
        ("eval_steps", "val loss every N steps"),
        ("save_total_limit", "checkpoints kept"),
        ("logging_steps", "log the loss every N steps"),
    ):
        run.add_argument(
            f"--{name}",
            type=positive_int,
            default=TRAIN(name),
            help=f"{text} (default: %(default)s)",
        )
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    run.add_argument(
        "--dataloader_workers",
        type=non_negative_int,
        help="image loading processes (default: 4 on GPU, 0 on CPU)",
    )
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from chessvlm.datasets import require_training_data

    if args.full and args.use_lora:
        raise ChessVLMError("--full and --use_lora contradict each other; pick one")
    # Before torch and transformers load: a wrong folder fails in a second.
    require_training_data(args.data_dir, args.image_base_dir)
    if args.output_dir is None:
        raise ConfigError("output_dir", "is required: the run folder to write")
    from chessvlm.modeling import read_run_config
    from chessvlm.training import TrainConfig, train

    options = {**config_options(args, TrainConfig), "use_lora": not args.full}
    out = train(TrainConfig(**options))
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
    parser.add_argument(OUT, type=Path, required=True, help="folder to create")
    parser.set_defaults(func=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    from chessvlm.training import merge_adapter

    out = merge_adapter(args.adapter, args.out)
    print(f"merged model in {out}")
    return 0
