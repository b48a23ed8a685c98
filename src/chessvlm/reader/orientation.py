"""Which side is at the bottom, from the position a board shows: a prior over positions.

A reader's meta head learns the orientation from what its training boards look like, and on
piece designs it never saw it is wrong more often, and sure of itself when wrong. The
position itself says a lot: white pawns stand below black ones and never on the last rank,
kings castle on their own side, pieces start on their side. `PositionPrior` is a small
network over the 64 squares, in image order, that gives the log-odds of black being at the
bottom. It learns from synthetic games alone, so it knows no piece design, and reads the
reader's square probabilities for any design: the reading's orientation adds to its log-odds
those of the printed coordinates (`combined_flipped_probability`). It learns from positions
with a few squares misread at random, as a reader misreads them, so no one square decides.

Positions alone cannot always tell: with one or two pawns and no coordinates both
orientations are legal and often both plausible. On held-out synthetic positions the prior
is right on 96-97% of boards (`docs/reader.md`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chessvlm.reader.data import image_order_labels
from chessvlm.reader.default import DEFAULT_POSITION_PRIOR
from chessvlm.reader.games import GamesRecipe, fit_on_games
from chessvlm.reader.model import GRID, META_OUTPUTS, NUM_CLASSES
from chessvlm.reader.shipped import load_network, save_network

PRIOR_WEIGHTS_FILE = "prior.safetensors"
PRIOR_CONFIG_FILE = "prior.json"
PRIOR_FILES = (PRIOR_WEIGHTS_FILE, PRIOR_CONFIG_FILE)
# Probabilities this close to 0 or 1 are clamped before taking log-odds, so that a saturated
# coordinates view (its sigmoid rounds to 1.0) still leaves the position a say.
_PROBABILITY_FLOOR = 1e-6
# The meta head's own orientation does not join the prior's: it learnt our looks' cues (last-move
# highlights, arrows) and on the shipped reader's 500 validation boards (`designs-seen`, the
# split that chose its checkpoint) every weight of it above 0 read fewer boards the right way up,
# with a higher log-loss, once the prior had learnt from positions with misread squares
# (docs/reader.md, "A prior that expects misread squares"). It decides where there is no prior.
# The prior's log-odds are held within this limit (99.995%): trained long on plain games, it is
# sure of an opening to log-odds of 60 and more, and printed coordinates must still be able to
# overrule a position that game play would not reach. The limit changed no validation board.
PRIOR_LOG_ODDS_LIMIT = 10.0
# The coordinates view's own orientation (read from the printed letters alone) joins the
# prior's with this weight times the probability that the board shows coordinates. The head
# sees those letters too, but on boards whose position points the other way it gave in: this
# output was right on 201 of 209 unseen-design boards with coordinates, while the reading was
# wrong on 7 of them. Chosen on the same 500 validation boards: the lowest log-loss of a grid
# from 0 to 6, with no board wrong at 99% or more, and again with the prior of 2026-12-06
# (docs/reader.md).
COORDINATES_WEIGHT = 2.0
# Coordinates printed outside the board (`chessvlm.reader.margin`) join with this weight times
# the probability that they are there: outside the squares, the reader's experts never see
# them, and where they are read they settle the orientation. Chosen on the same 500
# validation boards, and again with the prior of 2026-12-06 (docs/reader.md).
MARGIN_WEIGHT = 3.0


@dataclass(frozen=True)
class PriorRecipe(GamesRecipe):
    """How a position prior is made: its network and the synthetic games it learns from."""

    positions: int = 1_200_000
    seed: str = "orientation-prior"
    epochs: int = 8
    hidden: tuple[int, ...] = (256, 64)

    def to_dict(self) -> dict:
        """JSON-ready form, stored in `prior.json`."""
        return super().to_dict() | {"hidden": list(self.hidden)}


class PositionPrior(nn.Module):
    """An MLP from the 64 squares' class probabilities (image order) to the log-odds that
    black is at the bottom."""

    def __init__(self, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = GRID * GRID * NUM_CLASSES
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, square_probabilities: torch.Tensor) -> torch.Tensor:
        """B x 64 x 13 (image order, rows from the top) -> B log-odds of 'flipped'."""
        return self.layers(square_probabilities).squeeze(1)


def combined_flipped_probability(
    meta: torch.Tensor,
    prior: PositionPrior | None,
    log_probs: torch.Tensor,
    margin: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The probabilities that black is at the bottom (B), from the meta probabilities (B x
    `META_OUTPUTS`) and the squares read (`log_probs` B x 64 x 13, image order): the prior's
    log-odds (within `PRIOR_LOG_ODDS_LIMIT`) plus the coordinates view's (`COORDINATES_WEIGHT`
    times the probability of coordinates), and where `margin` is given
    (`chessvlm.reader.margin.margin_evidence`: the probability of coordinates outside the
    board, and their log-odds) those outside, `MARGIN_WEIGHT` times their probability. The
    meta head's alone where `prior` is None."""
    head = meta[:, META_OUTPUTS.index("flipped")]
    if prior is None:
        return head
    with torch.inference_mode():
        evidence = prior(log_probs.exp()).clamp(-PRIOR_LOG_ODDS_LIMIT, PRIOR_LOG_ODDS_LIMIT)
    by_coordinates = _log_odds(meta[:, META_OUTPUTS.index("flipped_by_coordinates")])
    shows_coordinates = meta[:, META_OUTPUTS.index("coordinates")]
    log_odds = evidence + COORDINATES_WEIGHT * shows_coordinates * by_coordinates
    if margin is not None:
        shown_outside, by_outside = margin
        log_odds = log_odds + MARGIN_WEIGHT * shown_outside * by_outside
    return torch.sigmoid(log_odds)


def _log_odds(probabilities: torch.Tensor) -> torch.Tensor:
    return torch.logit(probabilities.clamp(_PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR))


def shown_as_images(classes: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Positions (N x 64 square classes) as boards show them: one-hot, image order."""
    return F.one_hot(image_order_labels(classes, flipped), NUM_CLASSES).float()


def train_position_prior(recipe: PriorRecipe = PriorRecipe()) -> tuple[PositionPrior, float]:
    """Train a prior on the recipe's synthetic games, each shown with either side at the
    bottom; returns it (eval mode) and its accuracy on `held_out` further positions, both
    orientations of each. Deterministic for a recipe on one thread."""

    def loss(
        prior: PositionPrior, _: torch.Tensor, shown: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        flipped = torch.rand(len(shown), generator=generator) < 0.5
        logits = prior(shown_as_images(shown, flipped))
        return F.binary_cross_entropy_with_logits(logits, flipped.float())

    prior, held_out = fit_on_games(
        lambda _: PositionPrior(recipe.hidden), recipe, loss, "position prior"
    )
    return prior, prior_accuracy(prior, held_out)


@torch.inference_mode()
def prior_accuracy(prior: PositionPrior, classes: torch.Tensor) -> float:
    """Share of right orientations over `classes` (N x 64) shown both ways up."""
    right = 0
    for flipped in (False, True):
        shown = shown_as_images(classes, torch.full((len(classes),), flipped))
        right += int(((prior(shown) > 0) == flipped).sum())
    return right / (2 * len(classes))


def save_position_prior(
    prior: PositionPrior, out: str | Path, recipe: PriorRecipe, accuracy: float
) -> Path:
    """Write `prior.safetensors` and `prior.json` (recipe and held-out accuracy) into `out`,
    each atomically."""
    config = {"recipe": recipe.to_dict(), "held_out_accuracy": accuracy}
    return save_network(prior, out, PRIOR_FILES, config)


def load_position_prior(path: str | Path = DEFAULT_POSITION_PRIOR) -> PositionPrior:
    """A saved prior, in eval mode; a clear error naming the folder when it is missing or
    does not fit its config."""
    return load_network(
        path,
        PRIOR_FILES,
        "position prior",
        lambda config: PositionPrior(tuple(int(size) for size in config["recipe"]["hidden"])),
    )


@cache
def default_position_prior() -> PositionPrior:
    """The prior shipped in the package, loaded once per process."""
    return load_position_prior(DEFAULT_POSITION_PRIOR)
