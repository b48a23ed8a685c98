"""`chessvlm data synth|import|vlm|scenes` and `chessvlm create-vlm-dataset` (the seed's step 1)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from chessvlm.cli.arguments import OUT, non_negative_int
from chessvlm.positions import TARGETS
from chessvlm.sources import IMPORT_FORMATS

SPLIT_DEFAULTS = {"train": 1000, "val": 100, "test": 200}


def register(subparsers) -> None:
    """Add the `data` command group and the seed-named `create-vlm-dataset` command."""
    data = subparsers.add_parser(
        "data",
        help="make datasets: render synthetic boards, import the seed's data, build VLM data",
        description="Make the JSON dataset (images + labels) and the VLM dataset from it.",
    )
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    _register_synth(commands)
    _register_import(commands)
    _register_art(commands)
    _register_scenes(commands)
    _add_vlm_arguments(
        commands.add_parser(
            "vlm", help="same as `chessvlm create-vlm-dataset`", description=_VLM_DESCRIPTION
        )
    )
    _add_vlm_arguments(
        subparsers.add_parser(
            "create-vlm-dataset",
            help="JSON dataset -> VLM conversation dataset (seed step 1)",
            description=_VLM_DESCRIPTION,
        )
    )


def _register_synth(commands) -> None:
    parser = commands.add_parser(
        "synth",
        help="render positions from synthetic games into a JSON dataset",
        description=(
            "Play synthetic games, keep varied positions (openings to bare-king endings, with "
            "their real side to move, castling and en passant), render each as a board image "
            "and write DIR/images/ and DIR/{train,val,test}.jsonl. Deterministic for --seed; "
            "an interrupted run resumes when rerun with the same arguments."
        ),
    )
    parser.add_argument(OUT, type=Path, required=True, help="dataset folder (DIR)")
    for split, default in SPLIT_DEFAULTS.items():
        parser.add_argument(
            f"--{split}",
            type=non_negative_int,
            default=default,
            help=f"{split} images (default: %(default)s)",
        )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of games and looks (default: %(default)s)"
    )
    parser.add_argument(
        "--style",
        default="mixed",
        help=(
            "rendering style: mixed (default: every look), seed (the seed's 512 px look), "
            "simple (one 224 px look), mixed-seen / mixed-held-out (train / test on look "
            "combinations never seen together), designs-seen / designs-held-out (train / test "
            "on piece designs never seen), designs-inner-seen / designs-inner-held-out "
            "(docs/looks.md)"
        ),
    )
    parser.add_argument(
        "--test_style",
        "--test-style",
        dest="test_style",
        help="rendering style of the test split (default: --style), e.g. mixed-held-out",
    )
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=os.cpu_count() or 1,
        help="rendering processes (default: one per CPU)",
    )
    parser.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from chessvlm.datasets import synth_json_dataset

    counts = {split: getattr(args, split) for split in SPLIT_DEFAULTS}
    written = synth_json_dataset(
        args.out, counts, args.seed, args.style, args.test_style, workers=args.workers
    )
    summary = ", ".join(f"{split} {count}" for split, count in written.items())
    print(f"synthetic dataset in {args.out}: {summary}")
    return 0


def _register_import(commands) -> None:
    parser = commands.add_parser(
        "import",
        help="import the seed's data (CSV + images, or the Hugging Face layout)",
        description=(
            "Import the seed's data into a JSON dataset in DIR. --format csv: a folder of "
            "{train,validation,test}.csv (or one CSV) with columns image_path, fen (placement), "
            "active_color, castling_rights, en_passant_target_square[, best_continuation]; "
            "image paths may use backslashes. --format hf: bingbangboom/chess-puzzles-images-mini "
            "as parquet files or a `datasets` save_to_disk folder (Arrow files). Images are "
            "checked and copied unchanged into DIR/images/. Rerun to resume."
        ),
    )
    parser.add_argument("--format", choices=IMPORT_FORMATS, required=True, dest="fmt")
    parser.add_argument("--source", type=Path, required=True, help="the layout's folder or file")
    parser.add_argument(OUT, type=Path, required=True, help="dataset folder (DIR)")
    parser.add_argument(
        "--split", help="split of a single-file --source (default: guessed from its name)"
    )
    parser.add_argument(
        "--image_root",
        "--image-root",
        dest="image_root",
        type=Path,
        help="folder CSV image paths are relative to (default: the CSV's folder, then .)",
    )
    parser.add_argument(
        "--max_samples",
        "--max-samples",
        dest="max_samples",
        type=non_negative_int,
        help="import at most this many rows per split",
    )
    _add_skip_bad(parser, "DIR/skipped.jsonl")
    parser.set_defaults(func=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from chessvlm.datasets import import_json_dataset

    results = import_json_dataset(
        args.out,
        args.fmt,
        args.source,
        split=args.split,
        image_root=args.image_root,
        max_samples=args.max_samples,
        skip_bad=args.skip_bad,
    )
    _print_results(f"imported into {args.out}", results, args.out / "skipped.jsonl")
    return 0


_VLM_DESCRIPTION = (
    "Convert a JSON dataset (DATA_DIR/{train,val,test}.jsonl) into the VLM dataset "
    "(OUT/{train,val,test}.json): the seed's conversation format with one fixed prompt "
    "per target, image paths relative to --base_dir (give the same folder to training and "
    "evaluation as --image_base_dir)."
)


def _add_vlm_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data_dir",
        "--data-dir",
        dest="data_dir",
        type=Path,
        required=True,
        help="JSON dataset folder",
    )
    parser.add_argument(
        OUT,
        "--output_dir",
        "--output-dir",
        dest="output_dir",
        metavar="DIR",
        type=Path,
        help="where to write {train,val,test}.json (default: DATA_DIR/vlm)",
    )
    parser.add_argument(
        "--base_dir",
        "--base-dir",
        dest="base_dir",
        type=Path,
        help="image paths are written relative to this folder (default: DATA_DIR)",
    )
    parser.add_argument(
        "--max_samples",
        "--max-samples",
        dest="max_samples",
        type=non_negative_int,
        help="at most this many samples per split",
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default=TARGETS[0],
        help="answer format: compact board rows or the seed's verbose JSON (default: %(default)s)",
    )
    parser.add_argument(
        "--prompt",
        help="the question in every user turn (default: the target's; a model trained from "
        "scratch learns as well from a short one, e.g. 'Read the board.', and steps faster)",
    )
    parser.add_argument(
        "--no_image_check",
        "--no-image-check",
        dest="check_images",
        action="store_false",
        help="only check that image files exist instead of decoding each one",
    )
    _add_skip_bad(parser, "OUT/skipped.jsonl")
    parser.set_defaults(func=_run_vlm)


def _run_vlm(args: argparse.Namespace) -> int:
    from chessvlm.datasets import create_vlm_dataset

    output_dir = args.output_dir or args.data_dir / "vlm"
    results = create_vlm_dataset(
        args.data_dir,
        output_dir,
        base_dir=args.base_dir,
        max_samples=args.max_samples,
        target=args.target,
        skip_bad=args.skip_bad,
        check_images=args.check_images,
        prompt=args.prompt,
    )
    _print_results(
        f"VLM dataset ({args.target}) in {output_dir}", results, output_dir / "skipped.jsonl"
    )
    return 0


def _add_skip_bad(parser: argparse.ArgumentParser, listing: str) -> None:
    parser.add_argument(
        "--skip_bad",
        "--skip-bad",
        dest="skip_bad",
        action="store_true",
        help=f"skip bad samples instead of stopping, listing each with the reason in {listing}",
    )


def _print_results(title: str, results: dict[str, tuple[int, int]], skipped_file: Path) -> None:
    summary = ", ".join(f"{split} {written}" for split, (written, _) in results.items())
    print(f"{title}: {summary or 'nothing new'}")
    skipped = sum(bad for _, bad in results.values())
    if skipped:
        print(f"skipped {skipped} bad sample(s), listed in {skipped_file}")


def _register_scenes(commands) -> None:
    parser = commands.add_parser(
        "scenes",
        help="compose boards into screenshots, book pages and negatives (the finder's data)",
        description=(
            "Draw chess-site screenshots (1280x800, side panels, move lists, player and "
            "evaluation bars), pages of several boards, book pages with 2-6 captioned "
            "diagrams (some scanned a few degrees askew) and negatives with no chess board "
            "(text, textures, draughts boards, spreadsheets, other checkered patterns) into "
            "OUT/images/, with every board's corners and FEN in OUT/scenes.jsonl. Test "
            "scenes (--designs held-out) use only the designs and looks the seen ones never "
            "draw. Rerunning resumes."
        ),
    )
    parser.add_argument(OUT, "--output", dest="out", required=True, help="folder to write")
    parser.add_argument("--count", type=non_negative_int, default=200, help="default: 200")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument(
        "--designs", choices=("seen", "held-out"), default="held-out", help="default: held-out"
    )
    parser.add_argument(
        "--kind",
        choices=("screenshot", "multi", "page", "negative"),
        help="only scenes of this kind (default: every kind)",
    )
    parser.set_defaults(func=_run_scenes)


def _run_scenes(args: argparse.Namespace) -> int:
    from chessvlm.scenes import write_scenes

    labels = write_scenes(args.out, args.count, args.seed, args.designs, args.kind)
    print(f"scenes: {labels}")
    return 0


def _register_art(commands) -> None:
    parser = commands.add_parser(
        "art",
        help="fetch or list the piece-set art (PyPI and Debian packages) into the art cache",
        description="Piece sets whose art comes from pinned PyPI or Debian packages are "
        "downloaded into $CHESSVLM_ART_DIR (default ~/.cache/chessvlm/art), never into the "
        "repository. See docs/piece_sets.md.",
    )
    parser.add_argument(
        "--fetch", action="store_true", help="download every missing art package (idempotent)"
    )
    parser.add_argument(
        "--list", action="store_true", help="each set: design, kind, source, licence, available"
    )
    parser.set_defaults(func=_run_art)


def _run_art(args: argparse.Namespace) -> int:
    from chessvlm import pieces

    failed = 0
    if args.fetch:
        results = pieces.fetch_art()
        failed = sum(result != "ok" for result in results.values())
        print(f"art cache {pieces.art_dir()}: {len(results) - failed} of {len(results)} packages")
    if args.list or not args.fetch:
        available = set(pieces.available_piece_sets())
        print("set\tdesign\tkind\tsource\tlicence\tavailable")
        for name, source in pieces.PIECE_SETS.items():
            where = source.package + (f"=={source.version}" if source.version else "")
            print(
                f"{name}\t{source.design}\t{source.kind}\t{source.source}: {where}\t"
                f"{source.licence}\t{'yes' if name in available else 'no'}"
            )
        designs = pieces.piece_designs()
        print(
            f"{len(available)} of {len(pieces.PIECE_SETS)} sets available; "
            f"{len(pieces.piece_designs(sorted(available)))} of {len(designs)} designs"
        )
    return 1 if failed else 0
