"""`chessvlm reader train|evaluate|combine|build-default` (the fast board reader) and
`chessvlm predict`."""

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
    positive_int_list,
    zoom_list,
)
from chessvlm.io import require_folder

ENCODERS = ModuleChoices("chessvlm.reader.model", "ENCODERS")
DECODERS = ModuleChoices("chessvlm.reader.read", "DECODERS")
PRECISIONS = ModuleChoices("chessvlm.reader.read", "PRECISIONS")
STORAGES = ModuleChoices("chessvlm.reader.storage", "STORAGES")
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
    _register_combine(commands)
    _register_build_default(commands)
    _register_predict(subparsers)


def _add_precision(parser: argparse.ArgumentParser, default: str, does: str) -> None:
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        metavar="{auto,float32,bfloat16}",
        default=default,
        help=f"what the network {does}; auto: bfloat16 where the CPU computes it natively, "
        "else float32 (default: %(default)s)",
    )


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
    parser.add_argument(
        "--widths",
        type=positive_int_list,
        default=TRAIN("widths"),
        help="CNN channels, comma-separated: the stem's, then one per stage, each stage "
        "halving the cells down to one a square, e.g. 16,32,64,128 (4 x 4 px patches at "
        "256 px) or 32,64,128 (8 x 8 px patches) (default: %(default)s)",
    )
    parser.add_argument(
        "--edge_channels",
        type=positive_int,
        default=TRAIN("edge_channels"),
        help="channels of the coordinates view over the edge squares (default: %(default)s)",
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
        "--zoom_views",
        type=zoom_list,
        default=TRAIN("zoom_views"),
        help="besides the board as cut, the trained reader reads it in views this many times "
        "the board's width, centred, and takes the mean: comma-separated, or none to read "
        "boards as cut, twice as fast (default: 0.97,1.03)",
    )
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
    _add_precision(
        parser, TRAIN("precision"), "trains in (bfloat16 autocast; weights stay float32)"
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
    from chessvlm.reader.default import (
        DEFAULT_MARGIN_READER,
        DEFAULT_POSITION_PRIOR,
        DEFAULT_READER,
        DEFAULT_SQUARE_CONTEXT,
        DEFAULT_SQUARE_MATCHER,
        DefaultRecipe,
    )

    recipe = DefaultRecipe()
    parser = commands.add_parser(
        "build-default",
        help="rebuild the default reader shipped in the package",
        description=(
            f"Render {recipe.train_samples:,} training and {recipe.val_samples} validation "
            f"boards in the {recipe.style!r} style (seed {recipe.seed}) into --work, train "
            f"{recipe.members} readers {recipe.epochs} epochs each there (seeds {recipe.seed} "
            f"to {recipe.seed + recipe.members - 1}), and write their ensemble's checkpoint to "
            f"--out (the first {recipe.always_members} read every board, the others only "
            f"boards with a square under {recipe.unsure_below} sure; {recipe.storage} "
            "weights); then train the position prior that weighs every reading's orientation and "
            "write it to --prior_out, and the margin reader that reads coordinates printed "
            "outside the board, on the same boards, and write it to --margin_out, and the "
            "square context that weighs each square by the rest of the board, and write it to "
            "--context_out, and the square matcher that weighs it by the squares that look "
            "alike, on the same boards less those of the sets drawn from 3D models, and write "
            "it to --matcher_out. Rerunning resumes."
        ),
    )
    parser.add_argument("--work", required=True, help="folder for the data and the training")
    shipped = (
        (OUT, DEFAULT_READER, "checkpoint"),
        ("--prior_out", DEFAULT_POSITION_PRIOR, "position prior"),
        ("--margin_out", DEFAULT_MARGIN_READER, "margin reader"),
        ("--context_out", DEFAULT_SQUARE_CONTEXT, "square context"),
        ("--matcher_out", DEFAULT_SQUARE_MATCHER, "square matcher"),
    )
    for flag, default, what in shipped:
        parser.add_argument(
            flag, default=str(default), help=f"where the {what} goes (default: the package)"
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

    out = build_default_reader(
        args.work,
        args.out,
        workers=args.workers,
        prior_out=args.prior_out,
        margin_out=args.margin_out,
        context_out=args.context_out,
        matcher_out=args.matcher_out,
    )
    print(
        f"default reader: {out}; position prior: {args.prior_out}; "
        f"margin reader: {args.margin_out}; square context: {args.context_out}; "
        f"square matcher: {args.matcher_out}"
    )
    return 0


def _register_combine(commands) -> None:
    parser = commands.add_parser(
        "combine",
        help="join reader checkpoints into one ensemble checkpoint",
        description=(
            "Write one checkpoint that reads with every --model (readers of one spec, "
            "trained from other seeds): the mean of their square log-probabilities, "
            "orientation and boxes. With --data_dir its validation split scores the ensemble "
            "and chooses its decoding."
        ),
    )
    parser.add_argument(
        MODEL,
        dest="models",
        action="append",
        required=True,
        help="a reader checkpoint folder (give two or more)",
    )
    parser.add_argument(OUT, required=True, help="ensemble checkpoint folder to write")
    parser.add_argument("--data_dir", help="JSON dataset folder whose val split scores it")
    parser.add_argument(
        "--storage",
        choices=STORAGES,
        metavar="{float32,float16,int8}",
        help="how the weights are kept; int8: convolution and linear weights as 8-bit "
        "integers with a scale per output channel, half the size of float16 with the same "
        "readings (default: float16)",
    )
    parser.add_argument(
        "--always_members",
        type=int,
        help="only the first N members read every board; the others only the boards on "
        "which those are unsure (default: every member reads every board)",
    )
    parser.add_argument(
        "--unsure_below",
        type=float,
        default=1.0,
        help="with --always_members: a board is unsure when some square's top probability "
        "is under this (default: %(default)s)",
    )
    parser.add_argument(
        "--zoom_views",
        type=zoom_list,
        default=(),
        help="views each member reads every board in besides the cut, as widths relative to "
        "the board's, comma-separated, or none; the members' own settings are not used "
        "(default: none)",
    )
    parser.set_defaults(func=_run_combine)


def _run_combine(args: argparse.Namespace) -> int:
    for model in args.models:
        require_folder(MODEL.lstrip("-"), model)
    if args.data_dir:
        require_folder("data_dir", args.data_dir)
    from chessvlm.reader.ensemble import combine_readers

    out = combine_readers(
        args.models,
        args.out,
        data_dir=args.data_dir,
        storage=args.storage,
        always_members=args.always_members,
        unsure_below=args.unsure_below,
        zoom_views=args.zoom_views,
    )
    print(f"ensemble checkpoint: {out}")
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
    parser.add_argument(
        "--detect",
        action="store_true",
        help="cut each board out with the board finder (as `chessvlm predict` does) instead "
        "of the reader's locator; adds boards found, false boards and corner error",
    )
    _add_precision(parser, EVALUATE("precision"), "computes in")
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
        f"in {reader['precision']} ({Path(args.output) / 'metrics.json'})"
    )
    by_place = ", ".join(
        f"{place} {_figure(accuracy)}"
        for place, accuracy in reader["orientation_accuracy_by_coordinates"].items()
    )
    print(
        f"orientation {_figure(reader['orientation_accuracy'])} (boards with 4+ pawns and no "
        f"coordinates: {_figure(reader['orientation_accuracy_pawns_no_coordinates'])}; by "
        f"where coordinates are printed: {by_place}), board box error "
        f"{_figure(reader['box_error_squares'])} squares"
    )
    if args.detect:
        print(
            f"board finder: boards found {_figure(reader['board_recall'])}, false boards "
            f"{reader['false_boards']}"
        )
    return 0


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _register_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="find and read the chess boards in images, screenshots, pages and PDFs",
        description=(
            "Find every chess board in each image or PDF page (a screenshot, a book page, a "
            "cropped board) and print one result per board, in reading order: by default a "
            "JSON line with the seed's position JSON, the board's box in the image, its page, "
            "its confidence, the squares worth checking and whether the position is legal. "
            "Side to move, castling rights and en passant come from the flags; without them, "
            "castling rights are those consistent with the placement and so labelled. A "
            "picture with no board, and files that cannot be read, are reported on stderr "
            "and the others go on (exit code 1)."
        ),
    )
    parser.add_argument("images", nargs="+", help="image or PDF files, folders or glob patterns")
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
    parser.add_argument(
        "--no_detect",
        "--no-detect",
        dest="detect",
        action="store_false",
        help="read each image as one board already cropped to its squares (no finder)",
    )
    parser.add_argument(
        "--dpi", type=positive_int, default=150, help="PDF pages are rendered at this (150)"
    )
    parser.add_argument(
        "--uncertain_below",
        "--uncertain-below",
        dest="uncertain_below",
        type=_probability,
        default=0.9,
        help="list the squares read with a probability under this (reader; default 0.9)",
    )
    parser.add_argument(
        OUT,
        "--output",
        dest="out",
        help="also write one JSON line per page to this file as pages are done; a rerun with "
        "the same --output skips the pages already in it (resumes)",
    )
    parser.set_defaults(func=_run_predict)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text}")
    return value


def _run_predict(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from chessvlm.io import JsonlAppender
    from chessvlm.pages import collect_page_paths
    from chessvlm.predict import Metadata, check_flags, predict_pages
    from chessvlm.reader.default import default_reader

    flags = Metadata(args.to_move, args.castling, args.en_passant)
    check_flags(flags)
    items = collect_page_paths(args.images)
    failures = 0
    for path, problem in items:
        if problem is not None:
            failures += _report(f"{path}: {problem}")
    sources = [path for path, problem in items if problem is None]
    if not sources:
        return 1  # nothing readable: no model to load
    log = JsonlAppender(args.out) if args.out else nullcontext()
    with log:
        results = predict_pages(
            str(args.model or default_reader()),
            sources,
            detect=args.detect,
            dpi=args.dpi,
            done=frozenset(log.done_ids) if args.out else frozenset(),
            batch_size=args.batch_size,
            decode=args.decode,
            max_new_tokens=args.max_new_tokens,
            flipped={"auto": None, "white": False, "black": True}[args.orientation],
        )
        for result in results:
            failures += _print_page(result, args, flags, several=len(items) > 1, log=log)
    return 1 if failures else 0


def _print_page(result, args: argparse.Namespace, flags, *, several: bool, log) -> int:
    """Print a page's boards (stdout) and problems (stderr), log the page to --out; the
    number of problems."""
    import json

    from chessvlm.predict import (
        NoBoardFound,
        complete_position,
        format_result,
        reading_fields,
        result_record,
    )

    page = result.page
    failures = 0
    records = []
    with_name = several or page.number is not None or len(result.boards) > 1
    for index, (placement, error) in enumerate(result.boards, start=1):
        if placement is None:
            failures += _report(str(error))
            continue
        board, notes = complete_position(placement, flags)
        where = {"page": page.number} if page.number is not None else {}
        extra = {**where, "board": index, **reading_fields(placement, board, args.uncertain_below)}
        records.append(result_record(page.source, board, notes, extra))
        if args.format == "json":
            line = json.dumps(records[-1])
        else:
            name = page.id if len(result.boards) == 1 else f"{page.id}#board={index}"
            line = format_result(name, board, notes, args.format, with_name=with_name)
        print(line, flush=True)
    if result.error is not None:
        failures += _report(str(result.error))
    # A page that could not be opened is tried again by a rerun; one read (boards or none) is done.
    if args.out and (result.error is None or isinstance(result.error, NoBoardFound)):
        record = {"id": page.id, "image": page.source, "page": page.number, "boards": records}
        if result.error is not None:
            record["error"] = str(result.error)
        log.write(record)
    return failures


def _report(message: str) -> int:
    print(f"chessvlm: error: {message}", file=sys.stderr, flush=True)
    return 1
