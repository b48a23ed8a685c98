"""`chessvlm reader train|evaluate` (the fast board reader) and `chessvlm predict`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chessvlm.cli.arguments import (
    EPOCHS,
    MODEL,
    OUT,
    ModuleChoices,
    config_defaults,
    config_options,
    positive_float,
    positive_int,
)
from chessvlm.io import require_folder

ENCODERS = ModuleChoices("chessvlm.reader.model", "ENCODERS")
DECODERS = ModuleChoices("chessvlm.reader.read", "DECODERS")
ORIENTATIONS = ModuleChoices("chessvlm.reader.evaluate", "ORIENTATIONS")
FORMATS = ModuleChoices("chessvlm.predict", "FORMATS")
TRAIN = config_defaults("chessvlm.reader.train", "ReaderTrainConfig")
EVALUATE = config_defaults("chessvlm.reader.evaluate", "ReaderEvalConfig")


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
    parser.add_argument(OUT, required=True, help="checkpoint folder")
    parser.add_argument(
        "--encoder",
        choices=ENCODERS,
        metavar="{cnn,clip}",
        default=TRAIN("encoder"),
        help="default: %(default)s",
    )
    parser.add_argument(
        EPOCHS, type=positive_int, default=TRAIN("epochs"), help="default: %(default)s"
    )
    parser.add_argument(
        "--max_minutes", type=positive_float, help="stop after this much training (over resumes)"
    )
    parser.add_argument(
        "--batch_size", type=positive_int, default=TRAIN("batch_size"), help="default: %(default)s"
    )
    parser.add_argument(
        "--learning_rate",
        type=positive_float,
        help="default: 2e-3 (cnn, frozen clip), 1e-4 (clip)",
    )
    parser.add_argument(
        "--weight_decay", type=float, default=TRAIN("weight_decay"), help="default: %(default)s"
    )
    parser.add_argument(
        "--image_size",
        type=positive_int,
        default=TRAIN("image_size"),
        help="board side in px (default: %(default)s)",
    )
    parser.add_argument("--max_train_samples", type=positive_int, help="use the first N only")
    parser.add_argument(
        "--max_val_samples",
        type=positive_int,
        default=TRAIN("max_val_samples"),
        help="default: %(default)s",
    )
    parser.add_argument(
        "--no_augment",
        dest="augment",
        action="store_false",
        default=TRAIN("augment"),
        help="train on the images as they are",
    )
    parser.add_argument("--seed", type=int, default=TRAIN("seed"), help="default: %(default)s")
    parser.add_argument(
        "--clip_model",
        help="pretrained CLIP (hub id or local folder, e.g. openai/clip-vit-base-patch32); "
        "without it --encoder clip starts from random ViT-B/32 weights",
    )
    parser.add_argument(
        "--freeze_encoder", action="store_true", help="train only the heads (with --clip_model)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=TRAIN("workers"),
        help="image-decoding threads (default: %(default)s)",
    )
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    # Before torch loads: a wrong folder fails in a second.
    require_folder("data_dir", args.data_dir)
    from chessvlm.reader.train import ReaderTrainConfig, train_reader

    config = ReaderTrainConfig(**config_options(args, ReaderTrainConfig))
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
        OUT,
        default=str(DEFAULT_READER),
        help="where the checkpoint goes (default: the package)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=2,
        help="rendering and decoding workers (default: %(default)s)",
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
            "Write OUT/predictions.jsonl (resumable), OUT/metrics.json and OUT/run.json, "
            "so that `chessvlm report` compares the reader with the VLMs."
        ),
    )
    parser.add_argument(
        MODEL, help="reader checkpoint folder (default: the reader shipped in the package)"
    )
    parser.add_argument("--data_dir", required=True, help="JSON dataset folder")
    parser.add_argument("--split", default=EVALUATE("split"), help="default: %(default)s")
    parser.add_argument(
        OUT, "--output", dest="output", metavar="DIR", required=True, help="run folder to write"
    )
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=EVALUATE("batch_size"),
        help="default: %(default)s",
    )
    parser.add_argument("--max_samples", type=positive_int, help="first N samples only")
    parser.add_argument(
        "--decode",
        choices=DECODERS,
        metavar="{argmax,chess_rules}",
        help="default: the one that did best on validation",
    )
    parser.add_argument("--name", help="run name in reports")
    parser.add_argument(
        "--orientation",
        choices=ORIENTATIONS,
        metavar="{predicted,given}",
        default=EVALUATE("orientation"),
        help="given: read each board in the orientation its label states (default: %(default)s)",
    )
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from chessvlm.reader.default import default_reader

    # Before torch loads: a wrong folder fails in a second.
    require_folder("data_dir", args.data_dir)
    from chessvlm.reader.evaluate import ReaderEvalConfig, evaluate_reader

    options = config_options(args, ReaderEvalConfig)
    metrics = evaluate_reader(
        ReaderEvalConfig(**{**options, "model": str(args.model or default_reader())})
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
        MODEL,
        help="reader checkpoint, VLM folder, adapter or hub id (default: the reader shipped "
        "in the package)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        metavar="{json,fen,compact}",
        default="json",
        help="default: %(default)s",
    )
    parser.add_argument("--to_move", "--to-move", dest="to_move", choices=("w", "b"))
    parser.add_argument("--castling", help="FEN castling field, e.g. KQkq or -")
    parser.add_argument("--en_passant", "--en-passant", dest="en_passant", help="e.g. e3")
    parser.add_argument("--batch_size", type=positive_int, default=32, help="default: %(default)s")
    parser.add_argument(
        "--decode",
        choices=DECODERS,
        metavar="{argmax,chess_rules}",
        help="reader decoding (default: its own)",
    )
    parser.add_argument(
        "--orientation",
        choices=("auto", "white", "black"),
        default="auto",
        help="which side is at the bottom of the images (reader only; default: auto, read it)",
    )
    parser.add_argument("--max_new_tokens", type=positive_int, help="VLM answer limit")
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
    if not sources:
        return 1  # nothing readable: no model to load
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
