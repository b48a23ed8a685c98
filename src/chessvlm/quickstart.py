"""One command from nothing to a trained board-reading VLM, a board reader and a report.

Stages, each resumable and skipped when already done:
art (fetch the piece sets' art) -> data (render boards in the seen designs, and a test split
in designs kept out of training) -> vlm dataset -> init small model -> train VLM (time
budget) -> train board reader (time budget) -> evaluate both on both test splits -> report.
The VLM reads boards cut out by the reader's locator, so the reader trains first.

A stage that finished leaves `OUT/stages/<name>.json` with its result; the long stages
(rendering, training, evaluation) also resume from their own partial output.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from chessvlm.io import atomic_write_json

# The VLM trains at a flat learning rate, then anneals over the last fifth of its minutes.
LR_DECAY_FRACTION = 0.2


@dataclass
class QuickstartConfig:
    """Sizes and budgets of a quickstart run (the defaults are the README's measured run)."""

    out: Path
    minutes: float = 10.0
    reader_minutes: float = 12.0
    # Training and in-distribution test: every piece design and look but those kept out...
    style: str = "designs-seen"
    # ...which only this second test split draws: designs and looks never trained on.
    unseen_style: str = "designs-held-out"
    preset: str = "small"
    train_samples: int = 20000
    val_samples: int = 200
    test_samples: int = 300
    eval_batch_size: int = 50
    seed: int = 0
    workers: int = max(1, os.cpu_count() or 1)

    @property
    def data_dir(self) -> Path:
        """The rendered JSON dataset."""
        return self.out / "data"

    @property
    def unseen_data_dir(self) -> Path:
        """The test split in designs kept out of training (`unseen_style`)."""
        return self.out / "data_unseen"

    @property
    def vlm_data_dir(self) -> Path:
        """The VLM (conversation) dataset."""
        return self.out / "vlm_data"

    @property
    def unseen_vlm_data_dir(self) -> Path:
        """The unseen-design test split as a VLM dataset."""
        return self.out / "vlm_data_unseen"

    @property
    def base_model_dir(self) -> Path:
        """The untrained model built from the preset."""
        return self.out / "models" / f"{self.preset}-init"

    @property
    def vlm_dir(self) -> Path:
        """The trained VLM and its checkpoints."""
        return self.out / "models" / f"{self.preset}-vlm"

    @property
    def reader_dir(self) -> Path:
        """The trained board reader."""
        return self.out / "models" / "reader"

    def run_dir(self, name: str) -> Path:
        """An evaluation run folder (metrics, predictions, run.json)."""
        return self.out / "runs" / name


# The two test splits: the training style's own, and the designs kept out of training.
TESTS = ("seen", "unseen")


def run_quickstart(config: QuickstartConfig) -> dict[str, dict]:
    """Run every stage (resuming finished ones) and return the four runs' metrics, keyed
    `vlm`, `reader` (in distribution), `vlm_unseen` and `reader_unseen`."""
    config.out.mkdir(parents=True, exist_ok=True)
    stages: list[tuple[str, Callable[[QuickstartConfig], Any]]] = [
        ("art", _fetch_art),
        ("data", _render_data),
        ("vlm_dataset", _vlm_dataset),
        ("init_model", _init_model),
        ("train_vlm", _train_vlm),
        ("train_reader", _train_reader),
        ("evaluate_reader", _evaluate_reader),
        ("evaluate_vlm", _evaluate_vlm),
        ("report", _report),
    ]
    results = {}
    for index, (name, stage) in enumerate(stages, start=1):
        results[name] = _run_stage(config, f"{index}/{len(stages)} {name}", name, stage)
    return {
        f"{model}{suffix}": results[f"evaluate_{model}"][test]
        for model in ("vlm", "reader")
        for test, suffix in zip(TESTS, ("", "_unseen"), strict=True)
    }


def _run_stage(config: QuickstartConfig, title: str, name: str, stage: Callable) -> Any:
    marker = _marker(config, name)
    if marker.is_file():
        tqdm.write(f"[{title}] done before, skipped")
        return _stage_result(config, name)
    tqdm.write(f"[{title}] ...")
    started = time.monotonic()
    result = stage(config)
    seconds = round(time.monotonic() - started, 1)
    atomic_write_json(marker, {"seconds": seconds, "result": result})
    tqdm.write(f"[{title}] finished in {seconds:.0f} s")
    return result


def _fetch_art(config: QuickstartConfig) -> dict:
    """Fetch the piece sets' art from the package registries; a package that cannot be had
    (offline) is named, and the quickstart goes on with the sets at hand."""
    from chessvlm.pieces import available_piece_sets, fetch_art

    failed = {name: result for name, result in fetch_art(log=tqdm.write).items() if result != "ok"}
    if failed:
        tqdm.write(
            f"could not fetch the art of {', '.join(sorted(failed))}: going on with the "
            f"{len(available_piece_sets())} piece sets at hand (`chessvlm data art --list` "
            "shows which); rerun `chessvlm data art --fetch` when the registries can be reached"
        )
    return {"failed": failed, "piece_sets": len(available_piece_sets())}


def _render_data(config: QuickstartConfig) -> dict:
    from chessvlm.datasets import synth_json_dataset

    counts = {
        "train": config.train_samples,
        "val": config.val_samples,
        "test": config.test_samples,
    }
    seen = synth_json_dataset(
        config.data_dir, counts, seed=config.seed, style=config.style, workers=config.workers
    )
    # Other games as well as other designs: no unseen test board is a training position.
    unseen = synth_json_dataset(
        config.unseen_data_dir,
        {"test": config.test_samples},
        seed=config.seed + 1,
        style=config.unseen_style,
        workers=config.workers,
    )
    return {"seen": seen, "unseen": unseen}


def _vlm_dataset(config: QuickstartConfig) -> dict:
    from chessvlm.datasets import create_vlm_dataset
    from chessvlm.prompts import SHORT_PROMPT

    written = {}
    for test in TESTS:
        data_dir, vlm_dir = _data_dir(config, test), _vlm_data_dir(config, test)
        # The images were just rendered and checked by the renderer: no need to decode them.
        made = create_vlm_dataset(
            data_dir, vlm_dir, base_dir=data_dir, check_images=False, prompt=SHORT_PROMPT
        )
        written[test] = {split: count for split, (count, _) in made.items()}
    return written


def _data_dir(config: QuickstartConfig, test: str) -> Path:
    return config.data_dir if test == "seen" else config.unseen_data_dir


def _vlm_data_dir(config: QuickstartConfig, test: str) -> Path:
    return config.vlm_data_dir if test == "seen" else config.unseen_vlm_data_dir


def _test_title(config: QuickstartConfig, test: str) -> str:
    if test == "seen":
        return f"in distribution ({config.style})"
    return f"unseen designs ({config.unseen_style})"


def _init_model(config: QuickstartConfig) -> str:
    from chessvlm.modeling import init_model

    return str(init_model(config.preset, config.base_model_dir, seed=config.seed))


def _train_vlm(config: QuickstartConfig) -> dict:
    from chessvlm.modeling import PRESETS
    from chessvlm.training import BOARD_TOKEN_PIXELS, TrainConfig, train

    started = time.monotonic()
    # Both need a visual token per square: on for `small`, off for the tests' 56 px `tiny`.
    square_aligned = PRESETS[config.preset].image_size % BOARD_TOKEN_PIXELS == 0
    train_config = TrainConfig(
        data_dir=config.vlm_data_dir,
        output_dir=config.vlm_dir,
        model_name=str(config.base_model_dir),
        image_base_dir=config.data_dir,
        use_lora=False,
        num_epochs=100.0,  # the time budget ends training, not the epoch count
        max_minutes=config.minutes,
        lr_decay_fraction=LR_DECAY_FRACTION,
        save_steps=200,
        eval_steps=200,
        square_loss=square_aligned,
        routing_loss=square_aligned,
        resume=config.vlm_dir.is_dir(),
        seed=config.seed,
    )
    output = train(train_config)
    run_config = json.loads((output / "chessvlm_config.json").read_text(encoding="utf-8"))
    return {
        "model": str(output),
        "steps": run_config.get("step"),
        "train_seconds": round(time.monotonic() - started, 1),
    }


def _evaluate_vlm(config: QuickstartConfig) -> dict:
    """Both test splits, each board cut out by the quickstart's reader first."""
    from chessvlm.evaluation import EvaluateConfig, evaluate
    from chessvlm.modeling import read_run_config
    from chessvlm.run_info import write_run_info
    from chessvlm.training import describe_recipe

    trained = _stage_result(config, "train_vlm")
    run_config = read_run_config(trained["model"])
    results = {}
    for test in TESTS:
        run_dir = config.run_dir(_run_name("vlm", test))
        test_data = _vlm_data_dir(config, test) / "test.json"
        write_run_info(
            run_dir,
            name=f"{config.preset} VLM, {_test_title(config, test)}",
            model=trained["model"],
            target="compact",
            train_data=config.vlm_data_dir / "train.json",
            train_samples=config.train_samples,
            steps=trained["steps"],
            epochs=run_config.get("epochs"),
            train_seconds=trained["train_seconds"],
            recipe=describe_recipe(run_config),
            test_data=test_data,
            image_base_dir=_data_dir(config, test),
        )
        results[test] = evaluate(
            EvaluateConfig(
                model_path=trained["model"],
                test_data=test_data,
                image_base_dir=_data_dir(config, test),
                output=run_dir / "metrics.json",
                predictions=run_dir / "predictions.jsonl",
                batch_size=config.eval_batch_size,
                crop_with=str(config.reader_dir),
            )
        )
    return results


def _run_name(model: str, test: str) -> str:
    return model if test == "seen" else f"{model}_unseen"


def _train_reader(config: QuickstartConfig) -> str:
    from chessvlm.reader.train import ReaderTrainConfig, train_reader

    reader_config = ReaderTrainConfig(
        data_dir=str(config.data_dir),
        out=str(config.reader_dir),
        max_minutes=config.reader_minutes,
        seed=config.seed,
        workers=config.workers,
    )
    return str(train_reader(reader_config))


def _evaluate_reader(config: QuickstartConfig) -> dict:
    from chessvlm.reader.evaluate import ReaderEvalConfig, evaluate_reader

    return {
        test: evaluate_reader(
            ReaderEvalConfig(
                model=str(config.reader_dir),
                data_dir=str(_data_dir(config, test)),
                output=str(config.run_dir(_run_name("reader", test))),
                name=f"board reader (CNN, {config.reader_minutes:g} min CPU), "
                + _test_title(config, test),
                workers=config.workers,
            )
        )
        for test in TESTS
    }


def _report(config: QuickstartConfig) -> str:
    from chessvlm.reports import load_run, write_report

    runs = [
        load_run(config.run_dir(_run_name(model, test)))
        for test in TESTS
        for model in ("vlm", "reader")
    ]
    title = f"chessvlm quickstart: {config.train_samples:,} '{config.style}' boards"
    return str(write_report(runs, config.out / "report", title=title))


def _marker(config: QuickstartConfig, name: str) -> Path:
    """The file a finished stage leaves, holding its result."""
    return config.out / "stages" / f"{name}.json"


def _stage_result(config: QuickstartConfig, name: str) -> Any:
    return json.loads(_marker(config, name).read_text(encoding="utf-8"))["result"]
