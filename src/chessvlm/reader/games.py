"""Small networks that learn what boards hold from synthetic games alone, with no image: the
position prior (`chessvlm.reader.orientation`) and the square context
(`chessvlm.reader.context`). Both learn from the squares of positions played out by
`chessvlm.sources`, with a few squares misread at random as a reader misreads them, so that
no one square decides; this module holds what they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import islice
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from chessvlm.reader.data import square_labels
from chessvlm.reader.model import NUM_CLASSES

Network = TypeVar("Network", bound=nn.Module)


@dataclass(frozen=True)
class GamesRecipe:
    """How a network learns from synthetic games; `PriorRecipe` and `ContextRecipe` add the
    network's width and set their own defaults."""

    positions: int
    seed: str
    held_out: int = 10_000
    epochs: int = 3
    batch_size: int = 512
    # The peak of a one-cycle schedule.
    learning_rate: float = 2e-3
    # Share of the input squares shown as a random class, as a reader misreads them: the
    # network then never stakes everything on one square (docs/reader.md).
    misread_rate: float = 0.02

    def to_dict(self) -> dict:
        """JSON-ready form, stored beside the weights (a changed recipe trains again)."""
        return asdict(self)


def position_classes(count: int, seed: str) -> torch.Tensor:
    """`count` synthetic positions as square classes, N x 64 (python-chess square order)."""
    from chessvlm.sources import iter_synthetic_positions

    positions = islice(iter_synthetic_positions(seed), count)
    rows = [
        square_labels(position.fen)
        for position in tqdm(positions, total=count, desc="positions", leave=False)
    ]
    return torch.tensor(np.array(rows, dtype=np.int64))


def misread(classes: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """`classes` (N x 64) with each square, at `rate`, a random class (as a reader misreads
    them)."""
    wrong = torch.rand(classes.shape, generator=generator) < rate
    random_classes = torch.randint(0, NUM_CLASSES, classes.shape, generator=generator)
    return torch.where(wrong, random_classes, classes)


def fit_on_games(
    make_network: Callable[[torch.Tensor], Network],
    recipe: GamesRecipe,
    loss: Callable[[Network, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor],
    desc: str,
) -> tuple[Network, torch.Tensor]:
    """Train the network `make_network` builds from the recipe's training positions (seeded
    weights) on them: AdamW with a one-cycle schedule peaking at the recipe's learning rate,
    each batch's squares misread at its rate. `loss(network, true, shown, generator)` scores a
    batch of true positions and the ones shown. Returns the network in eval mode and the
    recipe's `held_out` further positions. Deterministic for a recipe on one thread."""
    generator = torch.Generator().manual_seed(0)
    classes = position_classes(recipe.positions + recipe.held_out, recipe.seed)
    train, held_out = classes[: recipe.positions], classes[recipe.positions :]
    # Seeded weights, without resetting the caller's global generator.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = make_network(train)
    optimiser = torch.optim.AdamW(network.parameters(), lr=recipe.learning_rate)
    steps = range(0, len(train), recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=recipe.learning_rate, total_steps=len(steps) * recipe.epochs
    )
    for _ in tqdm(range(recipe.epochs), desc=desc, leave=False):
        order = torch.randperm(len(train), generator=generator)
        for start in steps:
            batch = train[order[start : start + recipe.batch_size]]
            shown = misread(batch, recipe.misread_rate, generator)
            value = loss(network, batch, shown, generator)
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            schedule.step()
    return network.eval(), held_out
