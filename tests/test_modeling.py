"""Building and loading Qwen2-VL models: presets, processor image grid, errors, run configs."""

import json

import pytest
import torch
from PIL import Image

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.modeling import (
    PRESETS,
    build_processor,
    chat_text,
    hf_token,
    image_size_for,
    init_model,
    load_model_and_processor,
    prepare_image,
    qwen2_vl_config,
    read_run_config,
)
from chessvlm.tokenizer import build_chess_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model("tiny", tmp_path_factory.mktemp("models") / "tiny")


def _inputs(processor, size: int, prompt: str = "Read the board."):
    image = prepare_image(Image.new("RGB", (size + 17, size + 17), "white"), size)
    return processor(text=[chat_text(processor, prompt)], images=[image], return_tensors="pt")


def test_tiny_model_loads_like_a_hub_model(tiny):
    model, processor = load_model_and_processor(tiny, device="cpu")
    assert not model.training
    assert model.dtype == torch.float32
    tokenizer = processor.tokenizer
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.text_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.config.text_config.vocab_size >= len(tokenizer)
    inputs = _inputs(processor, PRESETS["tiny"].image_size)
    assert "mm_token_type_ids" in inputs
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(logits).all()


def test_board_size_sets_the_visual_token_grid():
    processor = build_processor(build_chess_tokenizer(), 224)
    inputs = _inputs(processor, 224)
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]]  # 14 px patches
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_id).sum()) == 64  # one token per square
    assert int(inputs["mm_token_type_ids"].sum()) == 64


def test_small_preset_rotary_positions_tell_board_squares_apart():
    # M-RoPE gives the width axis the lowest frequencies: at Qwen2's theta of 1e6 and a
    # 32-dim head they turn by under 0.002 rad across a board, leaving files indistinguishable.
    config = qwen2_vl_config(PRESETS["small"], build_chess_tokenizer()).text_config
    head = config.hidden_size // config.num_attention_heads
    theta = config.rope_parameters["rope_theta"]
    frequencies = theta ** (-torch.arange(0, head, 2).float() / head)
    _, height, width = torch.split(frequencies, config.rope_parameters["mrope_section"])
    for axis in (height, width):
        assert float(axis.max()) * 7 > 1.0  # radians between the first and last file or rank


def test_image_size_from_run_config_and_override(tiny):
    assert image_size_for(tiny) == PRESETS["tiny"].image_size
    assert image_size_for("Qwen/Qwen2-VL-2B-Instruct") == 448
    _, processor = load_model_and_processor(tiny, device="cpu", image_size=112)
    assert _inputs(processor, 112)["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_bad_image_size_is_refused():
    with pytest.raises(ChessVLMError, match="multiple of 28"):
        build_processor(build_chess_tokenizer(), 100)


def test_init_model_is_rerunnable_but_protects_other_folders(tiny, tmp_path):
    assert init_model("tiny", tiny) == tiny
    with pytest.raises(ChessVLMError, match="exists and is not"):
        init_model("small", tiny)
    with pytest.raises(ChessVLMError, match="unknown preset"):
        init_model("huge", tmp_path / "huge")


def test_chat_text_training_extends_generation_prompt():
    processor = build_processor(build_chess_tokenizer(), 56)
    prompt = chat_text(processor, "Read.")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>Read.<|im_end|>" in prompt
    assert chat_text(processor, "Read.", '{"board": []}') == prompt + '{"board": []}<|im_end|>'


def test_unreachable_hub_model_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ChessVLMError, match="local-dir") as error:
        load_model_and_processor("Qwen/Qwen2-VL-2B-Instruct", device="cpu")
    assert "init-model" in str(error.value)


def test_folder_that_is_not_a_model_is_named(tmp_path):
    with pytest.raises(ChessVLMError, match="hub layout"):
        load_model_and_processor(tmp_path, device="cpu")


def test_hub_token_from_either_variable(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGINGFACE_TOKEN", raising=False)
    assert hf_token() is None
    monkeypatch.setenv("HUGGINGFACE_TOKEN", "hf_b")
    assert hf_token() == "hf_b"
    monkeypatch.setenv("HF_TOKEN", "hf_a")
    assert hf_token() == "hf_a"


def test_read_run_config(tmp_path):
    assert read_run_config(tmp_path) == {}
    (tmp_path / "chessvlm_config.json").write_text(json.dumps({"target": "compact"}))
    assert read_run_config(tmp_path) == {"target": "compact"}
    (tmp_path / "chessvlm_config.json").write_text("[1, 2")
    with pytest.raises(InputError, match=r"chessvlm_config\.json"):
        read_run_config(tmp_path)
