"""What the rest of the board says about each square: a context model over positions.

On piece designs it never saw, the reader confuses shapes (bishops and pawns, rooks and
knights) square by square. The position around a square says a lot about it: pawns stand in
chains, a side has two bishops on squares of both colours, rooks sit on open files and back
ranks. `SquareContext` gives, for each square, the log-probabilities of its 13 classes from
the other 63 squares' reading alone (leave-one-out, in one pass), and the reading's squares
add them, weighed by `CONTEXT_WEIGHT`, as a product of experts: p(class | image, rest) is
proportional to p(class | image) p(class | rest) / p(class), the last the square's share of
each class over the training positions (stored with the weights).

It learns from synthetic games alone, with a few squares misread at random as a reader
misreads them, so it knows no piece design (`docs/reader.md`, "The rest of the board").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chessvlm.reader.default import DEFAULT_SQUARE_CONTEXT
from chessvlm.reader.games import GamesRecipe, fit_on_games
from chessvlm.reader.model import GRID, NUM_CLASSES
from chessvlm.reader.shipped import load_network, save_network

CONTEXT_WEIGHTS_FILE = "context.safetensors"
CONTEXT_CONFIG_FILE = "context.json"
CONTEXT_FILES = (CONTEXT_WEIGHTS_FILE, CONTEXT_CONFIG_FILE)
SQUARES = GRID * GRID
# The weight of the context's evidence against the reader's own log-probabilities. Chosen on
# the shipped reader's 500 validation boards (`designs-seen`, the split that chose its
# checkpoint), orientation given: the most squares and boards right of a grid from 0 to 1
# (docs/reader.md, "The rest of the board").
CONTEXT_WEIGHT = 0.4
# Floor of a class's share on a square, so that a class the training games never put there
# (a pawn on the back rank) has finite log-odds.
_SHARE_FLOOR = 1e-5


@dataclass(frozen=True)
class ContextRecipe(GamesRecipe):
    """How a square context model is made: its width and the synthetic games it learns from."""

    positions: int = 600_000
    seed: str = "square-context"
    hidden: int = 128


class SquareContext(nn.Module):
    """Each square's class log-probabilities from the other squares' class probabilities
    (square order): every square's reading is embedded by where it is, the embeddings of all
    squares but the one predicted are summed, and a small residual MLP reads the sum."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.randn(SQUARES, NUM_CLASSES, hidden) * 0.02)
        self.square_bias = nn.Parameter(torch.zeros(SQUARES, hidden))
        self.middle = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, NUM_CLASSES)
        self.out_bias = nn.Parameter(torch.zeros(SQUARES, NUM_CLASSES))
        # Each square's log-share of each class over the training positions: p(class).
        self.register_buffer("log_share", torch.zeros(SQUARES, NUM_CLASSES))

    def forward(self, square_probabilities: torch.Tensor) -> torch.Tensor:
        """B x 64 x 13 (square order) -> B x 64 x 13 logits, each square from the others."""
        each = torch.einsum("bjc,jch->bjh", square_probabilities, self.embed)
        # The sum over all squares less the square's own: no square sees itself.
        hidden = F.relu(each.sum(dim=1, keepdim=True) - each + self.square_bias)
        hidden = F.relu(self.middle(hidden)) + hidden
        return self.out(hidden) + self.out_bias

    @torch.inference_mode()
    def evidence(self, square_log_probs: torch.Tensor) -> torch.Tensor:
        """log p(class | the other squares) - log p(class), B x 64 x 13, from the reader's
        log-probabilities (square order)."""
        return self(square_log_probs.exp()).log_softmax(dim=-1) - self.log_share


def with_context(context: SquareContext | None, square_log_probs: torch.Tensor) -> torch.Tensor:
    """The squares' log-probabilities (B x 64 x 13, square order) with the context's evidence
    added at `CONTEXT_WEIGHT` and normalised again; unchanged where `context` is None."""
    if context is None:
        return square_log_probs
    joined = square_log_probs + CONTEXT_WEIGHT * context.evidence(square_log_probs)
    return joined.log_softmax(dim=-1)


def train_square_context(recipe: ContextRecipe = ContextRecipe()) -> tuple[SquareContext, float]:
    """Train a context model on the recipe's synthetic games; returns it (eval mode) and its
    accuracy on `held_out` further positions (each square from the others, clean).
    Deterministic for a recipe on one thread."""

    def make(train: torch.Tensor) -> SquareContext:
        context = SquareContext(recipe.hidden)
        share = F.one_hot(train, NUM_CLASSES).float().mean(dim=0)
        context.log_share.copy_(share.clamp_min(_SHARE_FLOOR).log())
        return context

    def loss(
        context: SquareContext, true: torch.Tensor, shown: torch.Tensor, _: torch.Generator
    ) -> torch.Tensor:
        logits = context(F.one_hot(shown, NUM_CLASSES).float())
        return F.cross_entropy(logits.reshape(-1, NUM_CLASSES), true.reshape(-1))

    context, held_out = fit_on_games(make, recipe, loss, "square context")
    return context, context_accuracy(context, held_out)


@torch.inference_mode()
def context_accuracy(context: SquareContext, classes: torch.Tensor) -> float:
    """Share of squares of `classes` (N x 64) whose class the others predict."""
    predicted = context(F.one_hot(classes, NUM_CLASSES).float()).argmax(dim=-1)
    return float((predicted == classes).float().mean())


def save_square_context(
    context: SquareContext, out: str | Path, recipe: ContextRecipe, accuracy: float
) -> Path:
    """Write `context.safetensors` and `context.json` (recipe and held-out accuracy) into
    `out`, each atomically."""
    config = {"recipe": recipe.to_dict(), "held_out_accuracy": accuracy}
    return save_network(context, out, CONTEXT_FILES, config)


def load_square_context(path: str | Path = DEFAULT_SQUARE_CONTEXT) -> SquareContext:
    """A saved context model, in eval mode; a clear error naming the folder when it is
    missing or does not fit its config."""
    return load_network(
        path,
        CONTEXT_FILES,
        "square context",
        lambda config: SquareContext(int(config["recipe"]["hidden"])),
    )


@cache
def default_square_context() -> SquareContext:
    """The context model shipped in the package, loaded once per process."""
    return load_square_context(DEFAULT_SQUARE_CONTEXT)
