"""`chessvlm reader train|evaluate` (the fast board reader) and `chessvlm predict`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Choices repeated from the reader modules, which import torch: `chessvlm --help` must not.
ENCODERS = ("cnn", "clip")
DECODERS = ("argmax", "chess_rules")
FORMATS = ("json", "fen", "compact")


def register(subparsers) -> None:
    """Add the `reader` command group and the `predict` command."""
    reader = subparsers.add_parser(
        "reader",
        help="train and evaluate the fast square-aligned board reader",
        description=(
            "A small network that reads the 64 squares and the board's orientation from an "
            "image: trains on a CPU in minutes, reads hundreds of boards a second."
        ),
    )
    commands = reader.add_subparsers(dest="reader_command", required=True, metavar="COMMAND")
    _register_train(commands)
    _register_evaluate(commands)
    _register_build_default(commands)
    _register_predict(subparsers)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _register_train(commands) -> None:
    parser = commands.add_parser(
        "train",
        help="train a reader on a JSON dataset",
        description=(
            "Train on DIR/train.jsonl with augmentation (crop, margins, blur, colour, JPEG), "
            "check DIR/val.jsonl after each epoch and keep the best checkpoint in --out "
            "(reader.json + reader.safetensors). Rerunning with the same --out resumes."
        ),
    )
    parser.add_argument("--data_dir", required=True, help="JSON dataset folder")
    parser.add_argument("--out", required=True, help="checkpoint folder")
    parser.add_argument("--encoder", choices=ENCODERS, default="cnn", help="default: cnn")
    parser.add_argument("--epochs", type=_positive_int, default=15, help="default: 15")
    parser.add_argument(
        "--max_minutes", type=_positive_float, help="stop after this much training (over resumes)"
    )
    parser.add_argument("--batch_size", type=_positive_int, default=32, help="default: 32")
    parser.add_argument(
        "--learning_rate",
        type=_positive_float,
        help="default: 2e-3 (cnn, frozen clip), 1e-4 (clip)",
    )
    parser.add_argument("--weight_decay", type=float, default=1e-4, help="default: 1e-4")
    parser.add_argument(
        "--image_size", type=_positive_int, default=256, help="board side in px (default 256)"
    )
    parser.add_argument("--max_train_samples", type=_positive_int, help="use the first N only")
    parser.add_argument("--max_val_samples", type=_positive_int, default=1000, help="default: 1000")
    parser.add_argument("--no_augment", action="store_true", help="train on the images as they are")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument(
        "--clip_model",
        help="pretrained CLIP (hub id or local folder, e.g. openai/clip-vit-base-patch32); "
        "without it --encoder clip starts from random ViT-B/32 weights",
    )
    parser.add_argument(
        "--freeze_encoder", action="store_true", help="train only the heads (with --clip_model)"
    )
    parser.add_argument(
        "--workers", type=_positive_int, default=2, help="image-decoding threads (default 2)"
    )
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from chessvlm.reader.train import ReaderTrainConfig, train_reader

    config = ReaderTrainConfig(
        data_dir=args.data_dir,
        out=args.out,
        encoder=args.encoder,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        max_minutes=args.max_minutes,
        max_train_samples=args.max_train_samples,
        max_val_samples=args.max_val_samples,
        augment=not args.no_augment,
        seed=args.seed,
        clip_model=args.clip_model,
        freeze_encoder=args.freeze_encoder,
        workers=args.workers,
    )
    print(f"reader checkpoint: {train_reader(config)}")
    return 0


def _register_build_default(commands) -> None:
    from chessvlm.reader.default import DEFAULT_READER, DefaultRecipe

    recipe = DefaultRecipe()
    parser = commands.add_parser(
        "build-default",
        help="rebuild the default reader shipped in the package",
        description=(
            f"Render {recipe.train_samples:,} training and {recipe.val_samples} validation "
            f"boards in the {recipe.style!r} style (seed {recipe.seed}) into --work, train the "
            f"reader {recipe.epochs} epochs there, and write its checkpoint to --out. "
            "Rerunning resumes."
        ),
    )
    parser.add_argument("--work", required=True, help="folder for the data and the training")
    parser.add_argument(
        "--out",
        default=str(DEFAULT_READER),
        help="where the checkpoint goes (default: the package)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=2,
        help="rendering and decoding workers (default 2)",
    )
    parser.set_defaults(func=_run_build_default)


def _run_build_default(args: argparse.Namespace) -> int:
    from chessvlm.reader.default import build_default_reader

    print(f"default reader: {build_default_reader(args.work, args.out, workers=args.workers)}")
    return 0


def _register_evaluate(commands) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="read a split and score it with the SPEC metrics",
        description=(
            "Write OUTPUT/predictions.jsonl (resumable), OUTPUT/metrics.json and OUTPUT/run.json, "
            "so that `chessvlm report` compares the reader with the VLMs."
        ),
    )
    parser.add_argument(
        "--model", help="reader checkpoint folder (default: the reader shipped in the package)"
    )
    parser.add_argument("--data_dir", required=True, help="JSON dataset folder")
    parser.add_argument("--split", default="test", help="default: test")
    parser.add_argument("--output", required=True, help="run folder to write")
    parser.add_argument("--batch_size", type=_positive_int, default=64, help="default: 64")
    parser.add_argument("--max_samples", type=_positive_int, help="first N samples only")
    parser.add_argument(
        "--decode", choices=DECODERS, help="default: the one that did best on validation"
    )
    parser.add_argument("--name", help="run name in reports")
    parser.add_argument(
        "--orientation",
        choices=("predicted", "given"),
        default="predicted",
        help="given: read each board in the orientation its label states (default: predicted)",
    )
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from chessvlm.reader.default import default_reader
    from chessvlm.reader.evaluate import ReaderEvalConfig, evaluate_reader

    metrics = evaluate_reader(
        ReaderEvalConfig(
            model=str(args.model or default_reader()),
            data_dir=args.data_dir,
            output=args.output,
            split=args.split,
            batch_size=args.batch_size,
            max_samples=args.max_samples,
            decode=args.decode,
            name=args.name,
            orientation=args.orientation,
        )
    )
    reader = metrics["reader"]
    print(
        f"per-square {metrics['per_square_accuracy']:.5f}, exact boards "
        f"{metrics['exact_board_match']:.4f}, boards/s {metrics['boards_per_second'] or 0:.1f} "
        f"({Path(args.output) / 'metrics.json'})"
    )
    print(
        f"orientation {_figure(reader['orientation_accuracy'])} (boards with 4+ pawns and no "
        f"coordinates: {_figure(reader['orientation_accuracy_pawns_no_coordinates'])}), board "
        f"box error {_figure(reader['box_error_squares'])} squares"
    )
    return 0


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _register_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="read positions from board images (reader checkpoint or VLM)",
        description=(
            "Print one result per image: by default a JSON line with the seed's position JSON. "
            "Side to move, castling rights and en passant come from the flags; without them, "
            "castling rights are those consistent with the placement and so labelled. Images "
            "that cannot be read are reported on stderr and the others go on (exit code 1)."
        ),
    )
    parser.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument(
        "--model",
        help="reader checkpoint, VLM folder, adapter or hub id (default: the reader shipped "
        "in the package)",
    )
    parser.add_argument("--format", choices=FORMATS, default="json", help="default: json")
    parser.add_argument("--to-move", "--to_move", dest="to_move", choices=("w", "b"))
    parser.add_argument("--castling", help="FEN castling field, e.g. KQkq or -")
    parser.add_argument("--en-passant", "--en_passant", dest="en_passant", help="e.g. e3")
    parser.add_argument("--batch_size", type=_positive_int, default=32, help="default: 32")
    parser.add_argument("--decode", choices=DECODERS, help="reader decoding (default: its own)")
    parser.add_argument(
        "--orientation",
        choices=("auto", "white", "black"),
        default="auto",
        help="which side is at the bottom of the images (reader only; default: auto, read it)",
    )
    parser.add_argument("--max_new_tokens", type=_positive_int, help="VLM answer limit")
    parser.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from chessvlm.predict import (
        Metadata,
        check_flags,
        complete_position,
        format_result,
        predict_images,
        reading_fields,
    )
    from chessvlm.reader.default import default_reader
    from chessvlm.reader.images import collect_image_paths

    flags = Metadata(args.to_move, args.castling, args.en_passant)
    check_flags(flags)
    items = collect_image_paths(args.images)
    failures = 0
    for path, problem in items:
        if problem is not None:
            failures += _report(f"{path}: {problem}")
    sources = [path for path, problem in items if problem is None]
    results = predict_images(
        str(args.model or default_reader()),
        sources,
        batch_size=args.batch_size,
        decode=args.decode,
        max_new_tokens=args.max_new_tokens,
        flipped={"auto": None, "white": False, "black": True}[args.orientation],
    )
    with_name = len(items) > 1
    for source, placement, error in results:
        if placement is None:
            failures += _report(str(error))
            continue
        board, notes = complete_position(placement, flags)
        line = format_result(
            source,
            board,
            notes,
            args.format,
            with_name=with_name,
            extra=reading_fields(placement),
        )
        print(line, flush=True)
    return 1 if failures else 0


def _report(message: str) -> int:
    print(f"chessvlm: error: {message}", file=sys.stderr, flush=True)
    return 1
