"""`chessvlm export --format onnx`: a reader checkpoint as ONNX graphs, checked against torch."""

from __future__ import annotations

import argparse

from chessvlm.cli.arguments import MODEL, OUT, positive_int


def register(subparsers) -> None:
    """Add the `export` command."""
    parser = subparsers.add_parser(
        "export",
        help="write a reader as ONNX graphs for use outside Python",
        description=(
            "Write the board locator and the reader of a checkpoint as locator.onnx and "
            "reader.onnx (probabilities out), with export.json describing their inputs and "
            "outputs; then read rendered boards with torch and onnxruntime and fail unless "
            "every probability agrees within 1e-4 and every FEN is the same."
        ),
    )
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="default: onnx")
    parser.add_argument(
        MODEL, help="reader checkpoint folder (default: the reader shipped in the package)"
    )
    parser.add_argument(OUT, required=True, help="folder to write the graphs into")
    parser.add_argument(
        "--check_boards",
        type=positive_int,
        default=200,
        help="rendered boards read by both runtimes (default: %(default)s)",
    )
    parser.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from chessvlm.export import export_onnx
    from chessvlm.reader.default import default_reader

    result = export_onnx(args.model or default_reader(), args.out, check_boards=args.check_boards)
    print(
        f"{args.out}: locator.onnx, reader.onnx, export.json; on {result.boards} rendered boards "
        f"onnxruntime gave the same FEN {result.same_fen} times, largest differences from "
        f"torch: boxes {result.max_box_difference:.2e}, square probabilities "
        f"{result.max_square_probability_difference:.2e}, meta probabilities "
        f"{result.max_meta_probability_difference:.2e}"
    )
    return 0
