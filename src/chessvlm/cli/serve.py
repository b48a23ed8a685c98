"""`chessvlm serve`: the web page and JSON API for reading board images."""

from __future__ import annotations

import argparse
import os

from chessvlm.cli.arguments import MODEL, positive_float, positive_int


def register(subparsers) -> None:
    """Add the `serve` command."""
    parser = subparsers.add_parser(
        "serve",
        help="a web page and a JSON API that read board images",
        description=(
            "Serve a page (paste, drop or pick an image; see the board, its FEN, lichess "
            "links) and the API behind it: POST /api/read, GET /api/health, docs at /docs. "
            "Everything is served locally; it works offline."
        ),
    )
    parser.add_argument(
        MODEL,
        help="reader checkpoint folder, or its ONNX export (chessvlm export: read with "
        "onnxruntime); default: the reader shipped in the package",
    )
    parser.add_argument(
        "--no_detect",
        "--no-detect",
        dest="detect",
        action="store_false",
        help="read each upload as one board cropped to its squares, without the board finder "
        "(a request can still ask for it with ?detect=true)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine)")
    parser.add_argument("--port", type=int, default=8000, help="default: 8000")
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="server processes, each with its own model and batches (default: %(default)s)",
    )
    parser.add_argument(
        "--max_upload_mb",
        type=positive_float,
        default=10.0,
        help="upload limit in MB (default: %(default)s)",
    )
    parser.add_argument(
        "--max_pixels",
        type=positive_int,
        default=40_000_000,
        help="image limit, width x height (default: %(default)s)",
    )
    parser.add_argument(
        "--upload_timeout",
        type=positive_float,
        default=30.0,
        help="seconds a client has to send its upload (default: %(default)s)",
    )
    parser.add_argument(
        "--max_batch",
        type=positive_int,
        default=16,
        help="boards a model call (default: %(default)s)",
    )
    parser.add_argument(
        "--batch_wait_ms",
        type=float,
        default=2.0,
        help="how long a short batch waits for reads still being decoded (default: %(default)s)",
    )
    parser.add_argument(
        "--decode_threads",
        type=positive_int,
        default=2,
        help="threads decoding uploaded images, per process (default: %(default)s)",
    )
    parser.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from chessvlm.serve.app import CONFIG_VARIABLE, ServeConfig, create_app
    from chessvlm.serve.uploads import UploadLimits

    config = ServeConfig(
        model=args.model,
        detect=args.detect,
        limits=UploadLimits(
            max_bytes=int(args.max_upload_mb * 2**20),
            max_pixels=args.max_pixels,
            receive_seconds=args.upload_timeout,
        ),
        max_batch=args.max_batch,
        max_wait_ms=args.batch_wait_ms,
        decode_threads=args.decode_threads,
    )
    # Built here even with several workers: a bad --model stops before anything listens.
    app = create_app(config)
    if args.workers == 1:
        uvicorn.run(app, host=args.host, port=args.port)
    else:
        os.environ[CONFIG_VARIABLE] = config.to_json()
        uvicorn.run(
            "chessvlm.serve.app:app_from_environment",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
        )
    return 0
