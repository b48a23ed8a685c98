"""`chessvlm evaluate` (the seed's step 3): answers for a test set, then the SPEC metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

from chessvlm.cli.arguments import MODEL, OUT, config_defaults, config_options, positive_int

EVALUATE = config_defaults("chessvlm.evaluation", "EvaluateConfig")

_DESCRIPTION = """\
Ask a model about every board of a VLM test set (greedy, batched), log each answer to a
predictions JSONL as it comes (a rerun resumes), then write the metrics JSON to --out.
The baseline is the same command with the base model and no adapter, e.g.
`--model Qwen/Qwen2-VL-2B-Instruct`; it is asked the test data's prompt. Under
`torchrun --nproc_per_node N` or `accelerate launch` the test set is split across the
processes and process 0 merges the predictions and writes the metrics.

A model trained on boards cropped to their labelled box (its run config's "board_crop") is
shown each test image cut to the board that a board reader's locator finds: the shipped
default reader unless --crop_with names another ("finder" for the board finder, "none" for
whole images). The labels' own boxes are never used at test time."""


def register(subparsers) -> None:
    """Add the `evaluate` command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="generate answers for a test set and compute the metrics (seed step 3)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        MODEL,
        "--model_path",
        dest="model_path",
        metavar="MODEL",
        required=True,
        help="model folder, adapter folder written by `chessvlm train`, or hub id",
    )
    parser.add_argument("--test_data", type=Path, required=True, help="VLM test set (test.json)")
    parser.add_argument(
        "--image_base_dir", type=Path, required=True, help="folder the image paths are under"
    )
    parser.add_argument(
        OUT,
        "--output",
        dest="output",
        metavar="FILE",
        type=Path,
        required=True,
        help="metrics JSON to write",
    )
    parser.add_argument(
        "--base_model",
        help="base model of the adapter in --model (default: the one it records)",
    )
    parser.add_argument(
        "--predictions",
        type=Path,
        help="predictions JSONL (default: <output stem>.predictions.jsonl beside --out)",
    )
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=EVALUATE("batch_size"),
        help="boards a batch (default: %(default)s)",
    )
    parser.add_argument(
        "--max_new_tokens",
        type=positive_int,
        help="answer length limit in tokens (default: 100 for compact, 164 for constrained "
        "compact, 1600 for seed)",
    )
    parser.add_argument(
        "--max_samples", type=positive_int, help="evaluate the first N test samples only"
    )
    parser.add_argument(
        "--crop_with",
        metavar="READER_DIR",
        help="crop each image to the board this reader checkpoint locates before asking the "
        "model; 'finder' for the board the board finder finds (the metrics then add its "
        "figures); 'none' for whole images (default: the shipped reader for a model trained "
        "on cropped boards, else whole images)",
    )
    parser.add_argument(
        "--constrained",
        action="store_true",
        help="decode under the target's grammar so every answer is valid JSON (xgrammar)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation and print the headline figures."""
    from chessvlm.datasets import require_test_data

    # Before torch and transformers load: a wrong path fails in a second.
    require_test_data(args.test_data, args.image_base_dir)
    from chessvlm.evaluation import EvaluateConfig, evaluate, predictions_path, process_state

    config = EvaluateConfig(**config_options(args, EvaluateConfig))
    metrics = evaluate(config)
    if process_state().is_main_process:
        from chessvlm.metrics import MAIN_FIGURES

        for key in (*MAIN_FIGURES, "boards_per_second"):
            print(f"{key}: {_format(metrics.get(key))}")
        print(f"board crop: {metrics.get('sources', {}).get('board_crop')}")
        print(f"predictions: {predictions_path(config)}")
        print(f"metrics: {args.output}")
    return 0


def _format(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
