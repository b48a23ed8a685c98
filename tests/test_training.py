"""Training with the tiny preset: label masking, learning, adapters, merge, resume, 2 processes."""

import dataclasses
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import chess
import pytest
import torch
from boards import random_play_boards
from PIL import Image, ImageDraw

from chessvlm.cli import main
from chessvlm.datasets import vlm_record
from chessvlm.errors import ChessVLMError, InputError
from chessvlm.modeling import (
    chat_text,
    init_model,
    load_model_and_processor,
    prepare_image,
    read_run_config,
)
from chessvlm.positions import SQUARE_CLASSES, screen_symbols, square_symbols
from chessvlm.prompts import PROMPTS
from chessvlm.training import (
    IGNORE_INDEX,
    Example,
    TimeBudget,
    TrainConfig,
    TrainingProgress,
    VLMCollator,
    VLMTrainer,
    _datasets,
    board_crop_of,
    check_examples,
    describe_recipe,
    load_examples,
    lora_config,
    merge_adapter,
    resolve_defaults,
    train,
)

SIZE = 56  # the tiny preset's board size
COLOURS = [(i * 19 % 256, i * 53 % 256, i * 97 % 256) for i in range(len(SQUARE_CLASSES))]


def _draw(board: chess.Board, size: int) -> Image.Image:
    """A board as one flat colour per square class: learnable by a tiny model."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    step = size // 8
    for square, symbol in enumerate(square_symbols(board)):
        x, y = chess.square_file(square) * step, (7 - chess.square_rank(square)) * step
        colour = COLOURS[SQUARE_CLASSES.index(symbol)]
        draw.rectangle([x, y, x + step - 1, y + step - 1], fill=colour)
    return image


def make_vlm_dataset(root: Path, train: int = 16, val: int = 4) -> Path:
    """A VLM dataset in the real on-disk format, images in `root/images`."""
    rng = random.Random(0)
    (root / "images").mkdir(parents=True)
    for split, count in (("train", train), ("val", val)):
        records = []
        for index, board in enumerate(random_play_boards(count, rng, max_plies=30)):
            name = f"images/{split}_{index}.png"
            _draw(board, SIZE + 4 * index).save(root / name)  # sizes vary on purpose
            look = {"flipped": False, "style": "flat"}
            records.append(vlm_record(look, board, name, "compact", f"{split}_{index}"))
        (root / f"{split}.json").write_text(json.dumps(records))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return init_model("tiny", tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_vlm_dataset(tmp_path_factory.mktemp("data"))


def _config(data: Path, tiny: Path, out: Path, **overrides) -> TrainConfig:
    settings = {
        "batch_size": 4,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 0,
        "max_steps": 4,
        "save_steps": 100,
        "eval_steps": 100,
        "logging_steps": 1,
        **overrides,
    }
    return TrainConfig(data_dir=data, output_dir=out, model_name=str(tiny), **settings)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(out: Path) -> list[float]:
    return [record["loss"] for record in _metrics(out) if "loss" in record]


def _logits(model, processor, image: Image.Image) -> torch.Tensor:
    inputs = processor(
        text=[chat_text(processor, PROMPTS["compact"])],
        images=[prepare_image(image, SIZE)],
        return_tensors="pt",
    )
    with torch.no_grad():
        return model(**inputs).logits


# ---------------------------------------------------------------------------------------------
# Collator


def test_labels_cover_exactly_the_answer_and_end_of_turn(tiny, tmp_path):
    model, processor = load_model_and_processor(tiny, device="cpu")
    answers = ['{"board": ["r . b q k b n r"]}', "short"]
    examples = []
    for index, (answer, size) in enumerate(zip(answers, (SIZE, 3 * SIZE), strict=True)):
        path = tmp_path / f"{index}.png"
        _draw(chess.Board(), size).save(path)
        examples.append(Example(str(index), path, f"Prompt number {index}.", answer))
    batch = VLMCollator(processor, SIZE)(examples)
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == image_id).sum()) == 2 * 4  # both boards on one grid
    for row, example in enumerate(examples):
        labelled = (batch["labels"][row] != IGNORE_INDEX).nonzero().flatten()
        length = int(batch["attention_mask"][row].sum())
        prompt_length = len(tokenizer(chat_text(processor, example.prompt))["input_ids"]) + 3
        # Contiguous, ending at the last real token, starting right after the prompt.
        assert labelled.tolist() == list(range(prompt_length, length))
        text = tokenizer.decode(batch["labels"][row, labelled])
        assert text == example.answer + "<|im_end|>"
        assert not batch["mm_token_type_ids"][row, labelled].any()  # no image token has loss
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()  # right pad
    assert batch["attention_mask"][1, -1] == 0  # the shorter answer is padded on the right
    # The model's loss is the mean cross-entropy of exactly those answer tokens.
    with torch.no_grad():
        output = model(**batch)
    logits, labels = output.logits[:, :-1], batch["labels"][:, 1:]
    manual = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )
    assert torch.allclose(output.loss, manual, atol=1e-5)


def _on_canvas(board_image: Image.Image, size=(100, 90), at=(17, 11)) -> Image.Image:
    """The board pasted on a bigger grey canvas: a margin, as other software draws one."""
    canvas = Image.new("RGB", size, (128, 120, 110))
    canvas.paste(board_image, at)
    return canvas


def test_collator_crops_a_record_with_a_board_box_to_it(tiny, tmp_path):
    _, processor = load_model_and_processor(tiny, device="cpu")
    board = chess.Board("r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3")
    tight = _draw(board, 64)
    tight.save(tmp_path / "tight.png")
    _on_canvas(tight).save(tmp_path / "margin.png")
    answer = '{"board": ["r . b q k b n r"]}'
    plain = Example("plain", tmp_path / "tight.png", "Read the board.", answer)
    boxed = Example(
        "boxed", tmp_path / "margin.png", "Read the board.", answer, board_box=(17, 11, 81, 75)
    )
    uncropped = dataclasses.replace(boxed, board_box=None)
    collator = VLMCollator(processor, SIZE)
    expected, got, whole = (collator([example]) for example in (plain, boxed, uncropped))
    # The model sees exactly the tight board, with the labels still on the answer alone.
    assert torch.equal(got["pixel_values"], expected["pixel_values"])
    assert not torch.equal(whole["pixel_values"], expected["pixel_values"])
    assert torch.equal(got["labels"], expected["labels"])
    labelled = (got["labels"][0] != IGNORE_INDEX).nonzero().flatten()
    assert processor.tokenizer.decode(got["labels"][0, labelled]) == answer + "<|im_end|>"


def _board_examples(tmp_path: Path, count: int) -> list[Example]:
    boards = random_play_boards(count, random.Random(2), max_plies=20)
    examples = []
    for index, board in enumerate(boards):
        _draw(board, SIZE).save(tmp_path / f"{index}.png")
        answer = '{"board": ["r . b q k b n r"]}'
        examples.append(Example(str(index), tmp_path / f"{index}.png", "Read.", answer))
    return examples


def test_augmented_batches_change_only_the_pixels_the_same_way_each_time(tiny, tmp_path):
    _, processor = load_model_and_processor(tiny, device="cpu")
    examples = _board_examples(tmp_path, 4)
    plain = VLMCollator(processor, SIZE)(examples)
    collator = VLMCollator(processor, SIZE, augment_seed=0)
    first, again = collator(examples), collator(examples)
    assert torch.equal(first["pixel_values"], again["pixel_values"])  # a resume sees the same
    assert not torch.equal(first["pixel_values"], plain["pixel_values"])
    assert plain.keys() == first.keys()
    for key in plain.keys() - {"pixel_values"}:
        assert torch.equal(first[key], plain[key]), key
    reseeded = VLMCollator(processor, SIZE, augment_seed=1)(examples)
    assert not torch.equal(reseeded["pixel_values"], first["pixel_values"])
    other_batch = collator(examples[:3])["pixel_values"]
    assert not torch.equal(other_batch, first["pixel_values"][: len(other_batch)])
    unaugmented = collator.without_augmentation()
    assert torch.equal(unaugmented(examples)["pixel_values"], plain["pixel_values"])
    assert collator.augment_seed == 0


def test_validation_batches_are_not_augmented(tiny, tmp_path):
    from transformers import TrainingArguments

    model, processor = load_model_and_processor(tiny, device="cpu")
    examples = _board_examples(tmp_path, 4)
    collator = VLMCollator(processor, SIZE, augment_seed=0)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        use_cpu=True,
        report_to="none",
        per_device_eval_batch_size=4,
        remove_unused_columns=False,
    )
    trainer = VLMTrainer(model=model, args=args, eval_dataset=examples, data_collator=collator)
    validation = next(iter(trainer.get_eval_dataloader()))
    plain = VLMCollator(processor, SIZE)(examples)
    assert torch.equal(validation["pixel_values"], plain["pixel_values"])
    assert trainer.data_collator is collator


def test_board_box_outside_its_image_is_a_bad_sample(tiny, tmp_path):
    _, processor = load_model_and_processor(tiny, device="cpu")
    _draw(chess.Board(), SIZE).save(tmp_path / "board.png")
    example = Example("b", tmp_path / "board.png", "Read.", "x", board_box=(0, 0, 80, 56))
    good, problems = check_examples([example], processor, SIZE, 2048, "train.json")
    assert good == [] and "reaches outside the 56x56 image" in problems[0]["problem"]


def test_run_config_records_how_images_were_prepared(tiny, tmp_path):
    rng = random.Random(1)
    (tmp_path / "data" / "images").mkdir(parents=True)
    records = []
    for index, board in enumerate(random_play_boards(4, rng, max_plies=10)):
        name = f"images/{index}.png"
        _on_canvas(_draw(board, 64)).save(tmp_path / "data" / name)
        look = {"flipped": False, "style": "flat", "board_box": [17, 11, 81, 75]}
        records.append(vlm_record(look, board, name, "compact", f"train_{index}"))
    assert records[0]["board_box"] == [17, 11, 81, 75]
    (tmp_path / "data" / "train.json").write_text(json.dumps(records))
    examples, _ = load_examples(tmp_path / "data" / "train.json", tmp_path / "data", None, None)
    assert examples[0].board_box == (17.0, 11.0, 81.0, 75.0)
    assert board_crop_of(examples) == "label box"
    assert board_crop_of([dataclasses.replace(e, board_box=None) for e in examples]) == "none"
    out = train(_config(tmp_path / "data", tiny, tmp_path / "run", max_steps=1, batch_size=2))
    run = read_run_config(out)
    assert run["board_crop"] == "label box"
    assert "cropped to their labelled board box" in describe_recipe(run)


def test_trainer_loss_on_answer_positions_equals_the_full_loss(tiny, data, tmp_path):
    from transformers import TrainingArguments

    model, processor = load_model_and_processor(tiny, device="cpu")
    examples, _ = load_examples(data / "train.json", data, None, 3)
    batch = VLMCollator(processor, SIZE)(examples)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = VLMTrainer(model=model, args=args)
    with torch.no_grad():
        expected = model(**batch).loss
        learned = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        mean = trainer.compute_loss(model, batch)
        over_batch = trainer.compute_loss(model, batch, num_items_in_batch=2 * learned)
    assert torch.allclose(mean, expected, atol=1e-5)
    assert torch.allclose(over_batch, expected / 2, atol=1e-5)  # part of an accumulated batch


def _square_batch(tiny, tmp_path):
    """A 224 px batch with square labels: one upright and one flipped board."""
    model, processor = load_model_and_processor(tiny, device="cpu", image_size=224)
    board = chess.Board("r3k3/8/8/8/8/8/8/4K2N w - - 0 1")
    examples = []
    for flipped in (False, True):
        path = tmp_path / f"{flipped}.png"
        _draw(board, 224).save(path)
        screen = tuple(screen_symbols(board, flipped))
        examples.append(Example(str(flipped), path, "Read.", "answer", screen))
    return model, processor, VLMCollator(processor, 224, square_loss=True)(examples), examples


def test_square_labels_name_the_symbol_each_visual_token_shows(tiny, tmp_path):
    _, processor, batch, examples = _square_batch(tiny, tmp_path)
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for row, example in enumerate(examples):
        visual = batch["input_ids"][row] == image_id
        assert int(visual.sum()) == 64  # 224 px: one visual token per square
        assert (batch["square_labels"][row, ~visual] == IGNORE_INDEX).all()
        symbols = [tokenizer.decode([i]).strip() for i in batch["square_labels"][row, visual]]
        assert symbols == list(example.screen)
    # Upright, the first visual token shows a8 (a black rook); flipped, it shows h1.
    assert examples[0].screen[0] == "r" and examples[1].screen[0] == "N"
    with pytest.raises(ChessVLMError, match="multiple of 224"):
        VLMCollator(processor, SIZE, square_loss=True)


def test_square_loss_counts_in_training_and_not_in_evaluation(tiny, tmp_path):
    from transformers import TrainingArguments

    model, _, batch, _ = _square_batch(tiny, tmp_path)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = VLMTrainer(model=model, args=args)
    plain = {key: value for key, value in batch.items() if key != "square_labels"}
    with torch.no_grad():
        logits = model(**plain).logits[:, :-1]
        squares, answer = batch["square_labels"][:, :-1], batch["labels"][:, 1:]
        learned = int((answer != IGNORE_INDEX).sum())

        def summed(targets):
            flat = logits.reshape(-1, logits.shape[-1])
            loss = torch.nn.functional.cross_entropy(flat, targets.reshape(-1), reduction="sum")
            return loss / learned

        model.train()
        both = trainer.compute_loss(model, batch, num_items_in_batch=learned)
        model.eval()
        answer_only = trainer.compute_loss(model, batch, num_items_in_batch=learned)
    assert torch.allclose(answer_only, summed(answer), atol=1e-4)
    assert torch.allclose(both, summed(answer) + summed(squares), atol=1e-4)


def test_unreadable_image_names_the_sample(tiny, tmp_path):
    _, processor = load_model_and_processor(tiny, device="cpu")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match="sample 'b7'"):
        VLMCollator(processor, SIZE)([Example("b7", broken, "Read.", "x")])


# ---------------------------------------------------------------------------------------------
# Data loading and defaults


def test_target_rebuilds_prompt_and_answer_from_fen(data):
    examples, target = load_examples(data / "train.json", data, "seed", 2)
    assert target == "seed" and len(examples) == 2
    assert examples[0].prompt == PROMPTS["seed"]
    assert json.loads(examples[0].answer)["pieces"]
    own, own_target = load_examples(data / "train.json", data, None, None)
    assert own_target == "compact" and len(own) == 16
    assert json.loads(own[0].answer)["board"]


def test_eval_loss_asks_the_training_prompt(data, tiny, tmp_path):
    short = tmp_path / "short"
    short.mkdir()
    records = json.loads((data / "train.json").read_text())
    for record in records:
        record["conversations"][0]["value"] = "<image>\nRead the board."
    (short / "train.json").write_text(json.dumps(records))
    (short / "val.json").write_text((data / "val.json").read_text())  # the compact prompt
    _, processor = load_model_and_processor(tiny, device="cpu")
    config = _config(short, tiny, tmp_path / "run", image_base_dir=data)
    train_set, val_set, _, prompt = _datasets(config, processor, SIZE)
    assert prompt == "Read the board."
    assert {example.prompt for example in train_set + val_set} == {prompt}
    assert len(val_set) == 4


def test_defaults_follow_the_kind_of_run(data, tiny, tmp_path):
    lora = resolve_defaults(TrainConfig(data_dir=data, output_dir=tmp_path, model_name=str(tiny)))
    assert (lora.batch_size, lora.gradient_accumulation_steps, lora.learning_rate) == (4, 4, 2e-4)
    scratch = resolve_defaults(
        TrainConfig(data_dir=data, output_dir=tmp_path, model_name=str(tiny), use_lora=False)
    )
    assert (scratch.batch_size, scratch.learning_rate, scratch.warmup_steps) == (32, 2e-3, 100)
    assert scratch.weight_decay == 0.05
    mine = resolve_defaults(_config(data, tiny, tmp_path, use_lora=False, learning_rate=0.1))
    assert mine.learning_rate == 0.1 and mine.batch_size == 4


def test_lora_vision_adapts_the_vision_blocks_only_when_asked(tiny, data, tmp_path):
    from peft import get_peft_model

    for vision in (False, True):
        model, _ = load_model_and_processor(tiny, device="cpu", for_training=True)
        config = _config(data, tiny, tmp_path, lora_vision=vision)
        names = {n for n, _ in get_peft_model(model, lora_config(config)).named_modules()}
        assert any(n.endswith("language_model.layers.0.mlp.down_proj.lora_A") for n in names)
        assert any(n.endswith("visual.blocks.0.attn.qkv.lora_A") for n in names) == vision
        assert not any("patch_embed.proj.lora" in n for n in names)


def test_bad_samples_stop_training_or_are_skipped_and_listed(data, tiny, tmp_path):
    records = json.loads((data / "train.json").read_text())
    records[3]["image"] = "images/missing.png"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.json").write_text(json.dumps(records))
    config = _config(broken, tiny, tmp_path / "run", image_base_dir=data, max_steps=1)
    with pytest.raises(InputError, match=r"train_3.*unreadable image"):
        train(config)
    config.skip_bad_samples = True
    out = train(config)
    skipped = [
        json.loads(line) for line in (out / "skipped_samples.jsonl").read_text().splitlines()
    ]
    assert [entry["id"] for entry in skipped] == ["train_3"]
    assert read_run_config(out)["train_samples"] == 15


def test_answer_longer_than_the_context_is_reported(data, tiny, tmp_path):
    with pytest.raises(InputError, match="over `max_length` 100"):
        train(_config(data, tiny, tmp_path / "run", max_length=100))


# ---------------------------------------------------------------------------------------------
# Training runs


def test_loss_falls_when_training_all_weights(data, tiny, tmp_path):
    out = train(
        _config(data, tiny, tmp_path / "run", use_lora=False, learning_rate=5e-3, max_steps=12)
    )
    losses = _losses(out)
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0
    assert read_run_config(out)["use_lora"] is False
    assert read_run_config(out)["epochs"] == 3.0  # 12 steps of 4 over 16 samples
    model, _ = load_model_and_processor(out, device="cpu")  # a full model folder loads back
    assert model.config.image_token_id == read_tiny_config(tiny)["image_token_id"]


def test_square_loss_trains_and_is_recorded(data, tiny, tmp_path):
    config = _config(data, tiny, tmp_path / "run", use_lora=False, image_size=224, max_steps=2)
    out = train(dataclasses.replace(config, square_loss=True))
    assert read_run_config(out)["training"]["square_loss"] is True
    assert len(_losses(out)) == 2


def test_augmented_training_runs_and_is_recorded(data, tiny, tmp_path):
    config = _config(data, tiny, tmp_path / "run", use_lora=False, max_steps=2, augment=True)
    out = train(config)
    assert len(_losses(out)) == 2
    run_config = read_run_config(out)
    assert run_config["training"]["augment"] is True
    assert "recoloured as the reader's training does" in describe_recipe(run_config)


def read_tiny_config(tiny: Path) -> dict:
    return json.loads((tiny / "config.json").read_text())


@pytest.fixture(scope="module")
def adapter(data, tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    return train(_config(data, tiny, out, learning_rate=2e-2, max_steps=3, eval_steps=3))


def test_adapter_saves_reloads_and_changes_the_output(adapter, tiny):
    assert read_run_config(adapter)["board_crop"] == "none"  # whole images: no record had a box
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "tokenizer_config.json").is_file()
    run = read_run_config(adapter)
    assert run["base_model"] == str(tiny.resolve())
    assert run["target"] == "compact" and run["image_size"] == SIZE
    assert run["prompt"] == PROMPTS["compact"]
    image = _draw(chess.Board(), SIZE)
    base, processor = load_model_and_processor(tiny, device="cpu")
    adapted, _ = load_model_and_processor(adapter, device="cpu")  # base found from the adapter
    assert not torch.allclose(_logits(base, processor, image), _logits(adapted, processor, image))
    again, _ = load_model_and_processor(tiny, adapter=adapter, device="cpu")
    assert torch.equal(_logits(adapted, processor, image), _logits(again, processor, image))
    eval_losses = [r for r in _metrics(adapter) if "eval_loss" in r]
    assert eval_losses and eval_losses[0]["step"] == 3


def test_merge_gives_the_same_output_as_base_plus_adapter(adapter, tmp_path):
    image = _draw(chess.Board(), SIZE)
    adapted, processor = load_model_and_processor(adapter, device="cpu")
    assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    merged, merged_processor = load_model_and_processor(tmp_path / "merged", device="cpu")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert read_run_config(tmp_path / "merged")["image_size"] == SIZE
    expected = _logits(adapted, processor, image)
    assert torch.allclose(_logits(merged, merged_processor, image), expected, atol=1e-5)
    with pytest.raises(ChessVLMError, match="not a LoRA adapter"):
        merge_adapter(tmp_path / "merged", tmp_path / "again")


def test_resume_continues_at_the_saved_step_as_if_never_stopped(data, tiny, tmp_path):
    common = {"use_lora": False, "learning_rate": 5e-3, "lr_scheduler": "constant"}
    straight = train(_config(data, tiny, tmp_path / "straight", max_steps=4, **common))
    stopped = _config(data, tiny, tmp_path / "stopped", max_steps=2, save_steps=2, **common)
    train(stopped)
    log = tmp_path / "stopped" / "metrics.jsonl"
    # Pretend the first part took 1000 s: the resumed part's time must continue from there.
    log.write_text(
        "".join(json.dumps({**r, "elapsed_s": 1000.0}) + "\n" for r in _metrics(log.parent))
    )
    with pytest.raises(ChessVLMError, match="`resume`"):
        train(_config(data, tiny, tmp_path / "stopped", max_steps=4, **common))
    resumed = train(_config(data, tiny, tmp_path / "stopped", max_steps=4, resume=True, **common))
    records = [r for r in _metrics(resumed) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[2]["elapsed_s"] >= 1000.0  # counts on from the first part, not from 0
    assert read_run_config(resumed)["step"] == 4
    assert _losses(resumed) == pytest.approx(_losses(straight), abs=1e-4)


def test_time_budget_stops_with_a_checkpoint(data, tiny, tmp_path):
    out = train(_config(data, tiny, tmp_path / "run", max_minutes=1e-6, max_steps=50))
    assert read_run_config(out)["step"] == 1
    assert read_run_config(out / "checkpoint-1")["step"] == 1


def test_time_budget_counts_earlier_training_when_resumed(data, tiny, tmp_path):
    first = _config(data, tiny, tmp_path / "run", max_steps=2, save_steps=2, use_lora=False)
    train(first)
    log = tmp_path / "run" / "metrics.jsonl"
    log.write_text(  # pretend the first part used a whole 10-minute budget
        "".join(json.dumps({**r, "elapsed_s": 600.0}) + "\n" for r in _metrics(log.parent))
    )
    resumed = dataclasses.replace(first, max_steps=50, max_minutes=10, resume=True)
    assert read_run_config(train(resumed))["step"] == 3  # one step, then the budget is spent


def test_clock_schedule_warms_up_holds_then_decays_to_zero(tmp_path):
    budget = TimeBudget(10, tmp_path)
    by_steps, by_time = budget.lr_factor(4, 0.25), budget.lr_factor(0.1, 0.25)
    budget.fraction = 0.0
    assert [by_steps(step) for step in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert by_time(0) == 0.0
    for fraction, expected in ((0.05, 1.0), (0.5, 1.0), (0.75, 1.0), (0.875, 0.5), (1.0, 0.0)):
        budget.fraction = fraction
        assert by_steps(100) == pytest.approx(expected)
    budget.fraction = 0.05
    assert by_time(100) == pytest.approx(0.5)  # a warmup under 1 is a share of the budget


def test_clock_schedule_drives_the_learning_rate(data, tiny, tmp_path):
    config = _config(data, tiny, tmp_path / "run", use_lora=False, max_steps=6)
    with pytest.raises(ChessVLMError, match="`max_minutes`"):
        train(dataclasses.replace(config, lr_decay_fraction=0.5))
    out = train(dataclasses.replace(config, max_minutes=1, lr_decay_fraction=1.0))
    rates = [r["learning_rate"] for r in _metrics(out) if "learning_rate" in r]
    assert len(rates) == 6 and rates == sorted(rates, reverse=True)  # decaying on the clock
    assert 0 < rates[-1] < rates[0]
    assert read_run_config(out)["training"]["lr_decay_fraction"] == 1.0


def test_recipe_says_how_a_model_was_trained():
    knobs = {"batch_size": 32, "gradient_accumulation_steps": 2, "learning_rate": 0.002}
    run = {"preset": "small", "use_lora": False, "prompt": "Read the board.", "training": knobs}
    assert describe_recipe(run) == (
        "all weights of the small preset, from scratch; batch 64, lr 0.002; loss on the answer "
        "only; prompt 'Read the board.'"
    )
    knobs.update(lr_decay_fraction=0.2, square_loss=True)
    run.update(use_lora=True, preset=None, prompt="x" * 100)
    assert describe_recipe(run) == (
        "LoRA; batch 64, lr 0.002; flat, then annealed to 0 over the last 20% of the time "
        f"budget; square loss on the visual tokens; loss on the answer only; prompt '{'x' * 37}...'"
    )
    run.update(family="qwen3_vl")
    assert describe_recipe(run).startswith("LoRA on Qwen3-VL; batch 64")
    run.update(use_lora=False, preset="small", family="smolvlm")
    assert describe_recipe(run).startswith("all weights of the small SmolVLM preset, from scratch")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_run_with_gloo(data, tiny, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(_free_port()), str(Path(sys.executable).parent / "chessvlm"), "train",
        "--data_dir", str(data), "--output_dir", str(out), "--model_name", str(tiny),
        "--full", "--batch_size", "4", "--num_epochs", "1", "--warmup_steps", "0",
        "--logging_steps", "1",
        # The clock-based schedule shares the slowest process's clock across processes.
        "--max_minutes", "30", "--lr_decay_fraction", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    # 16 samples, 4 per process, 2 processes: 2 steps (one process alone would take 4).
    assert read_run_config(out)["step"] == 2
    assert len(_losses(out)) == 2
    assert (out / "model.safetensors").is_file()


def test_a_budgeted_run_shows_minutes_against_its_budget_and_tidy_log_lines(tmp_path, capsys):
    from types import SimpleNamespace

    budget = TimeBudget(10, tmp_path)
    progress = TrainingProgress(budget)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=62500, global_step=0)
    progress.on_train_begin(None, state, None)
    budget.fraction, state.global_step = 0.32, 120
    progress.on_step_end(None, state, None)
    assert (progress.bar.n, progress.bar.total) == (3.2, 10)
    assert "3.2/10.0 min" in str(progress.bar) and "step 120" in str(progress.bar)
    assert "62500" not in str(progress.bar)
    logs = {"loss": 0.831234, "learning_rate": 2e-4, "epoch": 0.45, "total_flos": 1e9}
    progress.on_log(None, state, None, logs=logs)
    progress.on_train_end(None, state, None)
    assert "step 120  loss 0.8312  learning_rate 2.0e-04  epoch 0.45  3.2 of 10 min\n" in (
        capsys.readouterr().out
    )


def test_a_run_without_budget_counts_steps():
    from types import SimpleNamespace

    progress = TrainingProgress(None)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=50, global_step=10)
    progress.on_train_begin(None, state, None)
    state.global_step = 12
    progress.on_step_end(None, state, None)
    assert (progress.bar.n, progress.bar.total) == (12, 50)
    assert progress.log_line(12, {"loss": 1.5}) == "step 12  loss 1.5"
