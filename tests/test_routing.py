"""The routing loss: where each answer square is, where the board shows it, and the head's loss."""

import dataclasses
import json

import chess
import pytest
import torch
from test_training import _config, _draw, _losses

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.modeling import init_model, load_model_and_processor, read_run_config
from chessvlm.positions import answer_text, screen_symbols
from chessvlm.routing import ROUTING_HEAD, RoutingProbe, answer_square_tokens
from chessvlm.training import (
    IGNORE_INDEX,
    Example,
    VLMCollator,
    VLMTrainer,
    _datasets,
    describe_recipe,
    train,
)

# Every square of the first rank differs, so a wrong file or a wrong orientation shows.
BOARD = chess.Board("rnbqk3/pp6/8/8/8/8/6PP/3QKBNR w - - 0 1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return init_model("tiny", tmp_path_factory.mktemp("model") / "tiny")


def _routed_batch(tiny, folder, size: int):
    """A batch with square labels and routes: the same board upright and flipped."""
    model, processor = load_model_and_processor(tiny, device="cpu", image_size=size)
    examples = []
    for flipped in (False, True):
        path = folder / f"{flipped}.png"
        _draw(BOARD, size).save(path)
        screen = tuple(screen_symbols(BOARD, flipped))
        answer = answer_text(BOARD, "compact")
        examples.append(Example(str(flipped), path, "Read.", answer, screen, flipped))
    collator = VLMCollator(processor, size, square_loss=True, routing_loss=True)
    return model, processor, collator(examples)


@pytest.fixture(scope="module")
def routed(tiny, tmp_path_factory):
    """At 224 px: one visual token a square."""
    return _routed_batch(tiny, tmp_path_factory.mktemp("boards"), 224)


def test_answer_square_tokens_hold_the_squares_in_fen_order(tiny):
    _, processor = load_model_and_processor(tiny, device="cpu")
    tokenizer = processor.tokenizer
    answer = answer_text(BOARD, "compact")
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    tokens = answer_square_tokens(tokenizer, answer)
    symbols = [tokenizer.decode([ids[index]]).strip() for index in tokens]
    in_fen_order = "".join(json.loads(answer)["board"]).replace(" ", "")
    assert symbols == list(in_fen_order)
    assert len(set(tokens)) == 64
    with pytest.raises(ChessVLMError, match="compact answers"):
        answer_square_tokens(tokenizer, '{"board": ["r n b"]}')


@pytest.mark.parametrize("size, per_square", [(224, 1), (448, 4)])
def test_routes_point_from_each_answer_square_to_the_visual_tokens_showing_it(
    tiny, tmp_path, size, per_square
):
    _, processor, batch = _routed_batch(tiny, tmp_path, size)
    decode = processor.tokenizer.decode
    for row in range(2):
        queries, keys = batch["route_queries"][row], batch["route_keys"][row]
        assert keys.shape == (64, per_square)
        # The square the answer writes next is the one its visual tokens are taught to name.
        written = [decode([batch["input_ids"][row, query + 1]]).strip() for query in queries]
        for token in range(per_square):
            shown = [decode([batch["square_labels"][row, key]]).strip() for key in keys[:, token]]
            assert written == shown
        assert (batch["labels"][row, queries + 1] != IGNORE_INDEX).all()
    # Flipped, a8 (the answer's first square) is shown where h1 is upright, and so on.
    upright, flipped = batch["route_keys"][0], batch["route_keys"][1]
    assert torch.equal(flipped, upright.flip(0))
    assert len(set(upright.flatten().tolist())) == 64 * per_square


def test_probe_reads_the_attention_the_model_computes(routed):
    model, _, batch = routed
    model.set_attn_implementation("eager")
    inputs = {
        key: value
        for key, value in batch.items()
        if key not in ("labels", "square_labels", "route_queries", "route_keys")
    }
    try:
        with torch.no_grad(), RoutingProbe(model) as probe:
            attentions = model(**inputs, output_attentions=True).attentions[-1]
        mine = probe.log_attention(batch["route_queries"], batch["attention_mask"]).exp()
    finally:
        model.set_attn_implementation("sdpa")
    rows = torch.arange(2)[:, None]
    theirs = attentions[:, ROUTING_HEAD][rows, batch["route_queries"]]
    assert torch.allclose(mine, theirs, atol=1e-5)
    expected = -theirs.gather(-1, batch["route_keys"]).sum(-1).log().mean()
    with torch.no_grad():
        loss = probe.loss(batch["route_queries"], batch["route_keys"], batch["attention_mask"])
    assert torch.allclose(loss, expected, atol=1e-4)


def test_routing_loss_counts_in_training_and_not_in_evaluation(routed, tmp_path):
    from transformers import TrainingArguments

    model, _, batch = routed
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = VLMTrainer(model=model, args=args)
    unrouted = {key: value for key, value in batch.items() if not key.startswith("route_")}
    with torch.no_grad():
        model.train()
        both = trainer.compute_loss(model, batch)
        without = trainer.compute_loss(model, unrouted)
        with RoutingProbe(model) as probe:
            model(**{k: v for k, v in unrouted.items() if k not in ("labels", "square_labels")})
        routing = probe.loss(batch["route_queries"], batch["route_keys"], batch["attention_mask"])
        model.eval()
        evaluated = trainer.compute_loss(model, batch)
        evaluated_without = trainer.compute_loss(model, unrouted)
    assert routing > 0
    assert torch.allclose(both, without + routing, atol=1e-4)
    assert torch.allclose(evaluated, evaluated_without)


def test_routing_loss_trains_and_is_recorded(tiny, tmp_path):
    from test_training import make_vlm_dataset

    data = make_vlm_dataset(tmp_path / "data", train=8, val=2)
    config = _config(data, tiny, tmp_path / "run", use_lora=False, image_size=224, max_steps=2)
    out = train(dataclasses.replace(config, square_loss=True, routing_loss=True))
    run = read_run_config(out)
    assert run["training"]["routing_loss"] is True
    assert "routing loss" in describe_recipe(run)
    assert len(_losses(out)) == 2
    _, processor = load_model_and_processor(tiny, device="cpu", image_size=224)
    seed = dataclasses.replace(config, routing_loss=True, target="seed")
    with pytest.raises(InputError, match="compact answers"):
        _datasets(seed, processor, 224)
    with pytest.raises(ChessVLMError, match="multiple of 224"):
        VLMCollator(processor, 56, routing_loss=True)
