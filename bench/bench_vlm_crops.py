"""What the crop costs a VLM trained on label boxes: a quickstart's small VLM read on boards cut
out three ways, side by side, on both of its test splits.

    OMP_NUM_THREADS=2 python bench/bench_vlm_crops.py --quickstart runs/quickstart \
        [--reader DIR] [--work DIR]

1. `label box`: each test image cut at its label's own box beforehand (no user has one): the
   best the model can do.
2. `locator box`: cut where the reader's locator puts the board (`reader.locate_boards`),
   beforehand: how `chessvlm evaluate` cropped before the corner search.
3. `exact corners`: `chessvlm evaluate --crop_with READER` as it crops now: the locator, then
   the board finder's corner search there (`evaluation.exact_box`).

The reader is the quickstart's own (`--reader` to choose another). Each crop also reports how
far its boxes lie from the labels' (largest edge error, in squares). Prints a Markdown table
and writes WORK/bench.json. The pre-cut images and each evaluation's files stay in WORK, and
a rerun reuses them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from chessvlm.evaluation import EvaluateConfig, evaluate
from chessvlm.io import atomic_write_json
from chessvlm.quickstart import QuickstartConfig
from chessvlm.reader.images import open_image
from chessvlm.reader.read import load_reader, locate_boards
from chessvlm.training import crop_to_pixel_box

CROPS = ("label box", "locator box", "exact corners")


def pre_cut(vlm_test: Path, images: Path, out: Path, reader_dir: Path | None) -> Path:
    """The test split with every image cut beforehand, at its label's box (`reader_dir`
    None) or where the reader's locator puts the board; each record keeps the box it was cut
    at in `cut_box` (pixels) and drops `board_box`, so that evaluation reads it whole."""
    test = out / "test.json"
    if test.is_file():
        return test
    (out / "images").mkdir(parents=True, exist_ok=True)
    reader = load_reader(reader_dir) if reader_dir is not None else None
    records = json.loads(vlm_test.read_text(encoding="utf-8"))
    for record in records:
        image = open_image(images / record["image"])
        width, height = image.size
        box = record.pop("board_box", None) or [0.0, 0.0, width, height]
        if reader is not None:
            ((left, top, right, bottom),) = locate_boards(reader, [image])
            box = [left * width, top * height, right * width, bottom * height]
        crop_to_pixel_box(image, box).save(out / record["image"])
        record["cut_box"] = box
    atomic_write_json(test, records)
    return test


def box_errors(vlm_test: Path, boxes: dict[str, list[float]]) -> dict[str, float]:
    """Largest edge error of each box against its label, in squares: median and p90."""
    errors = []
    for record in json.loads(vlm_test.read_text(encoding="utf-8")):
        label, box = record.get("board_box"), boxes.get(record["id"])
        if label is not None and box is not None:
            square = (label[2] - label[0]) / 8
            errors.append(max(abs(a - b) for a, b in zip(box, label, strict=True)) / square)
    return {"median": float(np.median(errors)), "p90": float(np.percentile(errors, 90))}


def measure(config: QuickstartConfig, reader: Path, work: Path) -> dict:
    """Every crop on both test splits: per square, exact boards and box errors."""
    results: dict = {}
    splits = {
        "in distribution": (config.vlm_data_dir, config.data_dir),
        "unseen designs": (config.unseen_vlm_data_dir, config.unseen_data_dir),
    }
    for split, (vlm_data, images) in splits.items():
        vlm_test = vlm_data / "test.json"
        for crop in CROPS:
            name = f"{vlm_data.name}-{crop.replace(' ', '-')}"
            if crop == "exact corners":
                test, base, crop_with = vlm_test, images, str(reader)
            else:
                cut_with = reader if crop == "locator box" else None
                test = pre_cut(vlm_test, images, work / f"cut-{name}", cut_with)
                base, crop_with = test.parent, "none"
            out = work / f"eval-{name}"
            metrics = evaluate(
                EvaluateConfig(
                    model_path=str(config.vlm_dir),
                    test_data=str(test),
                    image_base_dir=str(base),
                    output=str(out / "metrics.json"),
                    predictions=str(out / "predictions.jsonl"),
                    crop_with=crop_with,
                )
            )
            if crop == "exact corners":
                lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
                boxes = {r["id"]: r.get("board_box") for r in map(json.loads, lines)}
            else:
                cut = json.loads(test.read_text(encoding="utf-8"))
                boxes = {record["id"]: record["cut_box"] for record in cut}
            results[f"{split}, {crop}"] = {
                "per_square": metrics["per_square_accuracy"],
                "exact": metrics["exact_board_match"],
                "box_error_squares": box_errors(vlm_test, boxes),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quickstart", type=Path, required=True, help="a quickstart's --out")
    parser.add_argument("--reader", type=Path, help="default: the quickstart's own reader")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vlm_crops"))
    args = parser.parse_args()
    config = QuickstartConfig(out=args.quickstart)
    results = measure(config, args.reader or config.reader_dir, args.work)
    atomic_write_json(args.work / "bench.json", results)
    print(f"\n{config.vlm_dir}, boards cut out by {args.reader or config.reader_dir}:")
    print("| test split, crop | per square | exact boards | box error (squares), median / p90 |")
    print("|---|---|---|---|")
    for name, figures in results.items():
        error = figures["box_error_squares"]
        print(
            f"| {name} | {figures['per_square']:.2%} | {figures['exact']:.1%} "
            f"| {error['median']:.3f} / {error['p90']:.3f} |"
        )


if __name__ == "__main__":
    main()
