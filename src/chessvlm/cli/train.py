"""`chessvlm init-model`, `chessvlm train` and `chessvlm merge`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    """Add this module's subcommands."""
    _register_init_model(subparsers)


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
    parser.add_argument("--preset", choices=("tiny", "small"), default="small")
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
