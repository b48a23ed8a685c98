"""Look-alike squares: the pieces of one board are drawn with one design, so two squares
holding the same piece look the same, whatever the design.

On a design it never saw, the reader confuses shapes square by square (a bishop read as a
pawn), yet the board itself says which squares hold the same piece: all its pawns share one
picture, and a bishop's picture differs from theirs. `SquareMatcher` embeds each square's
picture (one 32 px cell of the 256 px board) so that two squares' embeddings agree when they
hold the same piece. It learns to match pictures, not to name pieces: every training board is
recoloured as a whole (channels swapped, inverted, grey, contrast), so the class of a picture
cannot be learnt from its colours, only whether two pictures on one board are the same.

`with_look_alikes` then lets each square's reading weigh the others' (a mean-field step of a
pairwise model): for each class, a square gains the matcher's log-odds that it holds the same
piece as each other square, times that square's probability of the class. A square like
confident pawns is pulled towards pawn; a square unlike all of them is pushed away from pawn.
See docs/reader.md, "Look-alike squares".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from chessvlm.reader.default import DEFAULT_SQUARE_MATCHER
from chessvlm.reader.model import GRID
from chessvlm.reader.shipped import load_network, save_network

MATCHER_WEIGHTS_FILE = "matcher.safetensors"
MATCHER_CONFIG_FILE = "matcher.json"
MATCHER_FILES = (MATCHER_WEIGHTS_FILE, MATCHER_CONFIG_FILE)
SQUARES = GRID * GRID
# Side of the cell the matcher sees: a square of the reader's 256 px board.
CELL = 32
# The weight of the look-alike evidence and the bound on each pair's log-odds, chosen on the
# shipped reader's 500 validation boards (in distribution), orientation given
# (docs/reader.md, "Look-alike squares").
MATCH_WEIGHT = 0.5
MATCH_LOG_ODDS_LIMIT = 4.0
# Mean-field rounds: the second lets squares settled by the first pull on the others.
MATCH_ROUNDS = 2
# A square takes part when the reader thinks it more likely a piece than empty.
_PIECE_PROBABILITY = 0.5


@dataclass(frozen=True)
class MatcherRecipe:
    """How a square matcher is made from a dataset's training boards."""

    epochs: int = 3
    boards_per_batch: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    embedding: int = 64
    seed: int = 0

    def to_dict(self) -> dict:
        """JSON-ready form, stored in `matcher.json` (a changed recipe trains again)."""
        return asdict(self)


def _conv(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride, 1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SquareMatcher(nn.Module):
    """A 32 px cell -> a unit embedding; two cells' pair logit is `scale` times the cosine of
    their embeddings plus `bias`. A 4 px patch stem as the reader's, then two stride-2
    convolutions: about 0.4 M multiply-adds a cell."""

    def __init__(self, embedding: int = MatcherRecipe.embedding) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 4, 4),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            *_conv(32, 48, 2),
            *_conv(48, 64, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, embedding),
        )
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.tensor(-5.0))
        self.folded_for_inference = False

    def embed(self, cells: torch.Tensor) -> torch.Tensor:
        """M x 3 x 32 x 32 cells, values 0-1 -> M x `embedding` unit vectors."""
        pixels = (cells - 0.5) / 0.25
        if self.folded_for_inference:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return F.normalize(self.net(pixels), dim=-1)

    def fold_for_inference(self) -> SquareMatcher:
        """For reading (eval mode): each batch norm folded into the convolution before it, and
        the cells laid out channels-last, which together take a third off the network's time
        (outputs within rounding). Returns itself; a folded matcher is not saved."""
        layers, kept = list(self.net), []
        while layers:
            layer = layers.pop(0)
            if isinstance(layer, nn.Conv2d) and layers and isinstance(layers[0], nn.BatchNorm2d):
                layer = fuse_conv_bn_eval(layer, layers.pop(0))
            kept.append(layer)
        self.net = nn.Sequential(*kept)
        self.folded_for_inference = True
        return self

    def pair_logits(self, boards: torch.Tensor, pieces: torch.Tensor) -> torch.Tensor:
        """Boards B x 3 x 256 x 256 (uint8) and which of their cells to compare (B x 64,
        image order) -> B x 64 x 64 logits that two cells hold the same piece (0 where
        either is not compared). Only the compared cells are turned into floats: most of a
        board is empty squares."""
        cells = chosen_cells(boards, pieces).float().div_(255.0)
        compared = pieces.unsqueeze(2) & pieces.unsqueeze(1)
        return torch.where(compared, self.cell_pair_logits(cells, pieces), 0.0)

    def cell_pair_logits(self, cells: torch.Tensor, pieces: torch.Tensor) -> torch.Tensor:
        """B x 64 x 64 pair logits of the cells marked in `pieces` (B x 64), given as M x 3 x
        32 x 32 floats (0-1) in the order of `pieces.nonzero()`; pairs with an unmarked cell
        get the logit of two unrelated pictures (`bias`)."""
        embeddings = torch.zeros(*pieces.shape, self.net[-1].out_features)
        if len(cells):
            embeddings[pieces] = self.embed(cells)
        return self.scale * torch.einsum("bic,bjc->bij", embeddings, embeddings) + self.bias


def board_cells(boards: torch.Tensor) -> torch.Tensor:
    """B x 3 x S x S boards -> B x 64 x 3 x 32 x 32 cells in image order, of the same dtype
    (resized to 256 px first where S differs)."""
    size = GRID * CELL
    if boards.shape[-1] != size:
        resized = F.interpolate(boards.float(), size=(size, size), mode="bilinear", antialias=True)
        floating = boards.is_floating_point()
        boards = resized if floating else resized.round_().clamp_(0, 255).to(boards.dtype)
    cells = boards.unfold(2, CELL, CELL).unfold(3, CELL, CELL)  # B 3 8 8 32 32
    return cells.permute(0, 2, 3, 1, 4, 5).reshape(len(boards), SQUARES, 3, CELL, CELL)


def chosen_cells(boards: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """The cells `chosen` (B x 64, image order) of B x 3 x S x S boards, M x 3 x 32 x 32 in
    the order of `chosen.nonzero()`, gathered without copying the others."""
    if boards.shape[-1] != GRID * CELL:
        return board_cells(boards)[chosen]
    grid = boards.unfold(2, CELL, CELL).unfold(3, CELL, CELL)  # B 3 8 8 32 32
    board, cell = chosen.nonzero(as_tuple=True)
    return grid[board, :, cell // GRID, cell % GRID]


@torch.inference_mode()
def with_look_alikes(
    matcher: SquareMatcher | None, boards: torch.Tensor, log_probs: torch.Tensor
) -> torch.Tensor:
    """The reader's square log-probabilities (B x 64 x 13, image order) of `boards` (uint8 B
    x 3 x S x S) with each square weighing the squares that look like it or unlike it
    (`MATCH_WEIGHT`, `MATCH_ROUNDS`); unchanged where `matcher` is None. Empty squares are
    neither compared nor moved towards or away from empty."""
    if matcher is None or not len(log_probs):
        return log_probs
    pieces = log_probs[..., 0].exp() < _PIECE_PROBABILITY
    log_odds = matcher.pair_logits(boards, pieces)
    log_odds = log_odds.clamp(-MATCH_LOG_ODDS_LIMIT, MATCH_LOG_ODDS_LIMIT)
    log_odds = log_odds * (1 - torch.eye(SQUARES))
    # The matcher compares pieces and says nothing of emptiness: each square keeps its
    # probability of being empty, and the pull shares out only the rest among the pieces.
    empty, piece_log_probs = log_probs[..., :1], log_probs[..., 1:]
    piece_mass = torch.log(-torch.expm1(empty.clamp(max=-1e-7)))
    joined = log_probs
    for _ in range(MATCH_ROUNDS):
        pull = torch.einsum("bij,bjc->bic", log_odds, joined[..., 1:].exp())
        shared = (piece_log_probs + MATCH_WEIGHT * pull).log_softmax(dim=-1) + piece_mass
        joined = torch.cat([empty, shared], dim=-1)
    return joined


# --------------------------------------------------------------------------- training


def recoloured(cells: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training boards' cells (B x 64 x 3 x 32 x 32, 0-1), each board recoloured as a whole
    (its channels swapped, at random inverted or grey, contrast scaled) so that colours do not
    name the pieces, and each cell changed a little as highlights and resampling change
    squares (tint, brightness, noise), and each board's cells shifted by up to 2 px."""
    count = len(cells)
    order = torch.argsort(torch.rand(count, 3, generator=generator), dim=1)
    cells = torch.gather(cells, 2, order.view(count, 1, 3, 1, 1).expand_as(cells))
    inverted = torch.rand(count, 1, 1, 1, 1, generator=generator) < 0.3
    cells = torch.where(inverted, 1 - cells, cells)
    grey = torch.rand(count, 1, 1, 1, 1, generator=generator) < 0.3
    cells = torch.where(grey, cells.mean(dim=2, keepdim=True).expand_as(cells), cells)
    contrast = 0.6 + 0.8 * torch.rand(count, 1, 1, 1, 1, generator=generator)
    cells = (cells - 0.5) * contrast + 0.5
    tinted = torch.rand(count, SQUARES, 1, 1, 1, generator=generator) < 0.3
    tint = (torch.rand(count, SQUARES, 3, 1, 1, generator=generator) - 0.5) * 0.2 * tinted
    brightness = (torch.rand(count, SQUARES, 1, 1, 1, generator=generator) - 0.5) * 0.1
    cells = cells + tint + brightness
    shifts = torch.randint(-2, 3, (count, 2), generator=generator).tolist()
    cells = torch.stack(
        [torch.roll(board, (dy, dx), (2, 3)) for board, (dy, dx) in zip(cells, shifts, strict=True)]
    )
    noise = torch.randn(cells.shape, generator=generator) * 0.02
    return (cells + noise).clamp(0, 1)


def pair_loss(matcher: SquareMatcher, cells: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of every pair of piece squares of each board (cells B x 64 x 3 x
    32 x 32, labels B x 64 image order): the same piece or not."""
    pieces = labels > 0
    logits = matcher.cell_pair_logits(cells[pieces], pieces)
    same = (labels.unsqueeze(2) == labels.unsqueeze(1)).float()
    pairs = pieces.unsqueeze(2) & pieces.unsqueeze(1) & ~torch.eye(SQUARES, dtype=torch.bool)
    return F.binary_cross_entropy_with_logits(logits[pairs], same[pairs])


def train_square_matcher(
    data_dir: str | Path, recipe: MatcherRecipe = MatcherRecipe(), workers: int = 2
) -> tuple[SquareMatcher, dict[str, float]]:
    """Train a matcher on `data_dir`'s train split (boards cut at their labelled boxes);
    returns it (eval mode) and its figures on the val split (`matcher_figures`)."""
    from chessvlm.reader.data import image_order_labels, load_board_set, read_split

    def cells_and_labels(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        boards = load_board_set(
            data_dir, read_split(data_dir, split), GRID * CELL, workers=workers, desc=split
        )
        return boards.images, image_order_labels(boards.labels, boards.flipped)

    images, labels = cells_and_labels("train")
    generator = torch.Generator().manual_seed(recipe.seed)
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        matcher = SquareMatcher(recipe.embedding)
    optimiser = torch.optim.AdamW(
        matcher.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    per_epoch = len(images) // recipe.boards_per_batch
    steps = per_epoch * recipe.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.learning_rate, steps)
    matcher.train()
    with tqdm(total=steps, desc="square matcher", leave=False) as bar:
        for _ in range(recipe.epochs):
            order = torch.randperm(len(images), generator=generator)
            for step in range(per_epoch):
                start = step * recipe.boards_per_batch
                chosen = order[start : start + recipe.boards_per_batch]
                cells = recoloured(board_cells(images[chosen]).float().div_(255.0), generator)
                loss = pair_loss(matcher, cells, labels[chosen])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
    matcher.eval()
    return matcher, matcher_figures(matcher, *cells_and_labels("val"))


@torch.inference_mode()
def matcher_figures(
    matcher: SquareMatcher, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """On boards (uint8 B x 3 x 256 x 256) with image-order labels: of the pairs of piece
    squares, the share of same-piece pairs the matcher calls the same (logit > 0), and of
    the pairs it calls the same, the share that are."""
    pieces = labels > 0
    logits = [
        matcher.pair_logits(images[start : start + 64], pieces[start : start + 64])
        for start in range(0, len(images), 64)
    ]
    said_same = torch.cat(logits) > 0
    pairs = pieces.unsqueeze(2) & pieces.unsqueeze(1) & ~torch.eye(SQUARES, dtype=torch.bool)
    same = (labels.unsqueeze(2) == labels.unsqueeze(1)) & pairs
    said_same &= pairs
    found = int((said_same & same).sum())
    return {
        "boards": len(labels),
        "same_piece_pairs_found": found / max(int(same.sum()), 1),
        "said_same_precision": found / max(int(said_same.sum()), 1),
    }


# --------------------------------------------------------------------------- files


def save_square_matcher(
    matcher: SquareMatcher, out: str | Path, recipe: MatcherRecipe, figures: dict
) -> Path:
    """Write `matcher.safetensors` and `matcher.json` (recipe and validation figures) into
    `out`, each atomically."""
    return save_network(matcher, out, MATCHER_FILES, {"recipe": recipe.to_dict(), "val": figures})


def load_square_matcher(path: str | Path = DEFAULT_SQUARE_MATCHER) -> SquareMatcher:
    """A saved matcher, in eval mode; a clear error naming the folder when it is missing or
    does not fit its config."""
    return load_network(
        path,
        MATCHER_FILES,
        "square matcher",
        lambda config: SquareMatcher(int(config["recipe"]["embedding"])),
    )


@cache
def default_square_matcher() -> SquareMatcher:
    """The matcher shipped in the package, loaded once per process, folded for reading."""
    return load_square_matcher(DEFAULT_SQUARE_MATCHER).fold_for_inference()
