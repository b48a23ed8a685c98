"""`chessvlm evaluate` end to end on the tiny model: predictions log, resume, processes, errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import chess
import pytest
from PIL import Image
from scrambled_model import scrambled_tiny_model

import chessvlm.generation
import chessvlm.modeling
from chessvlm.cli import main
from chessvlm.datasets import vlm_record
from chessvlm.errors import ChessVLMError
from chessvlm.evaluation import EvaluateConfig, evaluate, exact_box, predictions_path
from chessvlm.io import read_jsonl
from chessvlm.reports import load_run

BOARDS = [
    chess.Board(),
    chess.Board("r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"),
    chess.Board("8/8/4k3/8/2K5/8/8/8 b - - 0 60"),
    chess.Board("r3k2r/8/8/3pP3/8/8/8/R3K2R w KQkq d6 0 1"),
    chess.Board("6k1/5ppp/8/8/8/8/5PPP/3R2K1 w - - 0 30"),
    chess.Board("rnbqkbnr/pp1ppppp/8/2p5/4P3/8/PPPP1PPP/RNBQKBNR w KQkq c6 0 2"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return scrambled_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def make_test_set(folder, count=6, target="compact", missing=(), corrupt=()):
    """A VLM test set of `count` noise images (ids t0, t1, ...), some missing or corrupt."""
    records = []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        sample_id = f"t{index}"
        image = f"images/{sample_id}.png"
        if index in corrupt:
            (folder / image).write_bytes(b"not a png")
        elif index not in missing:
            Image.effect_noise((56, 56), 30 + 11 * index).convert("RGB").save(folder / image)
        records.append(vlm_record({}, BOARDS[index % len(BOARDS)], image, target, sample_id))
    path = folder / "test.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def config_for(model_dir, test_data, output, **settings):
    settings.setdefault("batch_size", 2)
    settings.setdefault("max_new_tokens", 10)
    return EvaluateConfig(
        model_path=str(model_dir),
        test_data=test_data,
        image_base_dir=test_data.parent,
        output=output,
        **settings,
    )


def answers(path):
    return {record["id"]: record.get("answer") for record in read_jsonl(path)}


def test_cli_evaluates_end_to_end_with_bad_images(model_dir, tmp_path, capsys):
    test_data = make_test_set(tmp_path / "data", missing={2}, corrupt={4})
    output = tmp_path / "run" / "metrics.json"
    arguments = [
        "evaluate", "--model_path", str(model_dir), "--test_data", str(test_data),
        "--image_base_dir", str(test_data.parent), "--output", str(output),
        "--batch_size", "4", "--constrained",
    ]  # fmt: skip
    code = main(arguments)
    assert code == 0
    printed = capsys.readouterr().out
    assert "per_square_accuracy:" in printed and "metrics.predictions.jsonl" in printed

    metrics = json.loads(output.read_text())
    assert metrics["n_samples"] == 6
    assert metrics["valid_json_rate"] == pytest.approx(4 / 6)  # constrained: every answer
    assert metrics["n_parsed"] == 4
    assert metrics["error_counts"] == {"missing_image": 1, "unreadable_image": 1}
    assert metrics["answer_tokens"]["n"] == 4
    assert metrics["sources"]["model"] == str(model_dir)
    assert "constrained" in metrics["sources"]["notes"]

    predictions = read_jsonl(output.parent / "metrics.predictions.jsonl")
    assert [record["id"] for record in predictions] == [f"t{i}" for i in range(6)]
    for record in predictions:
        if record["id"] in ("t2", "t4"):
            assert record["answer"] is None and "error_detail" in record
        else:
            assert record["parsed_board"] and record["parse_errors"] == []
            assert not record["truncated"]
    # The report reads the run: metrics, predictions and labels are all found.
    run = load_run(output)
    assert run.predictions == predictions_path(config_for(model_dir, test_data, output))
    assert run.test_data == test_data.resolve()


class SimulatedCrash(Exception):
    """Stands for the process dying in the middle of an evaluation."""


def test_resume_after_interruption_loses_nothing(model_dir, tmp_path, monkeypatch):
    test_data = make_test_set(tmp_path / "data", count=5)
    whole = config_for(model_dir, test_data, tmp_path / "whole.json")
    evaluate(whole)

    generate = chessvlm.generation.generate_answers
    asked: list[int] = []

    def crash_on_second_batch(model, processor, images, *args, **kwargs):
        asked.append(len(images))
        if len(asked) == 2:
            raise SimulatedCrash
        return generate(model, processor, images, *args, **kwargs)

    monkeypatch.setattr(chessvlm.generation, "generate_answers", crash_on_second_batch)
    interrupted = config_for(model_dir, test_data, tmp_path / "resumed.json")
    with pytest.raises(SimulatedCrash):
        evaluate(interrupted)
    log = predictions_path(interrupted)
    lines = log.read_text().splitlines(keepends=True)
    assert len(lines) == 2
    # A crash in the middle of writing the second line.
    log.write_text(lines[0] + lines[1][: len(lines[1]) // 2])

    asked.clear()
    monkeypatch.setattr(chessvlm.generation, "generate_answers", generate_counting(asked, generate))
    metrics = evaluate(interrupted)
    assert sum(asked) == 4  # only the samples not yet logged
    resumed = read_jsonl(log)
    assert [record["id"] for record in resumed] == [f"t{i}" for i in range(5)]
    assert log.read_text().splitlines(keepends=True)[0] == lines[0]
    assert answers(log) == answers(predictions_path(whole))
    assert metrics["n_samples"] == 5


def generate_counting(asked, generate):
    def counting(model, processor, images, *args, **kwargs):
        asked.append(len(images))
        return generate(model, processor, images, *args, **kwargs)

    return counting


def test_finished_evaluation_reruns_without_loading_the_model(model_dir, tmp_path, monkeypatch):
    test_data = make_test_set(tmp_path / "data", count=3)
    config = config_for(model_dir, test_data, tmp_path / "metrics.json")
    first = evaluate(config)

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(chessvlm.modeling, "load_model_and_processor", no_loading)
    assert evaluate(config)["per_square_accuracy"] == first["per_square_accuracy"]
    # Fewer samples than were logged: scored on those only, the log keeps the rest.
    smaller = evaluate(config_for(model_dir, test_data, tmp_path / "metrics.json", max_samples=2))
    assert smaller["n_samples"] == 2
    assert len(read_jsonl(predictions_path(config))) == 3


def test_predictions_of_another_test_set_are_refused(model_dir, tmp_path):
    test_data = make_test_set(tmp_path / "data", count=2)
    config = config_for(model_dir, test_data, tmp_path / "metrics.json")
    predictions_path(config).write_text('{"id": "other_7", "answer": "{}"}\n')
    with pytest.raises(ChessVLMError, match="other_7"):
        evaluate(config)


def test_model_trained_for_another_target_or_prompt(model_dir, tmp_path, monkeypatch, capsys):
    trained = shutil.copytree(model_dir, tmp_path / "trained")
    run_config = json.loads((trained / "chessvlm_config.json").read_text())
    test_data = make_test_set(tmp_path / "data", count=1)
    config = config_for(trained, test_data, tmp_path / "metrics.json")

    (trained / "chessvlm_config.json").write_text(json.dumps({**run_config, "target": "seed"}))
    with pytest.raises(ChessVLMError, match="trained for the 'seed' target"):
        evaluate(config)

    taught = {**run_config, "target": "compact", "prompt": "What is on the board?"}
    (trained / "chessvlm_config.json").write_text(json.dumps(taught))
    prompts = []
    generate = chessvlm.generation.generate_answers

    def recording(model, processor, images, prompt, **kwargs):
        prompts.append(prompt)
        return generate(model, processor, images, prompt, **kwargs)

    monkeypatch.setattr(chessvlm.generation, "generate_answers", recording)
    evaluate(config)
    assert prompts == ["What is on the board?"]
    assert "asking the trained prompt" in capsys.readouterr().err


def test_adapter_folder_with_base_model(model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = chessvlm.modeling.load_model(str(model_dir), chessvlm.modeling.default_dtype("cpu"))
    adapter = tmp_path / "adapter"
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(adapter)
    test_data = make_test_set(tmp_path / "data", count=2)

    plain = evaluate(config_for(model_dir, test_data, tmp_path / "plain.json"))
    adapted = evaluate(
        config_for(adapter, test_data, tmp_path / "adapted.json", base_model=str(model_dir))
    )
    assert adapted["sources"]["adapter"] == str(adapter.resolve())
    assert adapted["sources"]["model"] == str(model_dir)
    assert answers(tmp_path / "adapted.predictions.jsonl") != answers(
        tmp_path / "plain.predictions.jsonl"
    )
    assert plain["n_samples"] == adapted["n_samples"] == 2

    with pytest.raises(ChessVLMError, match=r"^base_model: is for adapter folders"):
        evaluate(config_for(model_dir, test_data, tmp_path / "x.json", base_model="base"))


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    arguments = [
        "evaluate", "--model_path", "nowhere", "--test_data", str(tmp_path / "missing.json"),
        "--image_base_dir", str(tmp_path), "--output", str(tmp_path / "metrics.json"),
    ]  # fmt: skip
    code = main(arguments)
    assert code == 2
    assert "missing.json: file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_split_the_test_set_and_merge(model_dir, tmp_path):
    test_data = make_test_set(tmp_path / "data", count=5)
    single = config_for(model_dir, test_data, tmp_path / "single.json")
    evaluate(single)

    output = tmp_path / "pair.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(sys.executable).parent / "chessvlm"), "evaluate",
        "--model_path", str(model_dir),
        "--test_data", str(test_data),
        "--image_base_dir", str(test_data.parent),
        "--output", str(output),
        "--batch_size", "2", "--max_new_tokens", "10",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    merged = tmp_path / "pair.predictions.jsonl"
    assert [record["id"] for record in read_jsonl(merged)] == [f"t{i}" for i in range(5)]
    assert not list(tmp_path.glob("pair.predictions.part*"))
    assert answers(merged) == answers(predictions_path(single))
    metrics = json.loads(output.read_text())
    assert metrics["n_samples"] == 5
    assert metrics["sources"]["device"] == "2x cpu"


# ---------------------------------------------------------------------------------------------
# Cropping to the board a reader locates


def reader_folder(folder: Path) -> Path:
    """A folder that passes for a reader checkpoint (the reader itself is monkeypatched)."""
    from chessvlm.reader.read import CONFIG_FILE, WEIGHTS_FILE

    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text("{}")
    (folder / WEIGHTS_FILE).write_bytes(b"")
    return folder


@pytest.fixture
def located(monkeypatch):
    """A stand-in locator that finds every board in the middle half of its image; lists the
    image sizes of each call (one call a batch)."""
    import chessvlm.reader.read

    calls: list[list[tuple[int, int]]] = []

    def locate(reader, images):
        assert reader == "reader"
        calls.append([image.size for image in images])
        return [(0.25, 0.25, 0.75, 0.75)] * len(images)

    monkeypatch.setattr(chessvlm.reader.read, "load_reader", lambda path: "reader")
    monkeypatch.setattr(chessvlm.reader.read, "locate_boards", locate)
    return calls


def test_crop_with_a_reader_crops_each_batch_and_records_the_box(
    model_dir, tmp_path, located, monkeypatch, capsys
):
    reader = reader_folder(tmp_path / "reader")
    test_data = make_test_set(tmp_path / "data", count=4, missing={1})
    output = tmp_path / "run" / "metrics.json"
    seen: list[tuple[int, int]] = []
    generate = chessvlm.generation.generate_answers

    def recording(model, processor, images, *args, **kwargs):
        seen.extend(image.size for image in images)
        return generate(model, processor, images, *args, **kwargs)

    monkeypatch.setattr(chessvlm.generation, "generate_answers", recording)
    arguments = [
        "evaluate", "--model_path", str(model_dir), "--test_data", str(test_data),
        "--image_base_dir", str(test_data.parent), "--output", str(output),
        "--batch_size", "2", "--max_new_tokens", "5", "--crop_with", str(reader),
    ]  # fmt: skip
    assert main(arguments) == 0
    assert f"board crop: board located by reader {reader.resolve()}, at its exact corners" in (
        capsys.readouterr().out
    )
    assert located == [[(56, 56)], [(56, 56), (56, 56)]]  # a whole batch at once
    assert seen == [(28, 28)] * 3  # the model saw the located boards only
    predictions = read_jsonl(output.parent / "metrics.predictions.jsonl")
    boxes = {record["id"]: record.get("board_box") for record in predictions}
    middle = [14.0, 14.0, 42.0, 42.0]
    assert boxes == {"t0": middle, "t1": None, "t2": middle, "t3": middle}
    sources = json.loads(output.read_text())["sources"]
    assert (
        sources["board_crop"] == f"board located by reader {reader.resolve()}, at its exact corners"
    )
    assert "boards cropped first" in sources["notes"]

    # A resumed run must read the same way, or its predictions would mix two kinds.
    assert main([*arguments[:-2], "--crop_with", "none"]) == 2
    assert "was written reading cropped boards" in capsys.readouterr().err
    assert main(arguments) == 0  # the same crop: nothing left to do


@pytest.mark.parametrize("off", [(-0.3, 0.2, 0.25, -0.1), (0.05, -0.05, 0.0, 0.1)])
def test_a_located_box_moves_onto_the_squares_the_board_finder_sees_there(off, monkeypatch):
    import chessvlm.reader.read
    from chessvlm.evaluation import crop_boards
    from chessvlm.rendering import RenderParams, board_box, render_board

    params = RenderParams(size=320, margin=(24, 40, 16, 8))  # squares of 40 px
    image = render_board(
        chess.Board("r1bqkb1r/pppp1ppp/2n2n2/4p3/2B1P3/5N2/PPPP1PPP/RNBQK2R"), params
    )
    truth = board_box(params)
    located = tuple(edge + 40 * shift for edge, shift in zip(truth, off, strict=True))
    exact = exact_box(image, located)
    assert max(abs(a - b) for a, b in zip(exact, truth, strict=True)) <= 0.05 * 40
    # crop_boards cuts there: the VLM sees the squares, not the locator's box.
    width, height = image.size
    fractions = [value / side for value, side in zip(located, (width, height) * 2, strict=True)]
    monkeypatch.setattr(chessvlm.reader.read, "locate_boards", lambda reader, images: [fractions])
    (crop,), (box,) = crop_boards("reader", [image])
    assert box == [round(value, 1) for value in exact]
    assert crop.size == (round(exact[2]) - round(exact[0]), round(exact[3]) - round(exact[1]))
    # Where the corner search finds no board (a blank picture), the located box stays.
    blank = Image.new("RGB", image.size, "white")
    assert exact_box(blank, located) == located


def test_model_trained_on_crops_is_cropped_by_the_default_reader(
    model_dir, tmp_path, located, monkeypatch, capsys
):
    import chessvlm.reader.default

    trained = shutil.copytree(model_dir, tmp_path / "trained")
    run_config = json.loads((trained / "chessvlm_config.json").read_text())
    (trained / "chessvlm_config.json").write_text(
        json.dumps({**run_config, "board_crop": "label box"})
    )
    reader = reader_folder(tmp_path / "reader")
    monkeypatch.setattr(chessvlm.reader.default, "default_reader", lambda: reader)
    test_data = make_test_set(tmp_path / "data", count=2)

    cropped = evaluate(config_for(trained, test_data, tmp_path / "cropped.json"))
    assert "cropping each image to the board located by the default reader" in (
        capsys.readouterr().err
    )
    assert "default reader" in cropped["sources"]["board_crop"]
    assert len(located) == 1
    whole = evaluate(config_for(trained, test_data, tmp_path / "whole.json", crop_with="none"))
    assert whole["sources"]["board_crop"] == "none: whole images (--crop_with none)"
    assert len(located) == 1
    assert "board_box" not in read_jsonl(tmp_path / "whole.predictions.jsonl")[0]
    # A model trained on whole images reads whole images unless told otherwise.
    plain = evaluate(config_for(model_dir, test_data, tmp_path / "plain.json"))
    assert plain["sources"]["board_crop"] == "none: whole images"

    def no_default():
        raise ChessVLMError("this install has no default reader in somewhere")

    monkeypatch.setattr(chessvlm.reader.default, "default_reader", no_default)
    with pytest.raises(ChessVLMError, match="no default reader in somewhere; pass `crop_with`"):
        evaluate(config_for(trained, test_data, tmp_path / "none.json"))
    with pytest.raises(ChessVLMError, match="not a board reader checkpoint"):
        evaluate(config_for(trained, test_data, tmp_path / "x.json", crop_with=str(tmp_path)))


def test_crop_with_the_finder_cuts_out_found_boards_and_scores_the_finder(model_dir, tmp_path):
    from chessvlm.rendering import RenderParams, render_board

    test_data = make_test_set(tmp_path / "data", count=2)
    params = RenderParams(size=96, margin=(20, 10, 20, 30))
    render_board(chess.Board(), params).save(tmp_path / "data" / "images" / "t0.png")
    metrics = evaluate(config_for(model_dir, test_data, tmp_path / "m.json", crop_with="finder"))
    predictions = {p["id"]: p for p in read_jsonl(tmp_path / "m.predictions.jsonl")}
    assert predictions["t0"]["boards_found"] == 1 and predictions["t1"]["boards_found"] == 0
    assert predictions["t0"]["board_box"] == pytest.approx([20, 10, 116, 106], abs=0.5)
    assert "board_box" not in predictions["t1"]
    assert metrics["board_finder"]["boards_found"] == 0.5
    assert metrics["board_finder"]["false_boards"] == 0
    assert (
        metrics["sources"]["board_crop"] == "board found by the board finder (--crop_with finder)"
    )
