"""Every family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM) through the same pipeline, tiny preset:
build, label masking, square-aligned grids with the square and routing losses, LoRA and full
training, save and load, batched generation, zero-shot and trained evaluation, merge."""

import json
from pathlib import Path

import chess
import pytest
import torch
from test_evaluation import make_test_set
from test_training import _draw, make_vlm_dataset
from transformers import TrainingArguments

from chessvlm.cli import main
from chessvlm.datasets import PROMPTS
from chessvlm.errors import ChessVLMError
from chessvlm.families import (
    FAMILIES,
    family_of_config,
    family_of_processor,
    get_family,
    image_tokens,
    preset_image_size,
    token_pixels,
)
from chessvlm.generation import generate_answers
from chessvlm.modeling import (
    PRESETS,
    build_processor,
    chat_text,
    init_model,
    learned_text,
    load_model_and_processor,
    pinned_image_size,
    prepare_image,
    read_run_config,
)
from chessvlm.positions import answer_text, screen_symbols
from chessvlm.tokenizer import build_chess_tokenizer
from chessvlm.training import (
    IGNORE_INDEX,
    Example,
    TrainConfig,
    VLMCollator,
    VLMTrainer,
    lora_config,
    train,
)

NAMES = tuple(FAMILIES)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_vlm_dataset(tmp_path_factory.mktemp("data"), train=8, val=2)


@pytest.fixture(scope="module", params=NAMES)
def tiny(request, tmp_path_factory) -> Path:
    return init_model("tiny", tmp_path_factory.mktemp(request.param) / "tiny", family=request.param)


def _examples(folder: Path, count: int = 2) -> list[Example]:
    boards = [chess.Board(), chess.Board("8/8/3k4/8/4N3/8/2K5/8 w - - 0 1")]
    examples = []
    for index in range(count):
        board, flipped = boards[index % 2], index % 2 == 1
        path = folder / f"{index}.png"
        _draw(board, 96 + 8 * index).save(path)
        screen = tuple(screen_symbols(board, flipped))
        answer = answer_text(board, "compact")
        examples.append(Example(str(index), path, PROMPTS["compact"], answer, screen, flipped))
    return examples


def test_tiny_builds_load_as_their_family_with_its_template(tiny):
    model, processor = load_model_and_processor(tiny, device="cpu")
    family = get_family(read_run_config(tiny)["family"])
    assert family_of_processor(processor) is family
    assert model.config.model_type in family.model_types
    size = pinned_image_size(processor)
    assert size == preset_image_size(PRESETS["tiny"], family) == 2 * family.token_pixels
    text = chat_text(processor, "Read.", "ANSWER")
    assert (
        text == chat_text(processor, "Read.") + family.answer_prefix + "ANSWER" + family.end_of_turn
    )


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_and_default_size_puts_whole_tokens_on_every_square(name):
    family = get_family(name)
    processor = build_processor(build_chess_tokenizer(name), 8 * family.token_pixels, name)
    assert token_pixels(processor) == family.token_pixels
    size = preset_image_size(PRESETS["small"], family)
    assert size % family.board_pixels == 0
    assert image_tokens(processor, size) == 64  # the small preset: one token per square
    with pytest.raises(ChessVLMError, match=f"multiple of {family.token_pixels} px"):
        image_tokens(processor, family.token_pixels + 1)


def test_labels_mask_everything_but_the_answer(tiny, tmp_path):
    _, processor = load_model_and_processor(tiny, device="cpu")
    examples = _examples(tmp_path)
    batch = VLMCollator(processor, pinned_image_size(processor))(examples)
    tokenizer = processor.tokenizer
    for row, example in enumerate(examples):
        labelled = (batch["labels"][row] != IGNORE_INDEX).nonzero().flatten()
        length = int(batch["attention_mask"][row].sum())
        assert labelled.tolist() == list(range(length - len(labelled), length))
        assert tokenizer.decode(batch["labels"][row, labelled]) == learned_text(
            processor, example.answer
        )
        images = batch["input_ids"][row] == processor.image_token_id
        assert int(images.sum()) == 4 and not (batch["labels"][row, images] != -100).any()


def test_square_and_routing_losses_on_a_square_aligned_grid(tiny, tmp_path):
    family = get_family(read_run_config(tiny)["family"])
    model, processor = load_model_and_processor(tiny, device="cpu", image_size=family.board_pixels)
    collator = VLMCollator(processor, family.board_pixels, square_loss=True, routing_loss=True)
    examples = _examples(tmp_path)
    batch = collator(examples)
    tokenizer = processor.tokenizer
    for row, example in enumerate(examples):
        visual = batch["input_ids"][row] == processor.image_token_id
        assert int(visual.sum()) == 64
        symbols = [tokenizer.decode([i]).strip() for i in batch["square_labels"][row, visual]]
        assert symbols == list(example.screen)
        # Each routed query sits just before its square's token in the answer.
        targets = batch["input_ids"][row, batch["route_queries"][row] + 1]
        fen_squares = [s for rank in json.loads(example.answer)["board"] for s in rank.split()]
        assert [tokenizer.decode([t]).strip() for t in targets] == fen_squares
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    model.train()
    loss = VLMTrainer(model=model, args=args).compute_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    with pytest.raises(ChessVLMError, match=f"for {family.title}"):
        VLMCollator(processor, 2 * family.token_pixels, square_loss=True)


def test_lora_targets_only_the_language_model_unless_vision_is_asked(tiny):
    from peft import get_peft_model

    family = read_run_config(tiny)["family"]
    config = TrainConfig(data_dir=Path("."), output_dir=Path("."))
    for vision in (False, True):
        model, _ = load_model_and_processor(tiny, device="cpu", for_training=True)
        lora = lora_config(TrainConfig(**{**vars(config), "lora_vision": vision}), family)
        adapted = {
            n for n, m in get_peft_model(model, lora).named_modules() if hasattr(m, "lora_A")
        }
        text = {n for n in adapted if FAMILIES[family].language_model in n}
        assert len(text) == 7 * PRESETS["tiny"].layers  # q,k,v,o,gate,up,down of each layer
        assert bool(adapted - text) == vision


def test_train_save_load_generate_evaluate_and_merge(tiny, data, tmp_path):
    common = {
        "data_dir": data,
        "model_name": str(tiny),
        "batch_size": 4,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 0,
        "max_steps": 2,
        "logging_steps": 1,
        "eval_steps": 2,
        "save_steps": 100,
    }
    adapter = train(TrainConfig(output_dir=tmp_path / "lora", learning_rate=2e-2, **common))
    full = train(TrainConfig(output_dir=tmp_path / "full", use_lora=False, **common))
    family = read_run_config(tiny)["family"]
    for run in (adapter, full):
        assert read_run_config(run)["family"] == family and read_run_config(run)["step"] == 2
    assert (adapter / "adapter_config.json").is_file()
    assert not (full / "adapter_config.json").exists()

    # Batched generation equals one board at a time (left padding).
    model, processor = load_model_and_processor(adapter, device="cpu")
    size = pinned_image_size(processor)
    images = [_draw(chess.Board(), size), _draw(chess.Board(None), 3 * size)]
    options = {"max_new_tokens": 6, "image_size": size}
    batched = generate_answers(
        model, processor, images, PROMPTS["compact"], batch_size=2, **options
    )
    single = generate_answers(model, processor, images, PROMPTS["compact"], batch_size=1, **options)
    assert [g.answer for g in batched] == [g.answer for g in single]
    assert all(g.answer_tokens == 6 for g in batched)
    constrained = generate_answers(
        model, processor, images[:1], PROMPTS["compact"], batch_size=1,
        max_new_tokens=4, constrained_target="compact", image_size=size,
    )  # fmt: skip
    assert constrained[0].answer.startswith('{"')

    # Zero-shot (the base model, no adapter) and the adapter, through the evaluate command.
    test_data = make_test_set(tmp_path / "test", count=3)
    for name, model_path in (("zero_shot", tiny), ("lora", adapter)):
        output = tmp_path / f"{name}.json"
        arguments = ["evaluate", "--model_path", str(model_path), "--test_data", str(test_data)]
        arguments += ["--image_base_dir", str(test_data.parent), "--output", str(output)]
        assert main([*arguments, "--max_new_tokens", "4", "--batch_size", "2"]) == 0
        metrics = json.loads(output.read_text())
        assert metrics["n_samples"] == 3 and 0 <= metrics["per_square_accuracy"] <= 1

    # Merging gives the adapter's outputs from plain weights.
    assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    merged, merged_processor = load_model_and_processor(tmp_path / "merged", device="cpu")
    inputs = merged_processor(
        text=[chat_text(merged_processor, PROMPTS["compact"])],
        images=[[prepare_image(images[0], size)]],
        return_tensors="pt",
    )
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, model(**inputs).logits, atol=1e-5)


def test_idefics3_smolvlm_reads_boards_like_smolvlm2(tmp_path):
    # SmolVLM-256M/500M-Instruct are `idefics3` models with Idefics3's processor.
    from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

    from chessvlm.families import pin_image_size, scratch_config

    tokenizer = build_chess_tokenizer("smolvlm")
    settings = scratch_config(FAMILIES["smolvlm"], PRESETS["tiny"], tokenizer).to_dict()
    config = Idefics3Config(
        **{k: v for k, v in settings.items() if k in ("text_config", "vision_config")},
        scale_factor=settings["scale_factor"],
        image_token_id=settings["image_token_id"],
    )
    assert family_of_config(config).name == "smolvlm"
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(max_image_size={"longest_edge": 56}),
        tokenizer=tokenizer,
        image_seq_len=4,
        chat_template=tokenizer.chat_template,
    )
    pin_image_size(processor, 224)
    assert pinned_image_size(processor) == 224 and image_tokens(processor, 224) == 64
    batch = VLMCollator(processor, 224, square_loss=True)(_examples(tmp_path, 1))
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 64
    assert batch["pixel_values"].shape[-2:] == (224, 224)  # one image, no tiles
