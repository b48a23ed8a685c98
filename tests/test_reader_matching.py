"""The square matcher: it learns from a dataset's boards whether two squares of one board
hold the same piece (and the same shape in either colour), is reproducible by its recipe, and
weighs into a reading so that a square like sure pawns is pulled towards pawn and one unlike
them away from it."""

from __future__ import annotations

import json

import pytest
import torch

from chessvlm.datasets import synth_json_dataset
from chessvlm.errors import ChessVLMError, InputError
from chessvlm.positions import SQUARE_CLASSES
from chessvlm.reader.data import image_order_labels, load_board_set, read_split
from chessvlm.reader.default import DEFAULT_SQUARE_MATCHER
from chessvlm.reader.matching import (
    MATCHER_CONFIG_FILE,
    MATCHER_WEIGHTS_FILE,
    RELATIONS,
    MatcherRecipe,
    SquareMatcher,
    board_cells,
    chosen_cells,
    default_square_matcher,
    load_square_matcher,
    matcher_figures,
    matcher_training_records,
    recoloured,
    save_square_matcher,
    train_square_matcher,
    with_look_alikes,
)

PAWN, BISHOP = SQUARE_CLASSES.index("P"), SQUARE_CLASSES.index("B")
ROOK, KNIGHT, BLACK_ROOK = (SQUARE_CLASSES.index(symbol) for symbol in "RNr")
MAX_SHIPPED_BYTES = 500_000


class _KnownMatcher(SquareMatcher):
    """A matcher whose pair log-odds are given (same piece; same shape, neutral unless
    given), to test how a reading weighs them."""

    def __init__(self, same_piece: torch.Tensor, same_shape: torch.Tensor | None = None) -> None:
        super().__init__()
        shape = torch.zeros_like(same_piece) if same_shape is None else same_shape
        self.log_odds = torch.stack([same_piece, shape])

    def pair_logits(self, boards: torch.Tensor, pieces: torch.Tensor) -> torch.Tensor:
        compared = pieces.unsqueeze(2) & pieces.unsqueeze(1)
        return torch.where(compared, self.log_odds, 0.0)


def _reading(classes: dict[int, dict[int, float]]) -> torch.Tensor:
    """1 x 64 x 13 log-probabilities: the listed cells' class probabilities, the rest empty."""
    probabilities = torch.full((1, 64, 13), 1e-4)
    probabilities[0, :, 0] = 1.0
    for cell, shares in classes.items():
        probabilities[0, cell] = 1e-4
        for index, share in shares.items():
            probabilities[0, cell, index] = share
    return (probabilities / probabilities.sum(-1, keepdim=True)).log()


def test_board_cells_cut_the_board_into_its_squares_in_image_order():
    boards = torch.zeros(2, 3, 256, 256)
    boards[1, :, 32:64, 64:96] = 1.0  # row 1, column 2
    cells = board_cells(boards)
    assert cells.shape == (2, 64, 3, 32, 32)
    assert cells[1, 10].min() == 1.0 and cells[1].sum() == cells[1, 10].sum()
    # Boards of another size are resized to 256 px first.
    assert board_cells(torch.zeros(1, 3, 320, 320)).shape == (1, 64, 3, 32, 32)
    # Gathering only some cells gives what cutting them all and choosing does.
    boards = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8)
    chosen = torch.rand(3, 64) < 0.3
    assert torch.equal(chosen_cells(boards, chosen), board_cells(boards)[chosen])


def test_a_square_follows_the_squares_it_looks_like_and_leaves_those_it_does_not():
    # Cells 0-2 are sure pawns, cells 3-4 sure bishops; cell 5 is unsure, a little more pawn.
    reading = _reading(
        {
            **{cell: {PAWN: 0.98} for cell in (0, 1, 2)},
            **{cell: {BISHOP: 0.98} for cell in (3, 4)},
            5: {PAWN: 0.55, BISHOP: 0.4},
        }
    )
    like_bishops = torch.full((1, 64, 64), -4.0)
    like_bishops[0, :3, :3] = like_bishops[0, 3:6, 3:6] = 4.0
    boards = torch.zeros(1, 3, 256, 256, dtype=torch.uint8)
    joined = with_look_alikes(_KnownMatcher(like_bishops), boards, reading)
    assert joined[0, 5].argmax() == BISHOP
    # The sure squares keep their reading, and the empty ones are not moved.
    assert (joined[0, :5].argmax(-1) == torch.tensor([PAWN] * 3 + [BISHOP] * 2)).all()
    assert torch.allclose(joined[0, 6:], reading[0, 6:], atol=1e-5)
    # Unlike both the pawns and the bishops, the unsure square is pushed away from both.
    unlike_all = like_bishops.clone()
    unlike_all[0, 5, :5] = unlike_all[0, :5, 5] = -4.0
    alone = with_look_alikes(_KnownMatcher(unlike_all), boards, reading)[0, 5].exp()
    before = reading[0, 5].exp()
    assert alone[PAWN] < before[PAWN]
    assert alone[PAWN] + alone[BISHOP] < before[PAWN] + before[BISHOP]
    # Without a matcher the reading is unchanged.
    assert with_look_alikes(None, boards, reading) is reading


def test_a_square_shaped_like_a_sure_piece_of_the_other_colour_takes_its_shape():
    # Cell 0 is a sure black rook; cell 1, a white piece, is a little more knight than rook.
    reading = _reading({0: {BLACK_ROOK: 0.98}, 1: {KNIGHT: 0.55, ROOK: 0.4}})
    boards = torch.zeros(1, 3, 256, 256, dtype=torch.uint8)
    different_pieces = torch.full((1, 64, 64), -4.0)
    same_shape = torch.full((1, 64, 64), -4.0)
    same_shape[0, :2, :2] = 4.0
    joined = with_look_alikes(_KnownMatcher(different_pieces, same_shape), boards, reading)
    assert joined[0, 1].argmax() == ROOK and joined[0, 0].argmax() == BLACK_ROOK
    # Shaped unlike the rook, the square is read a knight more surely than before.
    unlike = with_look_alikes(_KnownMatcher(different_pieces, -same_shape.abs()), boards, reading)
    assert unlike[0, 1, KNIGHT] > reading[0, 1, KNIGHT]


def test_recolouring_keeps_each_board_one_picture_and_stays_in_range():
    generator = torch.Generator().manual_seed(0)
    cells = torch.rand(4, 64, 3, 32, 32)
    cells[:, 1] = cells[:, 0]  # two squares holding the same piece
    changed = recoloured(cells, generator)
    assert changed.shape == cells.shape and changed.min() >= 0 and changed.max() <= 1
    # The same picture stays alike beside another, up to the small per-square changes.
    same = (changed[:, 0] - changed[:, 1]).abs().mean()
    other = (changed[:, 0] - changed[:, 2]).abs().mean()
    assert same < other / 2


def test_training_learns_pairs_and_is_reproducible(tmp_path):
    data = tmp_path / "data"
    synth_json_dataset(data, {"train": 32, "val": 8}, seed=5, style="designs-seen")
    recipe = MatcherRecipe(epochs=2, boards_per_batch=8, embedding=16)
    matcher, figures = train_square_matcher(data, recipe, workers=1)
    assert figures["boards"] == 8
    for relation in ("same_piece", "same_shape"):
        assert 0 <= figures[f"{relation}_pairs_found"] <= 1
        assert 0 <= figures[f"{relation}_precision"] <= 1
    again, _ = train_square_matcher(data, recipe, workers=1)
    for name, tensor in matcher.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    save_square_matcher(matcher, tmp_path / "matcher", recipe, figures)
    loaded = load_square_matcher(tmp_path / "matcher")
    config = json.loads((tmp_path / "matcher" / MATCHER_CONFIG_FILE).read_text())
    assert config == {"recipe": recipe.to_dict(), "relations": list(RELATIONS), "val": figures}
    boards = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    pieces = torch.rand(2, 64) < 0.4
    assert torch.equal(matcher.pair_logits(boards, pieces), loaded.pair_logits(boards, pieces))


def test_the_mesh_sets_boards_are_trained_on_only_when_the_recipe_says(tmp_path):
    styles = ["brutalchess/brown/320", "cburnett/blue/256/flip", "dreamchess-elements/green/512"]
    records = [
        {"id": f"train_{i}", "image_path": f"images/train_{i}.png", "fen": "8/8/8/8/8/8/8/8"}
        for i in range(4)
    ]
    for record, style in zip(records, styles, strict=False):
        record["style"] = style  # the last one has none, as a board not rendered here
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def trained_on(recipe: MatcherRecipe) -> list[str]:
        return [record["id"] for record in matcher_training_records(tmp_path, recipe)]

    assert trained_on(MatcherRecipe()) == ["train_1", "train_3"]
    assert trained_on(MatcherRecipe(mesh_boards=True)) == [r["id"] for r in records]


def test_a_missing_or_broken_matcher_is_a_clear_error(tmp_path):
    with pytest.raises(ChessVLMError, match=r"no square matcher.*build-default"):
        load_square_matcher(tmp_path)
    save_square_matcher(SquareMatcher(8), tmp_path, MatcherRecipe(), {})
    with pytest.raises(InputError, match=r"matcher\.safetensors.*do not fit"):
        load_square_matcher(tmp_path)  # the config says 64 dimensions, the weights 8
    # A matcher of an earlier version, which scored only the same piece.
    config = json.loads((tmp_path / MATCHER_CONFIG_FILE).read_text())
    del config["relations"]
    (tmp_path / MATCHER_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"matcher\.json.*same piece.*build-default"):
        load_square_matcher(tmp_path)
    (tmp_path / MATCHER_CONFIG_FILE).write_text("[]")
    with pytest.raises(InputError, match=r"matcher\.json.*not a square matcher"):
        load_square_matcher(tmp_path)


def test_the_shipped_matcher_is_small_and_matches_pieces_of_unseen_designs(tmp_path):
    size = sum(
        (DEFAULT_SQUARE_MATCHER / name).stat().st_size
        for name in (MATCHER_WEIGHTS_FILE, MATCHER_CONFIG_FILE)
    )
    assert size <= MAX_SHIPPED_BYTES
    config = json.loads((DEFAULT_SQUARE_MATCHER / MATCHER_CONFIG_FILE).read_text())
    assert config["recipe"] == MatcherRecipe().to_dict()
    # Boards of designs the matcher never saw, cut at their labelled boxes.
    data = tmp_path / "data"
    synth_json_dataset(data, {"test": 24}, seed=4321, style="designs-held-out")
    boards = load_board_set(data, read_split(data, "test"), 256, workers=1, desc="test")
    labels = image_order_labels(boards.labels, boards.flipped)
    figures = matcher_figures(default_square_matcher(), boards.images, labels)
    # The shipped matcher finds 98.4% of these fixed boards' same-piece pairs at a precision of
    # 99.3%, and 96.3% of their same-shape pairs at 99.4%; a change to the cells it sees (their
    # size, order or scale) falls far below.
    for relation in ("same_piece", "same_shape"):
        assert figures[f"{relation}_pairs_found"] >= 0.95
        assert figures[f"{relation}_precision"] >= 0.97


def test_folding_for_inference_keeps_the_pair_logits():
    torch.manual_seed(0)
    matcher = SquareMatcher(16)
    for module in matcher.modules():  # batch norms with statistics of their own
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    matcher.eval()
    boards = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    pieces = torch.rand(2, 64) < 0.4
    with torch.inference_mode():
        before = matcher.pair_logits(boards, pieces)
        after = matcher.fold_for_inference().pair_logits(boards, pieces)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in matcher.modules())
    assert torch.allclose(before, after, atol=1e-4)
