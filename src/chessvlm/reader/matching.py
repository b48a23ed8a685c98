"""Look-alike squares: the pieces of one board are drawn with one design, so two squares
holding the same piece look the same, whatever the design.

On a design it never saw, the reader confuses shapes square by square (a bishop read as a
pawn), yet the board itself says which squares hold the same piece: all its pawns share one
picture, and a bishop's picture differs from theirs. `SquareMatcher` embeds each square's
picture (one 32 px cell of the 256 px board) twice: one embedding agrees when two squares hold
the same piece, the other when they hold the same shape in either colour (a white and a black
rook), since the two sides of a design share their outlines. It learns to match pictures, not
to name pieces: every training board is recoloured as a whole (channels swapped, inverted,
grey, contrast), so the class of a picture cannot be learnt from its colours, only whether two
pictures on one board are the same.

`with_look_alikes` then lets each square's reading weigh the others' (a mean-field step of a
pairwise model): for each class, a square gains the matcher's log-odds that it holds the same
piece as each other square, times that square's probability of the class, and the log-odds
that it holds the same shape, times that square's probability of the class's other colour. A
square like confident pawns is pulled towards pawn; a square unlike all of them is pushed away
from pawn; a white square shaped like a sure black rook is pulled towards white rook.
See docs/reader.md, "Look-alike squares".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from chessvlm.reader.default import DEFAULT_SQUARE_MATCHER
from chessvlm.reader.model import GRID, fold_batch_norms, fold_normalisation
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
# The relations the matcher scores for two squares: the same piece, and the same piece in
# either colour (the index of each piece class's other colour, among the 12 piece classes of
# `SQUARE_CLASSES`: P N B R Q K p n b r q k).
RELATIONS = ("same piece", "same shape")
_OTHER_COLOUR = [*range(6, 12), *range(6)]
# Mean-field rounds: the second lets squares settled by the first pull on the others.
MATCH_ROUNDS = 2
# The pixels' normalisation before the stem (values 0-1).
_PIXEL_MEAN, _PIXEL_STD = 0.5, 0.25
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
    # Whether to train on the boards drawn in the piece sets made here from 3D models
    # (`chessvlm.meshes`): with their pieces in its pairs, the matcher read 1.3 points fewer
    # of the test's unseen-design boards exactly over four seeds, though the inner held-out
    # designs' about as many (docs/reader.md, twenty-sixth session).
    mesh_boards: bool = False

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
    """A 32 px cell -> one unit embedding per relation (`RELATIONS`); two cells' pair logit
    for a relation is its `scale` times the cosine of their embeddings plus its `bias`. A 4 px
    patch stem as the reader's, then two stride-2 convolutions: about 0.4 M multiply-adds a
    cell."""

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
            nn.Linear(64, len(RELATIONS) * embedding),
        )
        self.embedding = embedding
        self.scale = nn.Parameter(torch.full((len(RELATIONS), 1, 1, 1), 10.0))
        self.bias = nn.Parameter(torch.full((len(RELATIONS), 1, 1, 1), -5.0))
        self.folded_for_inference = False

    def embed(self, cells: torch.Tensor) -> torch.Tensor:
        """M x 3 x 32 x 32 cells, values 0-1 -> M x relations x `embedding` unit vectors."""
        if self.folded_for_inference:
            pixels = cells.contiguous(memory_format=torch.channels_last)
        else:
            pixels = (cells - _PIXEL_MEAN) / _PIXEL_STD
        return F.normalize(self.net(pixels).view(len(cells), len(RELATIONS), -1), dim=-1)

    def fold_for_inference(self) -> SquareMatcher:
        """For reading (eval mode): the pixels' normalisation folded into the stem, which does
        not pad, and each batch norm into the convolution before it; the cells are read
        channels-last. Together they take about half off the network's time (outputs within
        rounding). Returns itself; a folded matcher is not saved."""
        with torch.no_grad():
            stem = self.net[0]
            fold_normalisation(stem, torch.full((3,), _PIXEL_MEAN), torch.full((3,), _PIXEL_STD))
            fold_batch_norms(self.net)
        self.folded_for_inference = True
        return self

    def pair_logits(self, boards: torch.Tensor, pieces: torch.Tensor) -> torch.Tensor:
        """Boards B x 3 x 256 x 256 (uint8) and which of their cells to compare (B x 64,
        image order) -> relations x B x 64 x 64 logits that two cells hold the same piece and
        the same shape (0 where either is not compared). Only the compared cells are turned
        into floats: most of a board is empty squares."""
        cells = chosen_cells(boards, pieces).float().div_(255.0)
        compared = pieces.unsqueeze(2) & pieces.unsqueeze(1)
        return torch.where(compared, self.cell_pair_logits(cells, pieces), 0.0)

    def cell_pair_logits(self, cells: torch.Tensor, pieces: torch.Tensor) -> torch.Tensor:
        """Relations x B x 64 x 64 pair logits of the cells marked in `pieces` (B x 64), given
        as M x 3 x 32 x 32 floats (0-1) in the order of `pieces.nonzero()`; pairs with an
        unmarked cell get the logit of two unrelated pictures (`bias`)."""
        embeddings = torch.zeros(*pieces.shape, len(RELATIONS), self.embedding)
        if len(cells):
            embeddings[pieces] = self.embed(cells)
        cosines = torch.einsum("birc,bjrc->rbij", embeddings, embeddings)
        return self.scale * cosines + self.bias


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
    the order of `chosen.nonzero()`, laid out channels-last, gathered without copying the
    others (boards laid out channels-last, as the reader's are, are not copied at all)."""
    if boards.shape[-1] != GRID * CELL:
        return board_cells(boards)[chosen]
    rows = boards.permute(0, 2, 3, 1).reshape(len(boards), GRID, CELL, GRID, CELL, 3)
    board, cell = chosen.nonzero(as_tuple=True)
    return rows[board, cell // GRID, :, cell % GRID].permute(0, 3, 1, 2)


@torch.inference_mode()
def with_look_alikes(
    matcher: SquareMatcher | None, boards: torch.Tensor, log_probs: torch.Tensor
) -> torch.Tensor:
    """The reader's square log-probabilities (B x 64 x 13, image order) of `boards` (uint8 B
    x 3 x S x S) with each square weighing the squares that look like it or unlike it, as
    the same piece or as the same shape in the other colour (`MATCH_WEIGHT`, `MATCH_ROUNDS`);
    unchanged where `matcher` is None. Empty squares are neither compared nor moved towards
    or away from empty."""
    if matcher is None or not len(log_probs):
        return log_probs
    pieces = log_probs[..., 0].exp() < _PIECE_PROBABILITY
    log_odds = matcher.pair_logits(boards, pieces)
    log_odds = log_odds.clamp(-MATCH_LOG_ODDS_LIMIT, MATCH_LOG_ODDS_LIMIT)
    same_piece, same_shape = log_odds * (1 - torch.eye(SQUARES))
    # The matcher compares pieces and says nothing of emptiness: each square keeps its
    # probability of being empty, and the pull shares out only the rest among the pieces.
    empty, piece_log_probs = log_probs[..., :1], log_probs[..., 1:]
    piece_mass = torch.log(-torch.expm1(empty.clamp(max=-1e-7)))
    joined = log_probs
    for _ in range(MATCH_ROUNDS):
        probabilities = joined[..., 1:].exp()
        pull = torch.einsum("bij,bjc->bic", same_piece, probabilities)
        pull += torch.einsum("bij,bjc->bic", same_shape, probabilities[..., _OTHER_COLOUR])
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
    32 x 32, labels B x 64 image order), summed over the relations: the same piece or not,
    the same shape or not."""
    pieces = labels > 0
    logits = matcher.cell_pair_logits(cells[pieces], pieces)
    pairs = _piece_pairs(pieces)
    return sum(
        F.binary_cross_entropy_with_logits(relation_logits[pairs], same[pairs].float())
        for relation_logits, same in zip(logits, _related(labels), strict=True)
    )


def _piece_pairs(pieces: torch.Tensor) -> torch.Tensor:
    """B x 64 x 64: the pairs of two different squares that both hold pieces (`pieces` B x
    64), the pairs the matcher learns from and is scored on."""
    return pieces.unsqueeze(2) & pieces.unsqueeze(1) & ~torch.eye(SQUARES, dtype=torch.bool)


def _related(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For image-order labels B x 64 (0 empty, 1-12 `SQUARE_CLASSES`): B x 64 x 64 whether
    two squares hold the same piece, and the same shape in either colour (`RELATIONS`)."""
    shapes = (labels - 1) % 6
    return (
        labels.unsqueeze(2) == labels.unsqueeze(1),
        shapes.unsqueeze(2) == shapes.unsqueeze(1),
    )


def train_square_matcher(
    data_dir: str | Path, recipe: MatcherRecipe = MatcherRecipe(), workers: int = 2
) -> tuple[SquareMatcher, dict[str, float]]:
    """Train a matcher on `data_dir`'s train split (boards cut at their labelled boxes; those
    of the mesh sets only if `recipe.mesh_boards`); returns it (eval mode) and its figures on
    the whole val split (`matcher_figures`)."""
    from chessvlm.reader.data import image_order_labels, load_board_set, read_split

    def cells_and_labels(records: list[dict], split: str) -> tuple[torch.Tensor, torch.Tensor]:
        boards = load_board_set(data_dir, records, GRID * CELL, workers=workers, desc=split)
        return boards.images, image_order_labels(boards.labels, boards.flipped)

    images, labels = cells_and_labels(matcher_training_records(data_dir, recipe), "train")
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
    return matcher, matcher_figures(matcher, *cells_and_labels(read_split(data_dir, "val"), "val"))


def matcher_training_records(data_dir: str | Path, recipe: MatcherRecipe) -> list[dict]:
    """The records of `data_dir`'s train split that `recipe` trains a matcher on."""
    from chessvlm.reader.data import read_split
    from chessvlm.rendering import record_piece_set

    def drawn_from_meshes(record: dict) -> bool:
        source = record_piece_set(record)
        return source is not None and source.loader == "mesh"

    records = read_split(data_dir, "train")
    return [r for r in records if recipe.mesh_boards or not drawn_from_meshes(r)]


@torch.inference_mode()
def matcher_figures(
    matcher: SquareMatcher, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """On boards (uint8 B x 3 x 256 x 256) with image-order labels, for each relation
    (`RELATIONS`): of the pairs of piece squares so related, the share the matcher calls
    related (logit > 0), and of the pairs it calls related, the share that are."""
    pieces = labels > 0
    logits = [
        matcher.pair_logits(images[start : start + 64], pieces[start : start + 64])
        for start in range(0, len(images), 64)
    ]
    pairs = _piece_pairs(pieces)
    figures: dict[str, float] = {"boards": len(labels)}
    said_related = torch.cat(logits, 1) > 0
    for name, said, truth in zip(RELATIONS, said_related, _related(labels), strict=True):
        said, truth = said & pairs, truth & pairs
        found = int((said & truth).sum())
        key = name.replace(" ", "_")
        figures[f"{key}_pairs_found"] = found / max(int(truth.sum()), 1)
        figures[f"{key}_precision"] = found / max(int(said.sum()), 1)
    return figures


# --------------------------------------------------------------------------- files


def save_square_matcher(
    matcher: SquareMatcher, out: str | Path, recipe: MatcherRecipe, figures: dict
) -> Path:
    """Write `matcher.safetensors` and `matcher.json` (recipe, relations and validation
    figures) into `out`, each atomically."""
    config = {"recipe": recipe.to_dict(), "relations": list(RELATIONS), "val": figures}
    return save_network(matcher, out, MATCHER_FILES, config)


def load_square_matcher(path: str | Path = DEFAULT_SQUARE_MATCHER) -> SquareMatcher:
    """A saved matcher, in eval mode; a clear error naming the folder when it is missing, or
    the file when it was made for other relations or does not fit its config."""
    return load_network(path, MATCHER_FILES, "square matcher", _matcher_for)


def _matcher_for(config: dict) -> SquareMatcher:
    """The untrained matcher a saved config describes; a `ValueError` for one made to score
    other relations than this version's (`RELATIONS`)."""
    made_for = config.get("relations", ["same piece"])
    if made_for != list(RELATIONS):
        raise ValueError(
            f"it scores {made_for}, this version reads "
            f"{list(RELATIONS)}: remake it with `chessvlm reader build-default`"
        )
    return SquareMatcher(int(config["recipe"]["embedding"]))


@cache
def default_square_matcher() -> SquareMatcher:
    """The matcher shipped in the package, loaded once per process, folded for reading."""
    return load_square_matcher(DEFAULT_SQUARE_MATCHER).fold_for_inference()
