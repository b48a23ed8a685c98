"""Greedy batched generation and grammar-constrained decoding, on the tiny preset model."""

import random

import chess
import pytest
from boards import random_play_boards
from PIL import Image
from scrambled_model import scramble

from chessvlm.generation import (
    DEFAULT_MAX_NEW_TOKENS,
    compiled_grammar,
    default_max_new_tokens,
    generate_answers,
    stop_token_ids,
)
from chessvlm.modeling import chat_text, init_model, load_model_and_processor
from chessvlm.positions import answer_text, parse_answer
from chessvlm.tokenizer import build_qwen2_tokenizer

PROMPT = "Read the board."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = init_model("tiny", tmp_path_factory.mktemp("models") / "tiny")
    model, processor = load_model_and_processor(folder, device="cpu")
    return scramble(model), processor


def noise_images(count, seed=0):
    """Noise images, every other one twice as wide, so a batch mixes prompt lengths."""
    return [
        Image.effect_noise((56 * (1 + i % 2), 56), 40 + seed + 9 * i).convert("RGB")
        for i in range(count)
    ]


def random_boards(count, seed=0):
    fixed = [chess.Board(), chess.Board("r3k2r/8/8/3pP3/8/8/8/R3K2R w KQkq d6 0 1")]
    return fixed + random_play_boards(count - len(fixed), random.Random(seed))


def test_batch_equals_one_by_one_with_left_padding(tiny):
    model, processor = tiny
    images = noise_images(5)
    text = chat_text(processor, PROMPT)
    lengths = {
        processor(text=[text], images=[image], return_tensors="pt")["input_ids"].shape[1]
        for image in images
    }
    assert len(lengths) == 2  # the wide images give more visual tokens: the batch is padded

    batched = generate_answers(model, processor, images, PROMPT, batch_size=5, max_new_tokens=24)
    single = [
        generate_answers(model, processor, [image], PROMPT, batch_size=1, max_new_tokens=24)[0]
        for image in images
    ]

    assert [g.answer for g in batched] == [g.answer for g in single]
    assert [g.answer_tokens for g in batched] == [g.answer_tokens for g in single]
    assert len({g.answer for g in batched}) == len(images)  # non-trivial, image-dependent
    assert all(g.seconds > 0 for g in batched)


def test_batches_split_and_keep_order(tiny):
    model, processor = tiny
    images = noise_images(5, seed=3)
    whole = generate_answers(model, processor, images, PROMPT, batch_size=5, max_new_tokens=12)
    split = generate_answers(model, processor, images, PROMPT, batch_size=2, max_new_tokens=12)
    assert [g.answer for g in split] == [g.answer for g in whole]


def test_image_size_resizes_like_training(tiny):
    model, processor = tiny
    image = noise_images(1, seed=5)[0].resize((200, 200))
    resized = image.resize((56, 56), Image.Resampling.BICUBIC)
    asked = generate_answers(
        model, processor, [image], PROMPT, batch_size=1, max_new_tokens=12, image_size=56
    )
    direct = generate_answers(model, processor, [resized], PROMPT, batch_size=1, max_new_tokens=12)
    assert asked[0].answer == direct[0].answer


def test_answer_cut_at_max_new_tokens_is_reported(tiny):
    model, processor = tiny
    [generation] = generate_answers(
        model, processor, noise_images(1), PROMPT, batch_size=1, max_new_tokens=5
    )
    assert generation.truncated
    assert generation.answer_tokens == 5


def test_constrained_compact_answers_always_parse(tiny):
    model, processor = tiny
    images = noise_images(4, seed=7)
    max_new_tokens = default_max_new_tokens("compact", constrained=True)
    constrained = generate_answers(
        model,
        processor,
        images,
        PROMPT,
        batch_size=4,
        max_new_tokens=max_new_tokens,
        constrained_target="compact",
    )
    free = generate_answers(
        model, processor, images, PROMPT, batch_size=4, max_new_tokens=max_new_tokens
    )
    for generation in constrained:
        parsed = parse_answer(generation.answer, "compact")
        assert not generation.truncated
        assert parsed.valid_json and parsed.board is not None, generation.answer
    # The same model unconstrained writes no JSON at all: the grammar does the work.
    assert not any(parse_answer(g.answer, "compact").valid_json for g in free)


def test_constrained_seed_answers_parse_when_complete(tiny):
    model, processor = tiny
    generations = generate_answers(
        model,
        processor,
        noise_images(4, seed=11),
        PROMPT,
        batch_size=4,
        max_new_tokens=500,
        constrained_target="seed",
    )
    complete = [g for g in generations if not g.truncated]
    assert complete
    for generation in complete:
        parsed = parse_answer(generation.answer, "seed")
        assert parsed.valid_json and parsed.board is not None, generation.answer


@pytest.mark.parametrize("target", ["compact", "seed"])
def test_grammar_accepts_every_training_answer_and_nothing_else(tiny, target):
    import xgrammar as xgr

    model, processor = tiny
    tokenizer = processor.tokenizer
    stops = tuple(stop_token_ids(model, tokenizer))
    vocab_size = model.get_output_embeddings().weight.shape[0]
    grammar = compiled_grammar(tokenizer, vocab_size, stops, target)
    for board in random_boards(30):
        matcher = xgr.GrammarMatcher(grammar)
        tokens = tokenizer.encode(answer_text(board, target))
        assert all(matcher.accept_token(token) for token in tokens), board.fen()
        assert matcher.accept_token(stops[0])

    good = answer_text(chess.Board(), target)
    bad = {
        "compact": [
            good.replace('"r n b q k b n r", ', ""),  # 7 ranks
            good.replace("r n b", "r x b", 1),  # unknown symbol
            good.replace('". . . . . . . ."', '". . . . . . ."', 1),  # short rank
            good.replace('"board": ', '"board":'),  # not the training layout
        ],
        "seed": [
            good.replace('"color": "white"', '"color": "black"', 1),  # inconsistent piece
            good.replace('"square": "a1"', '"square": "i9"'),
            good.replace('"to_move": "white"', '"to_move": "red"'),
            good.replace('"material_balance": 0', '"material_balance": 0,\n  "extra": 1'),
        ],
    }[target]
    for text in bad:
        assert text != good
        matcher = xgr.GrammarMatcher(grammar)
        accepted = matcher.accept_string(text) and matcher.accept_token(stops[0])
        assert not accepted, text


def test_default_lengths_fit_the_longest_answers_with_qwen2s_tokenizer():
    tokenizer = build_qwen2_tokenizer()
    start = chess.Board()  # 32 pieces: the longest seed answer
    compact_tokens = len(tokenizer.encode(answer_text(start, "compact")))
    seed_tokens = len(tokenizer.encode(answer_text(start, "seed")))
    assert compact_tokens == 79
    assert compact_tokens < DEFAULT_MAX_NEW_TOKENS["compact"] < 1.5 * compact_tokens
    assert seed_tokens < DEFAULT_MAX_NEW_TOKENS["seed"] < 1.2 * seed_tokens
    assert (
        default_max_new_tokens("compact", constrained=True)
        == len(answer_text(start, "compact")) + 1
    )
