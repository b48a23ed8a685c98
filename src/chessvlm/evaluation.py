"""`chessvlm evaluate`: generate an answer for every test board, log it, then score the log.

Predictions go to a JSONL file beside the metrics (`<output stem>.predictions.jsonl` unless
named), one line per test sample, appended and flushed as each batch finishes:

    {"id", "answer", "answer_tokens", "seconds", "truncated", "parsed_board", "parse_errors"}

`answer` is the raw text, `parsed_board` the placement it states (FEN placement field, null
when it cannot be read), `parse_errors` the `positions.AnswerError` codes, `seconds` the
sample's share of its batch's wall time, `truncated` whether it hit `max_new_tokens`. A test
image that is missing or unreadable gives `{"id", "answer": null, "error": "missing_image" |
"unreadable_image", "error_detail", "seconds"}`: scored as a failed answer, never a crash.

Boards that do not fill their image (a margin, a frame, coordinates outside the squares) are
cut out first when the model was trained that way: `crop_with` names a board reader whose
locator finds each board (`reader.locate_boards`, a whole batch at once), then the board
finder's corner search puts its edges exactly on the squares' (`exact_box`), and each
prediction line also holds `"board_box"`, the [left, top, right, bottom] pixels the model saw. A
model whose run config says `"board_crop": "label box"` (trained on boards cropped to their
labelled box) is cropped with the shipped default reader unless `crop_with` says otherwise;
the test data's own `board_box` labels are never used. The metrics' `sources` name the crop.

A rerun skips every id already logged, so an interrupted evaluation resumes and loses nothing
(a line torn by a crash is dropped and that sample redone). Under `torchrun` or `accelerate
launch` each process takes every N-th sample and logs to its own part file
(`<predictions stem>.part<rank>.jsonl`); process 0 then merges the parts into the predictions
file (atomically, in test order), computes the metrics and writes them. `boards_per_second`
is therefore one process's rate.

The baseline is the same command on the base model: `--model_path Qwen/Qwen2-VL-2B-Instruct`
and no adapter; it is asked the test data's own prompt, like the fine-tuned model.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chessvlm.errors import ChessVLMError, ConfigError, InputError
from chessvlm.io import (
    JsonlAppender,
    atomic_write_json,
    atomic_write_jsonl,
    iter_jsonl,
)

if TYPE_CHECKING:
    from chessvlm.generation import Generation

PREDICTIONS_SUFFIX = ".predictions.jsonl"
NO_CROP = "none"
# `crop_with` value: cut each image to the board the board finder (chessvlm.finder) finds.
FINDER_CROP = "finder"


@dataclass
class EvaluateConfig:
    """Settings of one evaluation (the `chessvlm evaluate` flags)."""

    model_path: str
    test_data: str | Path
    image_base_dir: str | Path
    output: str | Path
    base_model: str | None = None
    batch_size: int = 8
    max_new_tokens: int | None = None
    max_samples: int | None = None
    constrained: bool = False
    predictions: str | Path | None = None
    # A board reader checkpoint whose locator crops each image to its board first; `NO_CROP`
    # ("none") for whole images; None: as the model was trained (see `plan_crop`).
    crop_with: str | Path | None = None


def predictions_path(config: EvaluateConfig) -> Path:
    """The predictions JSONL: `config.predictions`, else beside the metrics JSON."""
    if config.predictions is not None:
        return Path(config.predictions)
    output = Path(config.output)
    return output.with_name(output.stem + PREDICTIONS_SUFFIX)


def evaluate(config: EvaluateConfig) -> dict:
    """Generate the missing predictions, merge them, and compute and write the metrics.

    Returns the metrics dict written to `config.output` (on every process of a distributed
    run). Raises `ChessVLMError` for bad settings or input.
    """
    from chessvlm.datasets import read_vlm_dataset, require_test_data
    from chessvlm.metrics import infer_target

    if config.batch_size < 1:
        raise ConfigError("batch_size", f"must be at least 1, got {config.batch_size}")
    require_test_data(config.test_data, config.image_base_dir)
    all_labels = read_vlm_dataset(config.test_data)
    labels = all_labels[: config.max_samples] if config.max_samples else all_labels
    target = infer_target(labels)
    plan = plan_model(config, target, _dataset_prompt(labels, str(config.test_data)))
    predictions = predictions_path(config)
    test_ids = [str(record["id"]) for record in all_labels]
    done = _logged_ids(predictions, test_ids)
    if done:
        _check_same_crop(predictions, plan.crop)

    state = process_state()
    shard = labels[state.process_index :: state.num_processes]
    todo = [record for record in shard if str(record["id"]) not in done]
    if todo:
        part = _part_path(predictions, state.process_index, state.num_processes)
        _predict(config, plan, todo, target, part, state.device, state.is_local_main_process)
    state.wait_for_everyone()
    if state.is_main_process:
        merged = merge_predictions(predictions, test_ids)
        wanted = {str(record["id"]) for record in labels}
        scored = [record for record in merged if str(record["id"]) in wanted]
        _write_metrics(
            config, labels, scored, target, _sources(config, plan, target, scored, state)
        )
    state.wait_for_everyone()
    return json.loads(Path(config.output).read_text(encoding="utf-8"))


def process_state() -> Any:
    """accelerate's view of this run's processes (alone, `torchrun` or `accelerate launch`).

    Without a GPU (or under `accelerate launch --cpu`) the processes work on the CPU and
    talk over gloo; accelerate only looks for CPU processes when told so.
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    return PartialState(cpu=cpu)


def _dataset_prompt(labels: list[dict], where: str) -> str:
    """The one prompt of the test data (every record's user turn must ask the same)."""
    from chessvlm.datasets import user_prompt

    prompts = {user_prompt(record) for record in labels}
    if len(prompts) > 1:
        raise InputError(where, f"records ask {len(prompts)} different prompts; expected one")
    return prompts.pop()


def _part_path(predictions: Path, rank: int, world_size: int) -> Path:
    """Where one process logs: the predictions file itself when it works alone."""
    if world_size == 1:
        return predictions
    return predictions.with_name(f"{predictions.name.removesuffix('.jsonl')}.part{rank}.jsonl")


def _part_files(predictions: Path) -> list[Path]:
    stem = predictions.name.removesuffix(".jsonl")
    return sorted(predictions.parent.glob(f"{stem}.part*.jsonl"))


def _read_logs(predictions: Path) -> list[dict]:
    """Every record of the predictions file and of its part files, in that order.

    A last line torn by a crash (or still being written by another process) is skipped.
    """
    records = []
    for path in [predictions, *_part_files(predictions)]:
        if path.is_file():
            records.extend(record for _, record in iter_jsonl(path, allow_truncated_tail=True))
    return records


def _logged_ids(predictions: Path, test_ids: list[str]) -> set[str]:
    """The ids already predicted; ids foreign to the test data mean a wrong predictions file."""
    logged = {str(record["id"]) for record in _read_logs(predictions)}
    strangers = sorted(logged - set(test_ids))
    if strangers:
        raise InputError(
            str(predictions),
            f"holds {len(strangers)} ids that are not in the test data (e.g. "
            f"{', '.join(strangers[:3])}): it belongs to another test set; pass another "
            "`predictions` or remove it",
        )
    return logged


def _check_same_crop(predictions: Path, crop: CropPlan) -> None:
    """Refuse to resume a predictions log made with cropping on with it off, or the reverse."""
    answered = [record for record in _read_logs(predictions) if record.get("answer") is not None]
    cropped = {"board_box" in record or "boards_found" in record for record in answered}
    if cropped and cropped != {crop.reader is not None or crop.finder}:
        then = "cropped boards" if True in cropped else "whole images"
        raise InputError(
            str(predictions),
            f"was written reading {then}, but this run's crop is {crop.description}; rerun "
            "with the same `crop_with`, or pass another `predictions`",
        )


def merge_predictions(predictions: Path, test_ids: list[str]) -> list[dict]:
    """Merge the part files into `predictions` (one record per id, in test order).

    The merged file is written atomically before the parts are removed, so a crash in
    between leaves duplicates that the next merge drops, never a loss. Returns the records.
    """
    by_id: dict[str, dict] = {}
    for record in _read_logs(predictions):
        by_id.setdefault(str(record["id"]), record)
    order = {sample_id: index for index, sample_id in enumerate(test_ids)}
    merged = sorted(by_id.values(), key=lambda record: order.get(str(record["id"]), len(order)))
    atomic_write_jsonl(predictions, merged)
    for part in _part_files(predictions):
        part.unlink()
    return merged


@dataclass(frozen=True)
class CropPlan:
    """How test images are cut to their board before the model sees them."""

    # The reader checkpoint whose locator finds each board; None: whole images.
    reader: Path | None
    # One line for logs, metrics and reports.
    description: str
    # Cut out by the board finder instead (`FINDER_CROP`).
    finder: bool = False


@dataclass(frozen=True)
class ModelPlan:
    """What to load and how to ask it: base model, adapter, prompt, board size and crop."""

    base: str
    adapter: str | None
    prompt: str
    image_size: int | None  # None: the model's default (`modeling.default_image_size`)
    crop: CropPlan = CropPlan(None, "none: whole images")


def plan_crop(crop_with: str | Path | None, run_config: dict, model: str) -> CropPlan:
    """The crop for a model: `crop_with` (a reader checkpoint, or `NO_CROP`) when given; else
    the shipped default reader (`chessvlm.reader.default.default_reader`) for a model trained on
    boards cropped to their labelled box (run config `board_crop`), said on stderr; else none.

    A model never sees a label's box at test time: only a reader's located one.
    """
    from chessvlm.reader.read import is_reader_checkpoint
    from chessvlm.training import LABEL_BOX

    if crop_with is not None and str(crop_with) == NO_CROP:
        return CropPlan(None, "none: whole images (--crop_with none)")
    if crop_with is not None and str(crop_with) == FINDER_CROP:
        return CropPlan(None, "board found by the board finder (--crop_with finder)", finder=True)
    if crop_with is not None:
        folder = Path(crop_with)
        if not is_reader_checkpoint(folder):
            raise ConfigError(
                "crop_with",
                f"{crop_with} is not a board reader checkpoint (a folder from "
                "`chessvlm reader train`); pass one, finder for the board finder, or none for "
                "whole images",
            )
        return CropPlan(
            folder.resolve(), f"board located by reader {folder.resolve()}, at its exact corners"
        )
    if run_config.get("board_crop") != LABEL_BOX:
        return CropPlan(None, "none: whole images")
    from chessvlm.reader.default import default_reader

    try:
        folder = default_reader()
    except ChessVLMError as error:
        raise ChessVLMError(
            f"{model} was trained on boards cropped to their box, so test images are cropped "
            f"too, but {error}; pass `crop_with` READER_DIR, or `crop_with` none to read "
            "whole images"
        ) from None
    print(
        f"chessvlm: {model} was trained on boards cropped to their box; cropping each image "
        f"to the board located by the default reader {folder} (--crop_with to choose)",
        file=sys.stderr,
    )
    return CropPlan(
        folder,
        f"board located by the default reader {folder}, at its exact corners (trained on "
        "label-box crops)",
    )


def crop_boards(reader: Any, images: list[Any]) -> tuple[list[Any], list[list[float]]]:
    """Each image cut to its board: where `reader`'s locator finds it (one batch, one call),
    at the exact corners the board finder's corner search finds there (`exact_box`). Each
    box comes back as [left, top, right, bottom] pixels of the image. Where no board was
    found the whole image is kept, and its box says so."""
    from chessvlm.reader import read as reader_module
    from chessvlm.training import crop_to_pixel_box

    crops, boxes = [], []
    for image, box in zip(images, reader_module.locate_boards(reader, images), strict=True):
        left, top, right, bottom = box
        width, height = image.size
        pixels = exact_box(image, (left * width, top * height, right * width, bottom * height))
        crops.append(crop_to_pixel_box(image, pixels))
        boxes.append([round(value, 1) for value in pixels])
    return crops, boxes


def exact_box(
    image: Any, located: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    """The box (left, top, right, bottom pixels) of the board that the board finder's corner
    search finds where a locator put one (`located`, which is a few hundredths of a square
    off, at times a third; `chessvlm.finder.find_board_near`). The located box itself where
    the search finds none there (pieces hiding the corners).

    A model trained on label boxes reads a box even a tenth of a square off far worse: the
    small VLM fell from 98% of squares to 85-90% on such boards (docs/training.md)."""
    from chessvlm.finder import find_board_near

    board = find_board_near(image, located)
    return located if board is None else board.box


def crop_found_boards(images: list[Any]) -> tuple[list[Any], list[Any], list[int]]:
    """Each image cut to the largest board the board finder finds in it (the whole image
    when it finds none, box None), each box as [left, top, right, bottom] pixels, and how
    many boards were found in each image."""
    from PIL import Image

    from chessvlm.finder import board_pixels, find_boards

    crops, boxes, counts = [], [], []
    for image in images:
        found = find_boards(image)
        counts.append(len(found))
        if not found:
            crops.append(image)
            boxes.append(None)
            continue
        board = max(found, key=lambda b: b.square_size)
        side = round(8 * board.square_size)
        crops.append(Image.fromarray(board_pixels(image, board, side)))
        boxes.append([round(value, 1) for value in board.box])
    return crops, boxes, counts


def finder_figures(labels: list[dict], predictions: list[dict]) -> dict:
    """The board finder's figures over a test set cut by it: images where it found a board,
    boards found beyond one per image (false boards: every test image shows one), and the
    box error in squares against the labels' `board_box` where they have one."""
    from chessvlm.detection import corner_error_squares

    by_id = {str(p["id"]): p for p in predictions}
    counts = [int(by_id[str(r["id"])].get("boards_found", 0)) for r in labels]
    errors = []
    for record in labels:
        found = by_id[str(record["id"])].get("board_box")
        if found and record.get("board_box"):
            errors.append(
                corner_error_squares(_box_corners(found), _box_corners(record["board_box"]))
            )
    return {
        "boards_found": sum(count > 0 for count in counts) / len(counts) if counts else None,
        "false_boards": sum(max(0, count - 1) for count in counts),
        "corner_error_squares_mean": sum(errors) / len(errors) if errors else None,
        "corners_within_eighth_square": (
            sum(error <= 0.125 for error in errors) / len(errors) if errors else None
        ),
    }


def _box_corners(box: list[float]) -> list[tuple[float, float]]:
    left, top, right, bottom = box
    return [(left, top), (right, top), (right, bottom), (left, bottom)]


def plan_model(config: EvaluateConfig, target: str, data_prompt: str) -> ModelPlan:
    """Work out the model to load and the prompt and board size it was trained with.

    A model trained here records its target and prompt: a model taught another target is an
    error; when its prompt differs from the test data's, the trained prompt is asked (with a
    warning), since the seed's mistake was asking something else at evaluation than it
    trained on. Models without a record (the base model: the baseline) get the data's prompt.
    """
    from chessvlm.modeling import resolve_model

    name, adapter = config.model_path, None
    if config.base_model:
        if not (Path(config.model_path) / "adapter_config.json").is_file():
            raise ConfigError(
                "base_model",
                f"is for adapter folders, and {config.model_path} holds no "
                "adapter_config.json; pass the model alone as `model_path`",
            )
        name, adapter = config.base_model, config.model_path
    source = resolve_model(name, adapter)
    trained = source.run_config
    if trained.get("target") and trained["target"] != target:
        raise ChessVLMError(
            f"{config.model_path} was trained for the {trained['target']!r} target but "
            f"{config.test_data} holds {target!r} answers; make the test data for that target"
        )
    prompt = trained.get("prompt") or data_prompt
    if prompt != data_prompt:
        print(
            f"chessvlm: warning: {config.test_data} asks another prompt than "
            f"{config.model_path} was trained with; asking the trained prompt",
            file=sys.stderr,
        )
    image_size = trained.get("image_size")
    crop = plan_crop(config.crop_with, trained, config.model_path)
    return ModelPlan(source.base, source.adapter, prompt, image_size, crop)


def _predict(
    config: EvaluateConfig,
    plan: ModelPlan,
    records: list[dict],
    target: str,
    log_path: Path,
    device: Any,
    show_progress: bool,
) -> None:
    """Generate answers for `records` and append one prediction line per record."""
    from tqdm import tqdm

    from chessvlm.generation import generate_answers
    from chessvlm.modeling import load_model_and_processor, pinned_image_size

    model, processor = load_model_and_processor(
        plan.base, plan.adapter, device=device, image_size=plan.image_size
    )
    image_size = pinned_image_size(processor)
    locator = None
    if plan.crop.reader is not None:
        from chessvlm.reader import read as reader_module

        locator = reader_module.load_reader(plan.crop.reader)
    max_new_tokens = _max_new_tokens(config, target)
    bar = tqdm(total=len(records), desc="evaluate", unit="board", disable=not show_progress)
    with JsonlAppender(log_path) as log, bar:
        for start in range(0, len(records), config.batch_size):
            batch = records[start : start + config.batch_size]
            readable, images = [], []
            for record in batch:
                image, failure = _open_image(Path(config.image_base_dir), record)
                if failure is not None:
                    log.write(failure)
                else:
                    readable.append(record)
                    images.append(image)
            boxes: list[list[float] | None] = [None] * len(images)
            locating = 0.0  # each image's share of the time spent finding its board
            counts: list[int | None] = [None] * len(images)
            if (locator is not None or plan.crop.finder) and images:
                started = time.perf_counter()
                if plan.crop.finder:
                    images, boxes, counts = crop_found_boards(images)
                else:
                    images, boxes = crop_boards(locator, images)
                locating = (time.perf_counter() - started) / len(images)
            generations = generate_answers(
                model,
                processor,
                images,
                plan.prompt,
                batch_size=config.batch_size,
                max_new_tokens=max_new_tokens,
                constrained_target=target if config.constrained else None,
                image_size=image_size,
            )
            found = zip(readable, generations, boxes, counts, strict=True)
            for record, generation, box, count in found:
                line = prediction_record(str(record["id"]), generation, target)
                line["seconds"] += locating
                if box is not None:
                    line["board_box"] = box
                if count is not None:
                    line["boards_found"] = count
                log.write(line)
            bar.update(len(batch))


def _max_new_tokens(config: EvaluateConfig, target: str) -> int:
    from chessvlm.generation import default_max_new_tokens

    return config.max_new_tokens or default_max_new_tokens(target, config.constrained)


def _open_image(base_dir: Path, record: dict) -> tuple[Any, dict | None]:
    """The record's image as RGB, or the prediction line that records why it failed."""
    from PIL import Image

    started = time.perf_counter()
    path = base_dir / record["image"]
    try:
        with Image.open(path) as image:
            return image.convert("RGB"), None
    except FileNotFoundError:
        code, detail = "missing_image", f"image not found: {path}"
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        code, detail = "unreadable_image", f"cannot read image {path}: {error}"
    failure = {
        "id": str(record["id"]),
        "answer": None,
        "error": code,
        "error_detail": detail,
        "seconds": time.perf_counter() - started,
    }
    return None, failure


def prediction_record(sample_id: str, generation: Generation, target: str) -> dict:
    """The predictions-file line of one generated answer (see the module docstring)."""
    from chessvlm.positions import parse_answer

    parsed = parse_answer(generation.answer, target)
    return {
        "id": sample_id,
        "answer": generation.answer,
        "answer_tokens": generation.answer_tokens,
        "seconds": generation.seconds,
        "truncated": generation.truncated,
        "parsed_board": parsed.board.board_fen() if parsed.board is not None else None,
        "parse_errors": parsed.error_codes,
    }


def _sources(
    config: EvaluateConfig, plan: ModelPlan, target: str, predictions: list[dict], state: Any
) -> dict:
    """What was run, under the `run.json` keys the report reads (`run_info.RUN_INFO_KEYS`).

    `eval_seconds` is the generation time: the samples' seconds summed over every run that
    produced them (resumes included), divided by the number of processes sharing the work.
    """
    settings = [
        "constrained decoding (xgrammar)" if config.constrained else "greedy decoding",
        f"batch {config.batch_size}",
        f"max_new_tokens {_max_new_tokens(config, target)}",
    ]
    if state.num_processes > 1:
        settings.append(f"{state.num_processes} processes")
    if plan.crop.reader is not None or plan.crop.finder:
        settings.append(f"boards cropped first: {plan.crop.description}")
    seconds = sum(float(record.get("seconds") or 0.0) for record in predictions)
    return {
        "model": plan.base,
        "adapter": str(Path(plan.adapter).resolve()) if plan.adapter else None,
        "target": target,
        "test_data": str(Path(config.test_data).resolve()),
        "image_base_dir": str(Path(config.image_base_dir).resolve()),
        "predictions": str(predictions_path(config).resolve()),
        "eval_seconds": seconds / state.num_processes,
        "device": _device_name(state),
        "notes": ", ".join(settings),
        "board_crop": plan.crop.description,
    }


def _device_name(state: Any) -> str:
    import torch

    device = torch.device(state.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{state.num_processes}x {name}" if state.num_processes > 1 else name


def _write_metrics(
    config: EvaluateConfig, labels: list[dict], predictions: list[dict], target: str, sources: dict
) -> None:
    from chessvlm.metrics import compute_metrics

    metrics = compute_metrics(labels, predictions, target)
    metrics["sources"] = sources
    if any("boards_found" in prediction for prediction in predictions):
        metrics["board_finder"] = finder_figures(labels, predictions)
    atomic_write_json(config.output, metrics)
