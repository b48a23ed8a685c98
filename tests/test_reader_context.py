"""The square context: each square predicted from the other 63 alone, learnt from synthetic
games, reproducible by its recipe, and weighed into a reading so that an unsure square
follows the board while a sure one keeps its reading."""

from __future__ import annotations

import json

import chess
import pytest
import torch
import torch.nn.functional as F

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.reader.context import (
    CONTEXT_CONFIG_FILE,
    CONTEXT_WEIGHT,
    ContextRecipe,
    SquareContext,
    context_accuracy,
    default_square_context,
    load_square_context,
    save_square_context,
    train_square_context,
    with_context,
)
from chessvlm.reader.data import square_labels
from chessvlm.reader.default import DEFAULT_SQUARE_CONTEXT
from chessvlm.reader.games import position_classes
from chessvlm.reader.model import NUM_CLASSES, decode_squares
from chessvlm.reader.read import decode_outputs

TINY = ContextRecipe(
    hidden=32, positions=4000, held_out=500, epochs=5, batch_size=64, learning_rate=5e-3
)
MAX_SHIPPED_BYTES = 1_000_000


def _square_log_probs(fen: str, unsure: dict[int, dict[str, float]] | None = None) -> torch.Tensor:
    """A reading of `fen` (1 x 64 x 13, square order): each square sure of its class, except
    the `unsure` squares, which get the given probabilities by piece symbol ("." empty)."""
    from chessvlm.positions import SQUARE_CLASSES

    probabilities = F.one_hot(torch.tensor([square_labels(fen)]), NUM_CLASSES).float()
    for square, shares in (unsure or {}).items():
        probabilities[0, square] = 0.0
        for symbol, share in shares.items():
            probabilities[0, square, SQUARE_CLASSES.index(symbol.replace(".", ""))] = share
    return probabilities.clamp_min(1e-4).log().log_softmax(dim=-1)


def test_a_small_context_learns_squares_from_the_rest_of_the_board(tmp_path):
    context, accuracy = train_square_context(TINY)
    held_out = position_classes(500, "test-context-held-out")
    # Each square's most common class over these games: what a context-free guess reads.
    most_common = F.one_hot(held_out, NUM_CLASSES).float().mean(dim=0).argmax(dim=-1)
    baseline = float((held_out == most_common).float().mean())
    # 0.760 against 0.736.
    assert context_accuracy(context, held_out) > baseline + 0.015
    _, same = train_square_context(TINY)
    assert same == accuracy  # deterministic for a recipe
    save_square_context(context, tmp_path, TINY, accuracy)
    loaded = load_square_context(tmp_path)
    reading = _square_log_probs(chess.STARTING_FEN)
    assert torch.equal(loaded.evidence(reading), context.evidence(reading))
    assert json.loads((tmp_path / CONTEXT_CONFIG_FILE).read_text())["recipe"] == TINY.to_dict()


def test_no_square_sees_its_own_reading():
    context = SquareContext(hidden=8)
    with torch.no_grad():
        for parameter in context.parameters():
            parameter.normal_()
    reading = torch.rand(1, 64, NUM_CLASSES)
    changed = reading.clone()
    changed[0, 27] = torch.rand(NUM_CLASSES)
    before, after = context(reading), context(changed)
    # Equal up to rounding: the sum of all squares less the own differs in its last bits.
    assert torch.allclose(before[0, 27], after[0, 27], rtol=1e-5, atol=1e-4)
    assert not torch.allclose(before[0, 28], after[0, 28], rtol=1e-2, atol=1e-2)


def test_an_unsure_square_follows_the_board_and_a_sure_one_keeps_its_reading():
    context = default_square_context()
    # d2 of the starting position read as a bishop a little more than as a pawn.
    unsure = _square_log_probs(chess.STARTING_FEN, {chess.D2: {"B": 0.55, "P": 0.45}})
    assert decode_squares(unsure[0], chess_rules=True)[chess.D2] == 3  # the bishop, alone
    joined = with_context(context, unsure)
    assert decode_squares(joined[0], chess_rules=True)[chess.D2] == 1  # the pawn, in context
    assert torch.allclose(joined.exp().sum(dim=-1), torch.ones(1, 64))
    sure = _square_log_probs(chess.STARTING_FEN, {chess.D2: {"B": 0.99, "P": 0.01}})
    assert decode_squares(with_context(context, sure)[0], chess_rules=True)[chess.D2] == 3
    assert torch.equal(with_context(None, unsure), unsure)


def test_decoding_weighs_the_context_in_the_boards_orientation():
    from chessvlm.reader.model import META_OUTPUTS, to_image_order

    squares = _square_log_probs(chess.STARTING_FEN, {chess.D2: {"B": 0.55, "P": 0.45}})
    meta = torch.full((1, len(META_OUTPUTS)), 0.5)
    for flipped in (False, True):
        cells = to_image_order(squares[0], flipped, dim=0).unsqueeze(0)
        (alone,) = decode_outputs(cells, meta, "chess_rules", False, [flipped])
        assert alone.board.piece_at(chess.D2) == chess.Piece.from_symbol("B")
        (read,) = decode_outputs(
            cells, meta, "chess_rules", False, [flipped], context=default_square_context()
        )
        assert read.board.board_fen() == chess.Board().board_fen()
        assert read.square_probabilities[chess.D2] > 0.5


def test_the_shipped_context_is_small_made_by_its_recipe_and_right_on_fresh_positions():
    config = json.loads((DEFAULT_SQUARE_CONTEXT / CONTEXT_CONFIG_FILE).read_text())
    assert config["recipe"] == ContextRecipe().to_dict()
    assert sum(p.stat().st_size for p in DEFAULT_SQUARE_CONTEXT.iterdir()) <= MAX_SHIPPED_BYTES
    fresh = position_classes(400, "test-fresh-positions")
    # The recipe's own held-out games: 0.858.
    assert context_accuracy(default_square_context(), fresh) >= 0.84
    assert 0 < CONTEXT_WEIGHT < 1


def test_a_missing_or_broken_context_is_a_clear_error(tmp_path):
    with pytest.raises(ChessVLMError, match=r"no square context.*build-default"):
        load_square_context(tmp_path)
    save_square_context(SquareContext(8), tmp_path, TINY, 0.5)
    with pytest.raises(InputError, match=r"context\.safetensors.*do not fit"):
        load_square_context(tmp_path)  # the config says 32 hidden units, the weights 8
    (tmp_path / CONTEXT_CONFIG_FILE).write_text('{"recipe": {}}')
    with pytest.raises(InputError, match=r"context\.json.*not a square context"):
        load_square_context(tmp_path)
