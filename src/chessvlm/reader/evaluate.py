"""Scoring a reader on a split: predictions written as they go (resumable), the shared
metrics, and the reader's own figures (orientation, board box).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import chess
import torch
from tqdm import tqdm

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.io import (
    JsonlAppender,
    atomic_write_json,
    read_jsonl,
)
from chessvlm.positions import board_from_fen
from chessvlm.reader.data import read_split, shows_coordinates
from chessvlm.reader.matching import load_square_matcher
from chessvlm.reader.model import box_error_in_squares
from chessvlm.reader.read import (
    BoardReading,
    Reader,
    load_reader,
    locate_board,
    predict_boards,
    read_found_boards,
)


@dataclasses.dataclass
class ReaderEvalConfig:
    """Everything `evaluate_reader` needs; the CLI builds one from its flags."""

    model: str
    data_dir: str
    output: str
    split: str = "test"
    batch_size: int = 64
    max_samples: int | None = None
    decode: str | None = None
    name: str | None = None
    workers: int = 2
    orientation: str = "predicted"
    # Cut each board out with the board finder (chessvlm.finder) instead of the reader's
    # own locator; the metrics then add the finder's figures.
    detect: bool = False
    # What the reader's network computes in (`chessvlm.reader.read.PRECISIONS`).
    precision: str = "auto"
    # A square matcher folder (`chessvlm.reader.matching.save_square_matcher`) to read with in
    # place of the shipped one, e.g. one trained without the designs under test.
    square_matcher: str | None = None


ORIENTATIONS = ("predicted", "given")


def evaluate_reader(config: ReaderEvalConfig) -> dict:
    """Read a split's boards into `OUTPUT/predictions.jsonl` (resumable) and score them.

    Writes `metrics.json` (`chessvlm.metrics.compute_metrics`, compact target: placement)
    and `run.json` (what was evaluated, for `chessvlm report`), and returns the metrics.
    With `orientation="given"` each board is read in the orientation its label states (as
    when a user says which side is at the bottom) instead of the predicted one; the
    predictions' `flipped_pred` stays the model's own guess. With `detect` the board finder
    cuts out each board (the one overlapping the labelled box; an image where it finds none
    scores 0 on every square), and the reader's figures add the finder's: boards found,
    false boards and the corner error.
    """
    from chessvlm.metrics import compute_metrics

    if config.orientation not in ORIENTATIONS:
        raise ChessVLMError(f"orientation must be one of {', '.join(ORIENTATIONS)}")
    out = Path(config.output)
    started = time.monotonic()
    reader = load_reader(config.model, precision=config.precision)
    if config.square_matcher is not None:
        matcher = load_square_matcher(config.square_matcher).fold_for_inference()
        reader = dataclasses.replace(reader, square_matcher=matcher)
    load_seconds = time.monotonic() - started
    records = read_split(config.data_dir, config.split, config.max_samples)
    predictions_path = out / "predictions.jsonl"
    with JsonlAppender(predictions_path) as appender:
        todo = [record for record in records if str(record["id"]) not in appender.done_ids]
        _predict_records(reader, config, todo, appender)
    wanted = {str(record["id"]) for record in records}
    predictions = [p for p in read_jsonl(predictions_path) if str(p["id"]) in wanted]
    elapsed = sum(float(p.get("seconds", 0.0)) for p in predictions)
    metrics = compute_metrics(records, predictions, target="compact", elapsed_seconds=elapsed)
    metrics["reader"] = _reader_figures(reader, records, predictions, load_seconds, config)
    atomic_write_json(out / "metrics.json", metrics)
    from chessvlm.run_info import write_run_info

    trained = reader.config
    train_minutes = trained.get("train_minutes")
    write_run_info(
        out,
        name=config.name or f"reader ({trained['spec']['encoder']})",
        model=str(config.model),
        target="compact",
        train_data=Path(trained["data_dir"]) / "train.jsonl" if "data_dir" in trained else None,
        train_samples=trained.get("train_samples"),
        steps=trained.get("steps"),
        epochs=trained.get("epochs_trained"),
        recipe=describe_reader_recipe(trained),
        train_seconds=None if train_minutes is None else train_minutes * 60,
        test_data=Path(config.data_dir) / f"{config.split}.jsonl",
        image_base_dir=config.data_dir,
        predictions=predictions_path,
        eval_seconds=elapsed,
        device="cpu",
        notes=f"board reader, {metrics['reader']['decode']} decoding, {reader.precision}",
    )
    return metrics


def describe_reader_recipe(config: dict[str, Any]) -> str:
    """One line on how a reader was trained, from its checkpoint config."""
    spec = config["spec"]
    members = config.get("member_checkpoints", [])
    trained = members[0] if members else config
    parts = [f"{spec['encoder'].upper()} encoder" + (", frozen" if spec["freeze_encoder"] else "")]
    if "batch_size" in trained:
        parts.append(f"batch {trained['batch_size']}, lr {trained['learning_rate']:g}")
        parts.append("augmented images" if trained["augment"] else "no augmentation")
    parts.append(f"{spec['image_size']} px")
    if members:
        epochs = ", ".join(str(member.get("epoch", "?")) for member in members)
        parts.append(f"the mean of {len(members)} readers (best epochs by val: {epochs})")
    else:
        parts.append(f"kept the best epoch by val exact boards (epoch {config['epoch']})")
    parts.append(f"{config.get('decode', 'argmax')} decoding")
    return "; ".join(parts)


def _predict_records(
    reader: Reader, config: ReaderEvalConfig, records: list[dict], appender: JsonlAppender
) -> None:
    paths = [Path(config.data_dir) / str(record["image_path"]) for record in records]
    given = config.orientation == "given"
    flips = [bool(record.get("flipped", False)) for record in records] if given else None
    if config.detect:
        results = _found_and_read(reader, config, records, paths, flips)
    else:
        located = predict_boards(
            reader,
            paths,
            batch_size=config.batch_size,
            workers=config.workers,
            decode=config.decode,
            flipped=flips,
        )
        results = ((reading, error, None) for _, reading, error in located)
    bar = tqdm(total=len(records), desc=f"reading {config.split}")
    last = time.monotonic()
    batch: list[dict] = []
    for record, (reading, error, found) in zip(records, results, strict=True):
        detected = {} if found is None else {"boards_found": found}
        if reading is None:
            batch.append({"id": record["id"], "error": str(error), **detected})
        else:
            batch.append(
                {
                    "id": record["id"],
                    "fen": reading.board.board_fen(),
                    "flipped_pred": reading.flipped_probability > 0.5,
                    "box": [round(value, 2) for value in reading.box or ()],
                    **detected,
                }
            )
        if len(batch) >= config.batch_size:
            last = _write_timed(appender, batch, last)
            bar.update(len(batch))
            batch = []
    _write_timed(appender, batch, last)
    bar.update(len(batch))
    bar.close()


def _found_and_read(
    reader: Reader,
    config: ReaderEvalConfig,
    records: list[dict],
    paths: list[Path],
    flips: list[bool] | None,
) -> Iterator[tuple[BoardReading | None, InputError | None, int | None]]:
    """Per record: the board the finder found where the label says (or its only board when
    the label gives no box) read by the reader, or why none was, and how many it found."""
    from chessvlm.detection import match_boards
    from chessvlm.finder import find_boards
    from chessvlm.reader.images import iter_loaded, open_image

    loaded = iter_loaded(paths, open_image, workers=config.workers)
    for index, (record, path, (image, error)) in enumerate(
        zip(records, paths, loaded, strict=True)
    ):
        if image is None:
            yield None, error, None
            continue
        found = find_boards(image, locate=partial(locate_board, reader))
        left, top, right, bottom = record.get("board_box") or (0, 0, *image.size)
        label = [(left, top), (right, top), (right, bottom), (left, bottom)]
        matches = match_boards([board.corners for board in found], [label])
        if not matches:
            yield None, InputError(str(path), "no board found where the label has one"), len(found)
            continue
        board = found[matches[0][0]]
        flipped = flips[index] if flips is not None else None
        (reading,) = read_found_boards(reader, image, [board], config.decode, flipped)
        yield reading, None, len(found)


def _write_timed(appender: JsonlAppender, batch: list[dict], since: float) -> float:
    now = time.monotonic()
    # Each sample's share of its batch's wall time, decoding included, so boards/s survives resumes.
    for prediction in batch:
        prediction["seconds"] = (now - since) / len(batch)
        appender.write(prediction)
    return now


def _reader_figures(
    reader: Reader,
    records: list[dict],
    predictions: list[dict],
    load_seconds: float,
    config: ReaderEvalConfig,
) -> dict:
    by_id = {str(p["id"]): p for p in predictions}
    read = [(r, by_id[str(r["id"])]) for r in records if "fen" in by_id.get(str(r["id"]), {})]
    oriented = [p.get("flipped_pred") == bool(r.get("flipped", False)) for r, p in read]
    # The orientation target: boards that show it by their pawns alone.
    by_pawns = [
        p.get("flipped_pred") == bool(r.get("flipped", False))
        for r, p in read
        if not _draws_coordinates(r) and _pawns(str(r["fen"])) >= 4
    ]
    # Where the coordinates are printed says which part of the reading can see them: inside
    # the squares (the network), outside (the margin reader) or nowhere (the position alone).
    by_place: dict[str, list[bool]] = {}
    for (record, _), right in zip(read, oriented, strict=True):
        by_place.setdefault(_coordinates_place(record), []).append(right)
    box_errors = [
        float(box_error_in_squares(torch.tensor([p["box"]]), torch.tensor([r["board_box"]])))
        for r, p in read
        if r.get("board_box") and p.get("box")
    ]
    detection = {}
    if config.detect:
        found = [p for p in predictions if "boards_found" in p]
        detection = {
            "board_finder": True,
            "board_recall": _mean(["fen" in p for p in predictions]),
            "false_boards": sum(p["boards_found"] - ("fen" in p) for p in found),
        }
    return {
        **detection,
        "decode": config.decode or reader.decode,
        "precision": reader.precision,
        "square_matcher": config.square_matcher or "shipped",
        "orientation": config.orientation,
        "orientation_accuracy": _mean(oriented),
        "orientation_accuracy_pawns_no_coordinates": _mean(by_pawns),
        "boards_pawns_no_coordinates": len(by_pawns),
        "orientation_accuracy_by_coordinates": {
            place: _mean(rights) for place, rights in sorted(by_place.items())
        },
        "box_error_squares": _mean(box_errors),
        "box_within_eighth_square": _mean([error <= 0.125 for error in box_errors]),
        "model_load_seconds": round(load_seconds, 3),
        "encoder": reader.config["spec"]["encoder"],
        "train_minutes": reader.config.get("train_minutes"),
    }


def _pawns(fen: str) -> int:
    return chess.popcount(board_from_fen(fen).pawns)


def _coordinates_place(record: dict) -> str:
    """Where the record's image prints coordinates: "inside", "outside" or "none"."""
    if "coordinates" in record:
        return str(record["coordinates"])
    return "inside" if shows_coordinates(record) else "none"


def _draws_coordinates(record: dict) -> bool:
    """Coordinates anywhere in the image: inside the squares or outside them."""
    return _coordinates_place(record) != "none"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
