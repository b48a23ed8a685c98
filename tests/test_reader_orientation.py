"""The position prior: it learns from synthetic games which side is at the bottom, the shipped
one is reproducible by its recipe and right on fresh positions, and a reading's orientation
weighs it, and the printed coordinates, in place of the meta head's guess."""

from __future__ import annotations

import dataclasses
import json
from functools import partial

import chess
import pytest
import torch

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.reader.context import CONTEXT_CONFIG_FILE, CONTEXT_WEIGHTS_FILE, ContextRecipe
from chessvlm.reader.default import (
    DEFAULT_MARGIN_READER,
    DEFAULT_POSITION_PRIOR,
    DEFAULT_READER,
    DEFAULT_SQUARE_CONTEXT,
    DefaultRecipe,
    build_default_reader,
)
from chessvlm.reader.games import misread, position_classes
from chessvlm.reader.margin import MARGIN_CONFIG_FILE, MARGIN_WEIGHTS_FILE, MarginRecipe
from chessvlm.reader.matching import MATCHER_CONFIG_FILE, MATCHER_WEIGHTS_FILE, MatcherRecipe
from chessvlm.reader.model import META_OUTPUTS, NUM_CLASSES
from chessvlm.reader.orientation import (
    PRIOR_CONFIG_FILE,
    PRIOR_WEIGHTS_FILE,
    PositionPrior,
    PriorRecipe,
    combined_flipped_probability,
    default_position_prior,
    load_position_prior,
    prior_accuracy,
    save_position_prior,
    shown_as_images,
    train_position_prior,
)
from chessvlm.reader.read import CONFIG_FILE, WEIGHTS_FILE, decode_outputs, is_reader_checkpoint

TINY = PriorRecipe(hidden=(16,), positions=2000, held_out=500, epochs=3, batch_size=128)
MAX_SHIPPED_BYTES = 5_000_000


def _shown(fen: str, flipped: bool) -> torch.Tensor:
    """The board of `fen` as an image shows it: one-hot square classes, image order, 1 x 64 x 13."""
    from chessvlm.reader.data import square_labels

    return shown_as_images(torch.tensor([square_labels(fen)]), torch.tensor([flipped]))


def test_a_small_prior_learns_which_side_is_at_the_bottom(tmp_path):
    prior, accuracy = train_position_prior(TINY)
    # Chance is 0.5; this recipe gets 0.878 (the shipped one, 0.967).
    assert accuracy >= 0.8
    _, same = train_position_prior(TINY)
    assert same == accuracy  # deterministic for a recipe
    save_position_prior(prior, tmp_path, TINY, accuracy)
    loaded = load_position_prior(tmp_path)
    shown = torch.cat([_shown(chess.STARTING_FEN, True), _shown(chess.STARTING_FEN, False)])
    assert loaded(shown).shape == (2,)
    assert torch.equal(loaded(shown), prior(shown))
    assert json.loads((tmp_path / PRIOR_CONFIG_FILE).read_text())["held_out_accuracy"] == accuracy


def test_the_shipped_prior_is_small_made_by_its_recipe_and_right_on_fresh_positions():
    config = json.loads((DEFAULT_POSITION_PRIOR / PRIOR_CONFIG_FILE).read_text())
    assert config["recipe"] == PriorRecipe().to_dict()
    shipped = [DEFAULT_READER / CONFIG_FILE, DEFAULT_READER / WEIGHTS_FILE]
    shipped += [
        DEFAULT_POSITION_PRIOR / PRIOR_CONFIG_FILE,
        DEFAULT_POSITION_PRIOR / PRIOR_WEIGHTS_FILE,
        DEFAULT_MARGIN_READER / MARGIN_CONFIG_FILE,
        DEFAULT_MARGIN_READER / MARGIN_WEIGHTS_FILE,
        DEFAULT_SQUARE_CONTEXT / CONTEXT_CONFIG_FILE,
        DEFAULT_SQUARE_CONTEXT / CONTEXT_WEIGHTS_FILE,
    ]
    assert sum(path.stat().st_size for path in shipped) <= MAX_SHIPPED_BYTES
    # Positions of games the prior never learnt from, each shown both ways up.
    fresh = position_classes(400, "test-fresh-positions")
    assert prior_accuracy(default_position_prior(), fresh) >= 0.93


def _meta(flipped: float, by_coordinates: float = 0.5, coordinates: float = 0.0) -> torch.Tensor:
    named = {"flipped": flipped, "black_to_move": 0.5}
    named |= {"flipped_by_coordinates": by_coordinates, "coordinates": coordinates}
    return torch.tensor([[named[name] for name in META_OUTPUTS]])


def test_with_a_prior_the_position_decides_and_the_head_alone_without_one():
    opening = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"
    prior = default_position_prior()
    log_probs = _shown(opening, True).clamp_min(1e-4).log()
    unsure = combined_flipped_probability(_meta(0.5), prior, log_probs)
    assert unsure.item() > 0.99
    # A head sure of the other way does not count: our looks' cues misled it on validation.
    sure_otherwise = combined_flipped_probability(_meta(0.0), prior, log_probs)
    assert sure_otherwise.item() == unsure.item()
    assert combined_flipped_probability(_meta(0.3), None, log_probs).item() == pytest.approx(0.3)


def test_training_positions_are_misread_at_the_recipes_rate():
    classes = position_classes(500, "test-misread")
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(misread(classes, 0.0, generator), classes)
    changed = (misread(classes, TINY.misread_rate, generator) != classes).float().mean().item()
    # A random class is the true one a 13th of the time.
    assert changed == pytest.approx(TINY.misread_rate * 12 / 13, abs=0.003)


def test_printed_coordinates_outweigh_a_position_that_points_the_other_way():
    # An ending shown from black's side, on a board whose letters say white is at the bottom.
    ending = "8/8/4k3/8/3P4/8/3K4/8 w - - 0 1"
    prior = default_position_prior()
    log_probs = _shown(ending, True).clamp_min(1e-4).log()
    position_only = combined_flipped_probability(_meta(0.5), prior, log_probs).item()
    assert position_only > 0.5
    letters = _meta(0.5, by_coordinates=1e-4, coordinates=1.0)
    assert combined_flipped_probability(letters, prior, log_probs).item() < 0.1
    # Without coordinates on the board, what the coordinates view guesses does not count.
    guess = _meta(0.5, by_coordinates=1e-4, coordinates=0.0)
    assert combined_flipped_probability(guess, prior, log_probs).item() == position_only


def test_decoding_weighs_the_prior_and_a_known_orientation_overrides_both():
    opening = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"
    log_probs = _shown(opening, True).clamp_min(1e-4).log()
    meta = torch.full((1, len(META_OUTPUTS)), 0.5)
    prior = default_position_prior()
    (with_prior,) = decode_outputs(log_probs, meta, "argmax", False, prior=prior)
    assert with_prior.flipped and with_prior.flipped_probability > 0.99
    assert with_prior.board.board_fen() == chess.Board(opening).board_fen()
    (head_alone,) = decode_outputs(log_probs, meta, "argmax", False)
    assert head_alone.flipped_probability == 0.5 and not head_alone.flipped
    (known,) = decode_outputs(
        log_probs, meta, "argmax", False, [False], prior=default_position_prior()
    )
    assert not known.flipped


def test_a_missing_or_broken_prior_is_a_clear_error(tmp_path):
    with pytest.raises(ChessVLMError, match=r"no position prior.*build-default"):
        load_position_prior(tmp_path)
    save_position_prior(PositionPrior((8,)), tmp_path, TINY, 0.5)
    with pytest.raises(InputError, match=r"prior\.safetensors.*do not fit"):
        load_position_prior(tmp_path)  # the config says 16 hidden units, the weights 8
    (tmp_path / PRIOR_CONFIG_FILE).write_text("{not json")
    with pytest.raises(InputError, match=r"prior\.json.*not a position prior"):
        load_position_prior(tmp_path)


def test_build_default_writes_the_reader_and_its_helpers_and_resumes(tmp_path):
    recipe = DefaultRecipe(train_samples=16, val_samples=8, epochs=1, batch_size=8)
    reader_out, prior_out = tmp_path / "reader", tmp_path / "prior"
    margin_out = tmp_path / "margin"
    margin_recipe = MarginRecipe(widths=(4,), hidden=4, scenes=2, epochs=1)
    context_out = tmp_path / "context"
    context_recipe = ContextRecipe(hidden=4, positions=200, held_out=50, epochs=1)
    matcher_out = tmp_path / "matcher"
    matcher_recipe = MatcherRecipe(epochs=1, boards_per_batch=8, embedding=8)
    build = partial(
        build_default_reader,
        tmp_path / "work",
        reader_out,
        recipe,
        workers=1,
        prior_out=prior_out,
        prior_recipe=TINY,
        margin_out=margin_out,
        margin_recipe=margin_recipe,
        context_out=context_out,
        context_recipe=context_recipe,
        matcher_out=matcher_out,
        matcher_recipe=matcher_recipe,
    )
    build()
    assert is_reader_checkpoint(reader_out)
    # The recipe's readers, one per seed, shipped as one ensemble checkpoint.
    config = json.loads((reader_out / "reader.json").read_text())
    assert config["members"] == recipe.members == 3
    # Where the scratch work folder was says nothing: members are named inside it.
    paths = [member["path"] for member in config["member_checkpoints"]]
    assert paths == ["readers/seed0", "readers/seed1", "readers/seed2"]
    # The third reads only the boards the first two are unsure of, from 8-bit weights.
    assert (config["always_members"], config["unsure_below"]) == (2, recipe.unsure_below)
    assert config["weights_storage"] == "int8"
    first = (prior_out / PRIOR_WEIGHTS_FILE).read_bytes()
    assert json.loads((prior_out / PRIOR_CONFIG_FILE).read_text())["recipe"] == TINY.to_dict()
    # The margin reader learnt from the recipe's training boards.
    margin_config = json.loads((margin_out / MARGIN_CONFIG_FILE).read_text())
    assert margin_config["recipe"] == margin_recipe.to_dict()
    assert margin_config["validation"]["boards"] == recipe.val_samples
    first_margin = (margin_out / MARGIN_WEIGHTS_FILE).read_bytes()
    context_config = json.loads((context_out / CONTEXT_CONFIG_FILE).read_text())
    assert context_config["recipe"] == context_recipe.to_dict()
    first_context = (context_out / CONTEXT_WEIGHTS_FILE).read_bytes()
    # The square matcher learnt from the recipe's training boards, scored on its validation.
    matcher_config = json.loads((matcher_out / MATCHER_CONFIG_FILE).read_text())
    assert matcher_config["recipe"] == matcher_recipe.to_dict()
    assert matcher_config["val"]["boards"] == recipe.val_samples
    first_matcher = (matcher_out / MATCHER_WEIGHTS_FILE).read_bytes()
    # A rerun finds all finished in the work folder and copies the same files again.
    build()
    assert (prior_out / PRIOR_WEIGHTS_FILE).read_bytes() == first
    assert (margin_out / MARGIN_WEIGHTS_FILE).read_bytes() == first_margin
    assert (context_out / CONTEXT_WEIGHTS_FILE).read_bytes() == first_context
    assert (matcher_out / MATCHER_WEIGHTS_FILE).read_bytes() == first_matcher
    # Another prior recipe is trained anew, not taken from the work folder.
    other = dataclasses.replace(TINY, hidden=(8,))
    build(prior_recipe=other)
    assert json.loads((prior_out / PRIOR_CONFIG_FILE).read_text())["recipe"] == other.to_dict()
    assert load_position_prior(prior_out)(torch.rand(1, 64, NUM_CLASSES)).shape == (1,)
