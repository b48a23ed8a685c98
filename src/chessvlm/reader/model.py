"""Board reader networks: encoders whose features line up with the 64 squares, and their heads.

Both encoders end in an 8x8 feature map whose cell (row, col) sees exactly the image square
at that place: the CNN through a stem and pools whose strides multiply to one square, the CLIP
ViT through an input of 8 patches a side (256 px for ViT-B/32, not the seed's 224 px, whose
7x7 patch grid straddles the squares).

The square head classifies each cell as it appears in the image; the meta head says whether
black is at the bottom ("flipped") and, where the labels make it learnable, whether black is
to move; the edge view says whether coordinates are drawn in the board's edge squares.

Boards in users' images do not always fill the frame (a margin, a frame, coordinates outside
the squares), so a small `BoardLocator` first finds the 8x8 squares in the whole image at
`LOCATOR_SIZE` px; the square-aligned encoder then reads the crop.

Image-order predictions are turned into the standard square order with the predicted
orientation (`image_cell_squares`), so a flipped board is read rotated, never mirrored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import chess
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from chessvlm.errors import ChessVLMError, ConfigError
from chessvlm.positions import SQUARE_CLASSES

NUM_CLASSES = len(SQUARE_CLASSES)
GRID = 8
ENCODERS = ("cnn", "clip")
# The last two come from the coordinates view alone: the orientation those letters show,
# trained so that view learns them even though pawns already tell most boards' orientation,
# and whether the board shows coordinates at all (a pawnless board without them cannot show
# its orientation, and the reader says so rather than guess).
META_OUTPUTS = ("flipped", "black_to_move", "flipped_by_coordinates", "coordinates")
_EDGE_OUTPUTS = 2  # the last two of META_OUTPUTS
# The locator sees the whole image at this size: enough to place a board's edges within a
# fraction of a square, at a sixteenth of the reader's pixels per board.
LOCATOR_SIZE = 128
# Self-attention layers over the 64 square features: a piece design the reader never saw is
# easier to read against the rest of its board (the shape that stands eight times on one
# rank is a pawn; both kings share a shape in two colours).
CONTEXT_LAYERS = 2
# Channels of the coordinates view: 8 read as well as 16 and cost 2.3x less to read and 2.7x
# less to train (bench/bench_reader_parts.py, docs/reader.md).
EDGE_CHANNELS = 8
# A reader trained by `train_reader` reads each board three times: as cut, with its middle 97%
# filling the view, and with 1.5% of its edge repeated around it. On piece designs it never
# saw, the mean of the three read 4-5 points more boards exactly after 12 minutes of training,
# at half the speed; a three-member ensemble trained 12 epochs read none more (docs/reader.md).
ZOOM_VIEWS = (0.97, 1.03)
# The widths a view may take, relative to the board's: beyond them a board is no longer read
# as it trained.
ZOOM_VIEW_LIMITS = (0.5, 2.0)
_PAWN_CLASSES = (SQUARE_CLASSES.index("P"), SQUARE_CLASSES.index("p"))
_KING_CLASSES = (SQUARE_CLASSES.index("K"), SQUARE_CLASSES.index("k"))
_BACK_RANK_SQUARES = [*range(0, 8), *range(56, 64)]
_WHITE_CLASSES = tuple(SQUARE_CLASSES.index(piece) for piece in "PNBRQK")
_BLACK_CLASSES = tuple(SQUARE_CLASSES.index(piece) for piece in "pnbrqk")
# Counts no legal position exceeds (python-chess's status calls them too many pawns or pieces).
_COUNT_LIMITS = (
    ((_PAWN_CLASSES[0],), 8),
    ((_PAWN_CLASSES[1],), 8),
    (_WHITE_CLASSES, 16),
    (_BLACK_CLASSES, 16),
)
# CLIP's own pixel statistics; the CNN learns its scale, so plain centring is enough there.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ReaderSpec:
    """What to build: the encoder and the input size (the board is resized to a square).

    `clip_model` names pretrained CLIP weights (hub id or local folder); without it the ViT is
    built from `clip_config` (`CLIPVisionConfig` fields; the defaults are ViT-B/32) with random
    weights.
    """

    encoder: str = "cnn"
    image_size: int = 256
    widths: tuple[int, ...] = (16, 32, 64, 128)
    clip_model: str | None = None
    clip_config: dict[str, Any] = field(default_factory=dict)
    freeze_encoder: bool = False
    context_layers: int = CONTEXT_LAYERS
    edge_channels: int = EDGE_CHANNELS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored in the checkpoint's `reader.json`."""
        data = asdict(self)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReaderSpec:
        """Inverse of `to_dict`. Specs written before the context layers had none, and those
        written before `edge_channels` have a 16-channel coordinates view."""
        widths = tuple(data.get("widths", cls.widths))
        return cls(**{"context_layers": 0, "edge_channels": 16, **data, "widths": widths})


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SquareCNN(nn.Module):
    """A small CNN whose output cells are the board's squares.

    A non-overlapping stem cuts each square into (2^k)^2 patches, k = len(widths) - 1; each of
    k stages is a centred 3x3 convolution and a 2x2 pool, which ends at one cell per square,
    centred on it (stride-2 convolutions would centre cells on the squares' corners). A last
    3x3 convolution lets each square see its neighbours. The default, 4 x 4 px patches at
    256 px and three stages, costs 1.13x the training step and 1.17x the reading time of
    8 x 8 px patches and two stages (`widths` 32, 64, 128), and after 20 minutes of training
    read 0.4 points more squares of seen designs and 0.6 more of unseen ones (docs/reader.md).
    """

    def __init__(self, image_size: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        stages = len(widths) - 1
        square = image_size // GRID
        if stages < 1 or image_size % GRID or square % 2**stages:
            raise ChessVLMError(
                f"CNN reader: image size {image_size} does not split into 8 squares of "
                f"{2**stages} x {2**stages} patches (widths {list(widths)})"
            )
        stem = square // 2**stages
        layers: list[nn.Module] = [
            nn.Conv2d(3, widths[0], stem, stride=stem),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for in_channels, out_channels in pairwise(widths):
            layers += [_conv_block(in_channels, out_channels), nn.MaxPool2d(2)]
        layers.append(_conv_block(widths[-1], widths[-1]))
        self.layers = nn.Sequential(*layers)
        self.out_channels = widths[-1]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """`pixels` B x 3 x S x S (normalised) -> features B x C x 8 x 8."""
        return self.layers(pixels)


class EdgeReader(nn.Module):
    """A small CNN over the left column and the bottom row of squares, where boards draw
    their coordinates (rank digits and file letters), the surest sign of the orientation.

    The encoder's features serve the square head, which must ignore those small letters; this
    separate view keeps them. The bottom row is turned on its side so that both strips share
    the weights; each ends in one feature vector per square along the strip.
    """

    def __init__(self, image_size: int, channels: int = EDGE_CHANNELS) -> None:
        super().__init__()
        # Coordinates are about a sixth of a square tall (5 px on a 256 px board): a stride of
        # a sixteenth of a square keeps their strokes, where an eighth blurred them away.
        stem = max(1, image_size // GRID // 16)
        self.layers = nn.Sequential(
            nn.Conv2d(3, channels, stem, stride=stem),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            _conv_block(channels, 2 * channels),
            nn.MaxPool2d(2),
            _conv_block(2 * channels, 2 * channels),
            nn.MaxPool2d(2),
            _conv_block(2 * channels, channels),
            nn.AdaptiveAvgPool2d((GRID, 1)),
        )
        self.out_features = 2 * channels * GRID

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """`pixels` B x 3 x S x S (normalised) -> B x `out_features`."""
        square = pixels.shape[-1] // GRID
        left = pixels[..., :square]
        bottom = pixels[..., -square:, :].transpose(2, 3)
        strips = self.layers(torch.cat([left, bottom])).flatten(1)
        # Unflattened, not split by len(pixels): a split by the batch size fixes that size
        # in an exported graph (`chessvlm export --format onnx`).
        left_strips, bottom_strips = strips.unflatten(0, (2, -1))
        return torch.cat([left_strips, bottom_strips], dim=1)


class ClipSquareEncoder(nn.Module):
    """A CLIP vision tower fed 8 patches a side, its patch tokens laid out as the 8x8 board."""

    def __init__(self, spec: ReaderSpec, *, pretrained: bool) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if pretrained and spec.clip_model:
            try:
                self.clip = CLIPVisionModel.from_pretrained(spec.clip_model)
            except OSError as error:
                raise ChessVLMError(
                    f"cannot load CLIP weights {spec.clip_model!r} ({error}); pass a local folder "
                    "with the model files, or train from random weights without --clip_model"
                ) from None
            spec.clip_config = self.clip.config.to_dict()
        else:
            # A saved pretrained config keeps its own image size (7x7 position embeddings,
            # resampled at run time); a fresh ViT is built for 8x8 patches directly.
            config = CLIPVisionConfig(**{"image_size": spec.image_size, **spec.clip_config})
            self.clip = CLIPVisionModel(config)
        patch = self.clip.config.patch_size
        if spec.image_size != GRID * patch:
            raise ChessVLMError(
                f"CLIP patches of {patch} px need a {GRID * patch} px board so that each patch "
                f"is one square; got image size {spec.image_size}"
            )
        self.out_channels = self.clip.config.hidden_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """`pixels` B x 3 x S x S (normalised) -> patch features B x C x 8 x 8."""
        # Pretrained towers know a 7x7 grid: their position embeddings are resampled to 8x8.
        hidden = self.clip(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        patches = hidden[:, 1:, :]
        return patches.transpose(1, 2).reshape(pixels.shape[0], -1, GRID, GRID)


class SquareContext(nn.Module):
    """Transformer layers over the 8x8 cells, each cell a token with its learned place, added
    to the encoder's features (a residual, so zero layers is the identity)."""

    def __init__(self, channels: int, layers: int) -> None:
        super().__init__()
        self.places = nn.Parameter(torch.zeros(1, GRID * GRID, channels))
        layer = nn.TransformerEncoderLayer(
            channels,
            nhead=4,
            dim_feedforward=2 * channels,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features B x C x 8 x 8 -> the same, each cell informed by the others."""
        tokens = features.flatten(2).transpose(1, 2)
        mixed = self.layers(tokens + self.places)
        return features + mixed.transpose(1, 2).reshape_as(features)


class BoardLocator(nn.Module):
    """Where the board's 8x8 squares are in a whole image: a small CNN over the image resized
    to `LOCATOR_SIZE` px, regressing the box (left, top, right, bottom) as fractions of the
    image's width and height. Borders, frames and coordinates outside are not part of the box.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, widths[0], 4, stride=4),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for in_channels, out_channels in pairwise(widths):
            layers += [_conv_block(in_channels, out_channels), nn.MaxPool2d(2)]
        self.layers = nn.Sequential(*layers, _conv_block(widths[-1], 16))
        cells = LOCATOR_SIZE // 4 // 2 ** (len(widths) - 1)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * cells * cells, 64), nn.ReLU(inplace=True), nn.Linear(64, 4)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`images` B x 3 x L x L in [0, 1] (L = `LOCATOR_SIZE`) -> boxes B x 4 in [0, 1]."""
        return self.head(self.layers((images - 0.5) / 0.25)).sigmoid()


class BoardReader(nn.Module):
    """Board locator + encoder + per-square 13-class head + meta head (`META_OUTPUTS`)."""

    def __init__(self, spec: ReaderSpec, *, pretrained: bool = True) -> None:
        super().__init__()
        if spec.encoder not in ENCODERS:
            raise ChessVLMError(f"unknown encoder {spec.encoder!r}; choose from {ENCODERS}")
        self.spec = spec
        if spec.encoder == "cnn":
            self.encoder: nn.Module = SquareCNN(spec.image_size, spec.widths)
            mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
        else:
            self.encoder = ClipSquareEncoder(spec, pretrained=pretrained)
            mean, std = _CLIP_MEAN, _CLIP_STD
        if spec.freeze_encoder:
            self.encoder.requires_grad_(False)
        channels = self.encoder.out_channels
        self.context = SquareContext(channels, spec.context_layers) if spec.context_layers else None
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.square_head = nn.Conv2d(channels, NUM_CLASSES, 1)
        # Orientation is global (which side's pawns advance where), so the meta head sees every
        # cell in place, not a pooled average, and the coordinates through its own edge view.
        self.meta_cells = nn.Sequential(nn.Conv2d(channels, 8, 1), nn.ReLU(inplace=True))
        self.edges = EdgeReader(spec.image_size, spec.edge_channels)
        self.meta_head = nn.Sequential(
            nn.Linear(8 * GRID * GRID + self.edges.out_features, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, len(META_OUTPUTS) - _EDGE_OUTPUTS),
        )
        self.coordinates_head = nn.Linear(self.edges.out_features, _EDGE_OUTPUTS)
        self.locator = BoardLocator()
        # Set by `fold_for_inference`, which moves the pixel statistics (CNN only) and the
        # batch norms into the convolutions.
        self.folded_for_inference = False
        self.normalises_pixels = True
        # Set from a checkpoint's `zoom_views` when it is loaded; training reads boards as cut.
        self.zoom_views: tuple[float, ...] = ()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`images` B x 3 x S x S in [0, 1] -> square logits B x 64 x 13 (image order) and
        meta logits B x 4 (`META_OUTPUTS`). With `zoom_views`, the board is also read in each
        zoomed view (`zoomed_view`), and the outputs are the means over the views of the
        square log-probabilities (valid logits) and of the meta logits."""
        if not self.zoom_views:
            return self._read(images)
        # One view at a time: a batch three times as large read 1.4x slower a board.
        outputs = [
            self._read(view)
            for view in (images, *(zoomed_view(images, span) for span in self.zoom_views))
        ]
        squares = torch.stack([logits.log_softmax(dim=-1) for logits, _ in outputs]).mean(0)
        return squares, torch.stack([meta for _, meta in outputs]).mean(0)

    def _read(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = (images - self.mean) / self.std if self.normalises_pixels else images
        features = self.encoder(pixels)
        if self.context is not None:
            features = self.context(features)
        squares = self.square_head(features).flatten(2).transpose(1, 2)
        edges = self.edges(pixels)
        meta = self.meta_head(torch.cat([self.meta_cells(features).flatten(1), edges], dim=1))
        return squares, torch.cat([meta, self.coordinates_head(edges)], dim=1)

    def fold_for_inference(self) -> None:
        """For inference (eval mode): fold the pixel statistics into the two stems that see
        the pixels, so that no pass over the whole batch normalises it (a quarter of the CNN
        reader's CPU time), and every batch norm into the convolution before it (a tenth).
        Exact up to rounding, as the stems do not pad. A folded reader is not saved."""
        if self.folded_for_inference:
            return
        if self.spec.encoder == "cnn":
            for stem in (self.encoder.layers[0], self.edges.layers[0]):
                fold_normalisation(stem, self.mean.flatten(), self.std.flatten())
            self.normalises_pixels = False
        for module in self.modules():
            if isinstance(module, nn.Sequential):
                fold_batch_norms(module)
        self.folded_for_inference = True

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint must carry: all, except a frozen pretrained encoder's."""
        if self.folded_for_inference:
            raise ChessVLMError("a reader folded for inference has no checkpoint weights")
        skip_encoder = self.spec.freeze_encoder and self.spec.clip_model is not None
        return {
            name: tensor
            for name, tensor in self.state_dict().items()
            if not (skip_encoder and name.startswith("encoder."))
        }


class ReaderEnsemble(nn.Module):
    """Readers of one spec trained apart (other seeds), read as one network: each square's
    log-probabilities and each meta logit are the members' mean, and the board's box is the
    mean of their locators' boxes. On piece designs none of them saw, their mistakes differ,
    so the mean reads more boards right than any one of them (docs/reader.md).

    With `always` set, only the first `always` members read every board; the others read
    just the boards on which those are unsure (`unsure_boards`: some square's top
    probability in their mean under `unsure_below`), and those boards get the mean of all.
    Sure boards, which more members would rarely change, then cost only the first ones.
    Every member's locator finds every board: their mean box reads more boards right.
    """

    def __init__(
        self, members: list[BoardReader], always: int | None = None, unsure_below: float = 1.0
    ) -> None:
        super().__init__()
        if len(members) < 2:
            raise ChessVLMError("an ensemble needs at least two readers")
        if any(member.spec != members[0].spec for member in members):
            raise ChessVLMError("an ensemble's readers must share one spec (encoder and sizes)")
        always = len(members) if always is None else always
        if not 1 <= always <= len(members):
            raise ChessVLMError(f"{always} of {len(members)} members cannot read every board")
        if not 0.0 < unsure_below <= 1.0:
            raise ChessVLMError(f"unsure_below must be a probability in (0, 1]: {unsure_below}")
        self.members = nn.ModuleList(members)
        self.always = always
        self.unsure_below = unsure_below

    @property
    def spec(self) -> ReaderSpec:
        """The members' common spec."""
        return self.members[0].spec

    @property
    def locator(self) -> nn.Module:
        """A module whose box is the mean of the members' locators' boxes."""
        return _MeanLocator([member.locator for member in self.members])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As `BoardReader.forward`; the square outputs are log-probabilities (valid logits)."""
        squares, meta = self._first_means(images)
        if self.always < len(self.members):
            unsure = self.unsure_boards(squares).nonzero()[:, 0]
            if len(unsure):
                more = _summed_outputs(self.members[self.always :], images[unsure])
                squares[unsure], meta[unsure] = self._all_means(
                    (squares[unsure], meta[unsure]), more
                )
        return squares, meta

    def forward_every_member(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What `forward` gives, with every member reading every board and the sure boards
        then taking the first members' mean: the same numbers with no data-dependent shapes,
        for graphs that run one way for all boards (ONNX)."""
        squares, meta = self._first_means(images)
        if self.always == len(self.members):
            return squares, meta
        more = _summed_outputs(self.members[self.always :], images)
        all_squares, all_meta = self._all_means((squares, meta), more)
        unsure = self.unsure_boards(squares)
        return (
            torch.where(unsure[:, None, None], all_squares, squares),
            torch.where(unsure[:, None], all_meta, meta),
        )

    def _first_means(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        squares, meta = _summed_outputs(self.members[: self.always], images)
        return squares / self.always, meta / self.always

    def _all_means(
        self, first_means: tuple[torch.Tensor, torch.Tensor], more_sums: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's mean, from the first members' means and the other members' sums."""
        squares, meta = (
            (mean * self.always + more) / len(self.members)
            for mean, more in zip(first_means, more_sums, strict=True)
        )
        return squares, meta

    def unsure_boards(self, log_probs: torch.Tensor) -> torch.Tensor:
        """Boards (B x 64 x 13 square log-probabilities) with some square whose top
        probability is under `unsure_below`, as a B boolean mask."""
        return log_probs.amax(dim=-1).amin(dim=-1) < math.log(self.unsure_below)

    def fold_for_inference(self) -> None:
        """Fold each member (`BoardReader.fold_for_inference`)."""
        for member in self.members:
            member.fold_for_inference()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Each member's checkpoint weights, under `members.<index>.`."""
        return {
            f"members.{index}.{name}": tensor
            for index, member in enumerate(self.members)
            for name, tensor in member.trainable_state_dict().items()
        }


def _summed_outputs(
    members: Iterable[BoardReader], images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sums over `members` of their square log-probabilities and meta logits."""
    outputs = [member(images) for member in members]
    squares = torch.stack([square_logits.log_softmax(-1) for square_logits, _ in outputs])
    return squares.sum(0), torch.stack([meta_logits for _, meta_logits in outputs]).sum(0)


class _MeanLocator(nn.Module):
    def __init__(self, locators: list[nn.Module]) -> None:
        super().__init__()
        self.locators = nn.ModuleList(locators)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([locator(images) for locator in self.locators]).mean(0)


def zoomed_view(images: torch.Tensor, span: float) -> torch.Tensor:
    """Boards `images` (B x 3 x S x S) as seen by a view `span` times the board's width,
    centred on it (bilinear): under 1 the middle of the board fills the view and its pieces
    look larger; over 1 the board's edge pixels are repeated around it."""
    theta = torch.tensor([[[span, 0.0, 0.0], [0.0, span, 0.0]]], dtype=images.dtype)
    # One grid for every board, so that an exported graph keeps its batch size free.
    grid = F.affine_grid(theta, [1, *images.shape[1:]], align_corners=False)
    view = F.grid_sample(
        images,
        grid.expand(images.shape[0], -1, -1, -1),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return view.contiguous(memory_format=torch.channels_last)


def set_zoom_views(model: BoardReader | ReaderEnsemble, spans: Sequence[float]) -> None:
    """Make `model` (or each member of an ensemble) read every board also in a view of each
    of `spans` (`BoardReader.forward`); empty: as cut only."""
    views = checked_zoom_views(spans)
    members = model.members if isinstance(model, ReaderEnsemble) else [model]
    for member in members:
        member.zoom_views = views


def checked_zoom_views(spans: object) -> tuple[float, ...]:
    """`spans` as zoom views (`BoardReader.zoom_views`): a list of widths within
    `ZOOM_VIEW_LIMITS`, or a `ConfigError` saying what is wrong."""
    low, high = ZOOM_VIEW_LIMITS
    if not isinstance(spans, list | tuple) or not all(
        isinstance(span, int | float) and not isinstance(span, bool) and low <= span <= high
        for span in spans
    ):
        raise ConfigError(
            "zoom_views", f"must be a list of widths from {low:g} to {high:g}: {spans!r}"
        )
    return tuple(float(span) for span in spans)


@torch.no_grad()
def fold_normalisation(conv: nn.Conv2d, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make `conv(x)` what `conv((x - mean) / std)` was, per input channel; exact for a
    convolution without padding (every tap sees a pixel)."""
    scale = (1.0 / std).view(1, -1, 1, 1)
    conv.bias -= (conv.weight * (mean.view(1, -1, 1, 1) * scale)).sum(dim=(1, 2, 3))
    conv.weight *= scale


def fold_batch_norms(layers: nn.Sequential) -> None:
    """Replace each convolution followed by a batch norm in `layers` with one convolution
    that computes both (the norm's place keeps an identity, so indices stay valid)."""
    for index, (conv, norm) in enumerate(pairwise(list(layers))):
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            layers[index] = fuse_conv_bn_eval(conv, norm)
            layers[index + 1] = nn.Identity()


def image_cell_squares(flipped: bool) -> list[int]:
    """The python-chess square drawn in each image cell, cells row by row from the top left.

    White at the bottom: the top-left cell is a8. Black at the bottom (flipped): the board is
    turned half a turn, so the top-left cell is h1 and the bottom-left h8.
    """
    return [
        chess.square(GRID - 1 - col, row) if flipped else chess.square(col, GRID - 1 - row)
        for row in range(GRID)
        for col in range(GRID)
    ]


_CELL_SQUARES = {flipped: torch.tensor(image_cell_squares(flipped)) for flipped in (False, True)}
_SQUARE_CELLS = {flipped: torch.argsort(cells) for flipped, cells in _CELL_SQUARES.items()}


def to_image_order(values: torch.Tensor, flipped: bool, dim: int = -1) -> torch.Tensor:
    """Reorder per-square `values` (square order along `dim`) into image-cell order."""
    return values.index_select(dim, _CELL_SQUARES[flipped].to(values.device))


def to_square_order(values: torch.Tensor, flipped: bool, dim: int = -1) -> torch.Tensor:
    """Reorder per-cell `values` (image-cell order along `dim`) into square order."""
    return values.index_select(dim, _SQUARE_CELLS[flipped].to(values.device))


def decode_squares(log_probs: torch.Tensor, *, chess_rules: bool) -> list[int]:
    """Class index per square from `log_probs` (64 x 13, square order).

    With `chess_rules`, a board as likely as it can be with no pawn on rank 1 or 8, exactly
    one king of each colour (diagram positions always have both kings), and no more than 8
    pawns or 16 pieces of a colour (the least likely beyond the count take their best other
    class); otherwise the per-square argmax.
    """
    scores = log_probs.detach().clone().float()
    if chess_rules:
        for pawn in _PAWN_CLASSES:
            scores[_BACK_RANK_SQUARES, pawn] = float("-inf")
    classes = scores.argmax(dim=1)
    if chess_rules:
        for limited, limit in _COUNT_LIMITS:
            classes = _at_most(scores, classes, limited, limit)
        for king in _KING_CLASSES:
            classes = _one_king(scores, classes, king)
    return classes.tolist()


def _at_most(
    scores: torch.Tensor, classes: torch.Tensor, limited: tuple[int, ...], limit: int
) -> torch.Tensor:
    """Keep at most `limit` squares in the `limited` classes: the squares beyond it that lose
    least by it take their best class outside them. Kings count but never move (`_one_king`
    settles them)."""
    counted = torch.isin(classes, torch.tensor(limited))
    excess = int(counted.sum()) - limit
    if excess <= 0:
        return classes
    movable = counted & ~torch.isin(classes, torch.tensor(_KING_CLASSES))
    outside = torch.ones(scores.shape[1], dtype=torch.bool)
    outside[list(limited)] = False
    outside_classes = outside.nonzero().flatten()
    best_outside, best_index = scores[:, outside].max(dim=1)
    current = scores.gather(1, classes.unsqueeze(1)).squeeze(1)
    cost = torch.where(movable, current - best_outside, torch.tensor(float("inf")))
    for square in cost.argsort()[:excess].tolist():
        if movable[square]:
            classes[square] = outside_classes[best_index[square]]
    return classes


def _one_king(scores: torch.Tensor, classes: torch.Tensor, king: int) -> torch.Tensor:
    holders = (classes == king).nonzero().flatten()
    if len(holders) > 1:
        keep = holders[scores[holders, king].argmax()]
        for square in holders.tolist():
            if square != keep:
                scores[square, king] = float("-inf")
                classes[square] = scores[square].argmax()
    elif len(holders) == 0:
        current = scores.gather(1, classes.unsqueeze(1)).squeeze(1)
        cost = current - scores[:, king]
        # Never take a square from the other king: that would trade one missing king for another.
        cost[torch.isin(classes, torch.tensor(_KING_CLASSES))] = float("inf")
        classes[cost.argmin()] = king
    return classes


def square_loss(square_logits: torch.Tensor, image_labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all squares (logits B x 64 x 13, labels B x 64 in image order)."""
    return F.cross_entropy(square_logits.reshape(-1, NUM_CLASSES), image_labels.reshape(-1))


def box_error_in_squares(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per board, the largest error of the four box edges, in squares of the true board."""
    square = (true[:, 2:] - true[:, :2]).repeat(1, 2) / 8
    return ((predicted - true).abs() / square).amax(dim=1)


# --------------------------------------------------------------------------- evaluation
