"""The worst-board gallery: each run's test images beside its readings, wrong squares in red."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import chess

from chessvlm.datasets import resolve_image
from chessvlm.io import atomic_write_bytes
from chessvlm.metrics import SampleScore, read_labels, read_predictions, score_samples
from chessvlm.reports.document import Block, Cell, Heading, Image, Paragraph, Table
from chessvlm.reports.runs import Run, slug

WRONG_FILL = "#e0303099"
GALLERY_SIZE = 256


def gallery_section(runs: Sequence[Run], out: Path, worst: int) -> list[Block]:
    """The `worst` boards of each run, their images written into `out/gallery`."""
    blocks: list[Block] = [
        Heading(2, "Worst boards"),
        Paragraph(
            "The parsed answers with the most wrong squares: the test image beside the predicted "
            "board, drawn the same way up, with the wrong squares in red."
        ),
    ]
    for run in runs:
        blocks.append(Heading(3, run.name))
        blocks += run_gallery(run, out, worst)
    return blocks


def run_gallery(
    run: Run,
    out: Path,
    worst: int,
    keep: Callable[[dict], bool] | None = None,
    prefix: str = "",
) -> list[Block]:
    """The worst boards of a run (of those whose label `keep` accepts), image files named
    with `prefix` so that two galleries of one run do not collide."""
    if run.predictions is None or run.test_data is None:
        return [
            Paragraph(
                "No gallery: the run names no predictions file or no test labels (see run.json)."
            )
        ]
    if not run.test_data.is_file():
        return [Paragraph(f"No gallery: test labels {run.test_data} not found.")]
    labels = read_labels(run.test_data)
    predictions = read_predictions(run.predictions)
    predicted = {str(record["id"]) for record in predictions}
    labels = [
        label
        for label in labels
        if str(label.get("id")) in predicted and (keep is None or keep(label))
    ]
    kept = {str(label.get("id")) for label in labels}
    predictions = [record for record in predictions if str(record["id"]) in kept]
    target = run.metrics.get("target", "compact")
    scores = score_samples(labels, predictions, target)
    base = run.image_base_dir or run.test_data.parent
    images = {score.id: _image_path(score.label, base) for score in scores}
    missing = [i for i, path in images.items() if path is None or not path.is_file()]
    blocks: list[Block] = []
    if missing:
        blocks.append(
            Paragraph(f"{len(missing)} of {len(scores)} test images are missing under {base}.")
        )
    unparsed = [score for score in scores if not score.parsed]
    if unparsed:
        blocks += _unparsed_examples(unparsed)
    chosen = sorted(
        (s for s in scores if s.parsed and s.wrong_squares),
        key=lambda s: (-len(s.wrong_squares), s.id),
    )
    if not chosen:
        return [*blocks, Paragraph("Every parsed answer is right on all 64 squares.")]
    rows = [
        _gallery_row(run, score, images[score.id], out, f"{prefix}{rank:02d}")
        for rank, score in enumerate(chosen[:worst])
    ]
    return [*blocks, Table(["Image", "Predicted board (wrong squares red)", "Details"], rows)]


def _image_path(label: dict, base: Path) -> Path | None:
    if label.get("image_path"):
        return resolve_image(base, str(label["image_path"]))
    return base / str(label["image"]) if label.get("image") else None


def _unparsed_examples(unparsed: Sequence[SampleScore], limit: int = 3) -> list[Block]:
    rows = []
    for score in unparsed[:limit]:
        answer = str((score.prediction or {}).get("answer") or "")
        shown = answer if len(answer) <= 160 else answer[:160] + "…"
        rows.append([score.id, ", ".join(score.error_codes), shown.replace("\n", " ") or "—"])
    return [
        Paragraph(f"Answers that did not parse: {len(unparsed)} (the first {len(rows)} below)."),
        Table(["Sample", "Error", "Answer (start)"], rows),
    ]


def _gallery_row(
    run: Run, score: SampleScore, image: Path | None, out: Path, rank: str
) -> list[Cell]:
    stem = f"gallery/{slug(run.name)}_{rank}"
    flipped = bool(score.label.get("flipped", False))
    atomic_write_bytes(
        out / f"{stem}_board.png", _board_png(score.pred_board, score.wrong_squares, flipped)
    )
    board_cell = Image(f"{stem}_board.png", f"predicted board for {score.id}", GALLERY_SIZE)
    image_cell: Cell = [f"image missing: {image}"]
    thumbnail = _thumbnail_png(image) if image is not None else None
    if thumbnail is not None:
        atomic_write_bytes(out / f"{stem}_image.png", thumbnail)
        image_cell = Image(f"{stem}_image.png", f"test image {score.id}", GALLERY_SIZE)
    changes = [
        f"{chess.square_name(sq)}: {score.true_symbols[sq]} read as {score.pred_symbols[sq]}"
        for sq in score.wrong_squares
    ]
    shown = changes[:8] + ([f"... {len(changes) - 8} more"] if len(changes) > 8 else [])
    details = [
        f"sample {score.id}",
        f"wrong squares: {len(score.wrong_squares)}",
        f"style {score.label.get('style', '—')}, {'black' if flipped else 'white'} at the bottom",
        f"true: {score.true_board.board_fen()}",
        f"read: {score.pred_board.board_fen()}",
        *shown,
    ]
    return [image_cell, board_cell, details]


def _board_png(board: chess.Board, wrong: Sequence[int], flipped: bool) -> bytes:
    import cairosvg
    import chess.svg

    svg = chess.svg.board(
        board,
        orientation=chess.BLACK if flipped else chess.WHITE,
        fill=dict.fromkeys(wrong, WRONG_FILL),
        size=GALLERY_SIZE,
    )
    return cairosvg.svg2png(bytestring=svg.encode("utf-8"))


def _thumbnail_png(path: Path) -> bytes | None:
    """The image scaled to the gallery size, or None when it is missing or unreadable."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as image:
            picture = image.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None
    picture.thumbnail((GALLERY_SIZE, GALLERY_SIZE))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
