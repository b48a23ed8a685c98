"""Routing loss: teach one attention head where each answer square is on the board image.

A small Qwen2-VL trained from scratch learns to see the squares early (the square loss makes
every visual token name its square's symbol within a few hundred steps) but learns late, and
all at once, which visual token each square of the answer has to read: M-RoPE gives the
answer only relative positions to find it by, and a flipped board reverses the order. The
routing loss says it directly. At the token just before board square k in the answer (the
one whose output predicts square k), head 0 of the last decoder layer is trained to put its
attention on the visual tokens that show square k. Training only, like the square loss: it
adds no weights, and the model saves, loads and generates exactly as before.
"""

from __future__ import annotations

import json
import sys
from bisect import bisect_right
from typing import Any

from chessvlm.errors import ChessVLMError

# The head of the last decoder layer that the routing loss trains; the others stay free.
ROUTING_HEAD = 0


def answer_square_tokens(tokenizer: Any, answer: str, prefix: str = "") -> list[int]:
    """Index, among the tokens of `prefix + answer`, of the token holding each of the 64 squares.

    `answer` is a compact answer (`{"board": ["r n b q k b n r", ...]}`), whose squares come
    in FEN order (a8 ... h8, a7 ... h1); `prefix` is the family's text before it
    (`families.Family.answer_prefix`).
    """
    encoded = tokenizer(prefix + answer, add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in encoded["offset_mapping"]]
    return [bisect_right(starts, len(prefix) + offset) - 1 for offset in _square_offsets(answer)]


def _square_offsets(answer: str) -> list[int]:
    """Character offset of each square symbol in a compact answer, in FEN order."""
    from chessvlm.positions import AnswerError, answer_text, board_from_compact

    try:
        board = board_from_compact(json.loads(answer))
    except (ValueError, TypeError, KeyError, AnswerError):
        board = None
    # Only the exact text training writes has the layout the offsets below rely on.
    if board is None or answer_text(board, "compact") != answer:
        raise ChessVLMError(f"the routing loss needs compact answers; got {answer[:60]!r}")
    offsets: list[int] = []
    cursor = 0
    for row in json.loads(answer)["board"]:
        cursor = answer.index(json.dumps(row), cursor) + 1
        offsets.extend(cursor + 2 * file for file in range(8))
        cursor += len(row)
    return offsets


class RoutingProbe:
    """While active, keeps the input of the last decoder layer's attention for `loss`.

    A forward pre-hook records the (normalised) hidden states and the rotary cos/sin that
    the layer receives (M-RoPE already folded in for the Qwen families, 1-D RoPE for
    SmolVLM's Llama decoder); `loss` recomputes head `ROUTING_HEAD`'s attention from them at
    the few query positions that need it, with the layer's own projections, query/key norms
    (Qwen3-VL) and its module's rotary code.
    """

    def __init__(self, model: Any) -> None:
        layers = getattr(model.get_decoder(), "layers", None)
        attention = getattr(layers[-1], "self_attn", None) if layers else None
        if attention is None or not hasattr(attention, "q_proj"):
            raise ChessVLMError(
                f"the routing loss needs a decoder of self-attention layers; "
                f"{type(model).__name__} has none it can probe"
            )
        self.attention = attention
        self.rotate = sys.modules[type(attention).__module__].apply_rotary_pos_emb
        self.inputs: dict[str, Any] = {}
        self._handle = None

    def __enter__(self) -> RoutingProbe:
        self.inputs = {}
        self._handle = self.attention.register_forward_pre_hook(self._keep, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def _keep(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.inputs = {
            "hidden": kwargs["hidden_states"] if "hidden_states" in kwargs else args[0],
            "rotary": kwargs["position_embeddings"],
        }

    def loss(self, queries: Any, keys: Any, attention_mask: Any) -> Any:
        """Mean negative log of the attention the routing head pays to the right visual tokens.

        `queries` [batch, squares]: the sequence position whose output predicts each square;
        `keys` [batch, squares, tokens]: the positions of the visual tokens showing it;
        `attention_mask` [batch, length]: 1 on real tokens.
        """
        log_attention = self.log_attention(queries, attention_mask)
        return -log_attention.gather(-1, keys).logsumexp(dim=-1).mean()

    def log_attention(self, queries: Any, attention_mask: Any) -> Any:
        """Log of head `ROUTING_HEAD`'s attention [batch, queries, length] at `queries`."""
        import torch

        if not self.inputs:
            raise ChessVLMError("the routing probe saw no forward pass")
        attention = self.attention
        hidden = self.inputs["hidden"]
        # Llama's rotary tables (SmolVLM) are shared by the batch: one row for all.
        cos, sin = (table.expand(hidden.shape[0], -1, -1) for table in self.inputs["rotary"])
        size = attention.head_dim
        kv_head = ROUTING_HEAD // attention.num_key_value_groups
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        query = attention.q_proj(hidden[rows, queries])[
            ..., ROUTING_HEAD * size : (ROUTING_HEAD + 1) * size
        ]
        key = attention.k_proj(hidden)[..., kv_head * size : (kv_head + 1) * size]
        if hasattr(attention, "q_norm"):  # Qwen3-VL normalises each head before rotating
            query, key = attention.q_norm(query), attention.k_norm(key)
        # apply_rotary_pos_emb rotates [batch, heads, length, head_dim]; one head here.
        query = self.rotate(query[:, None], query[:, None], cos[rows, queries], sin[rows, queries])[
            0
        ]
        key = self.rotate(key[:, None], key[:, None], cos, sin)[0]
        scores = (query @ key.transpose(-1, -2))[:, 0].float() * attention.scaling
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        unseen = (positions > queries[..., None]) | (attention_mask[:, None, :] == 0)
        return scores.masked_fill(unseen, float("-inf")).log_softmax(dim=-1)
