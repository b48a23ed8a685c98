"""The board reader: square geometry in both orientations, decoding, training, checkpoints,
evaluation."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import chess
import numpy as np
import pytest
import torch
from PIL import Image
from reader_fixtures import TEST_IMAGE_SIZE, write_dataset
from torch import nn

from chessvlm.cli import main
from chessvlm.errors import ChessVLMError, InputError
from chessvlm.finder import FoundBoard
from chessvlm.io import read_jsonl
from chessvlm.positions import SQUARE_CLASSES
from chessvlm.reader.augment import (
    _clutter,
    _extremum_3x3,
    _redraw_pieces,
    _stroke_weight,
    _warp,
    augment_batch,
    augment_scenes,
)
from chessvlm.reader.data import (
    BoardSet,
    image_order_labels,
    load_board_set,
    read_split,
    square_labels,
)
from chessvlm.reader.evaluate import ReaderEvalConfig, evaluate_reader
from chessvlm.reader.images import crop_to_box, load_board_image, load_scene, scene_array
from chessvlm.reader.matching import (
    MatcherRecipe,
    SquareMatcher,
    default_square_matcher,
    save_square_matcher,
    with_look_alikes,
)
from chessvlm.reader.model import (
    LOCATOR_SIZE,
    META_OUTPUTS,
    ZOOM_VIEWS,
    BoardReader,
    ReaderSpec,
    decode_squares,
    image_cell_squares,
    set_zoom_views,
    to_image_order,
    to_square_order,
    zoomed_view,
)
from chessvlm.reader.read import (
    RECUT_BELOW,
    BoardReading,
    Reader,
    compute_precision,
    decode_outputs,
    load_reader,
    locate_boards,
    native_bfloat16,
    predict_boards,
    prepare_for_cpu,
    read_arrays,
    read_found_boards,
    read_images,
    read_unsure_again,
    run_network,
    save_checkpoint,
)
from chessvlm.reader.train import (
    LOG_FILE,
    STATE_FILE,
    ReaderTrainConfig,
    _meta_loss,
    _Trainer,
    spare_core,
    train_reader,
)
from chessvlm.rendering import RenderParams, render_board

TINY_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "patch_size": 8,
}
# A position whose every piece has a different mirror image: mirroring or a wrong rotation
# of the square order cannot go unnoticed.
ASYMMETRIC_FEN = "r3k2r/pp3ppp/2n5/3q4/8/1B3N2/P4PPP/R2QK2R w KQkq - 0 1"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), {"train": 8, "val": 4, "test": 6})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, dataset) -> Path:
    """A reader trained for one short epoch (its answers are poor, its files real)."""
    out = tmp_path_factory.mktemp("reader")
    train_reader(_train_config(dataset, out, epochs=1))
    return out


def _train_config(data_dir: Path, out: Path, **overrides) -> ReaderTrainConfig:
    settings = {"image_size": TEST_IMAGE_SIZE, "batch_size": 4, "epochs": 1, "workers": 1}
    return ReaderTrainConfig(data_dir=str(data_dir), out=str(out), **{**settings, **overrides})


def _one_hot_log_probs(labels: list[int]) -> torch.Tensor:
    probs = torch.full((64, len(SQUARE_CLASSES)), 1e-4)
    probs[torch.arange(64), torch.tensor(labels)] = 1.0
    return probs.log()


# --------------------------------------------------------------------------- geometry


def test_image_cells_white_and_black_at_the_bottom():
    white = image_cell_squares(flipped=False)
    black = image_cell_squares(flipped=True)
    # cells run row by row from the top left
    assert [white[0], white[7], white[56], white[63]] == [chess.A8, chess.H8, chess.A1, chess.H1]
    assert [black[0], black[7], black[56], black[63]] == [chess.H1, chess.A1, chess.H8, chess.A8]
    assert sorted(white) == sorted(black) == list(range(64))


@pytest.mark.parametrize("flipped", [False, True])
def test_image_cells_match_where_the_renderer_draws_pieces(flipped):
    board = chess.Board(ASYMMETRIC_FEN)
    size = 128
    image = np.asarray(render_board(board, RenderParams(size=size, flipped=flipped)), dtype=float)
    empty = np.asarray(
        render_board(chess.Board(None), RenderParams(size=size, flipped=flipped)), dtype=float
    )
    cell = size // 8
    for index, square in enumerate(image_cell_squares(flipped)):
        row, col = divmod(index, 8)
        window = (slice(row * cell, (row + 1) * cell), slice(col * cell, (col + 1) * cell))
        drawn = np.abs(image[window] - empty[window]).mean() > 5
        assert drawn == (board.piece_at(square) is not None), chess.square_name(square)


def test_labels_are_rearranged_to_image_cells_for_flipped_boards():
    labels = torch.tensor([square_labels(ASYMMETRIC_FEN)] * 2)
    cells = image_order_labels(labels, torch.tensor([False, True]))
    rook, knight = SQUARE_CLASSES.index("R"), SQUARE_CLASSES.index("N")
    # White at the bottom: a1's rook in the bottom-left cell, f3's knight at row 5, col 5.
    assert cells[0, 56] == rook and cells[0, 5 * 8 + 5] == knight
    # Black at the bottom: a1's rook in the top-right cell, f3's knight at row 2, col 2.
    assert cells[1, 7] == rook and cells[1, 2 * 8 + 2] == knight
    for flipped in (False, True):
        back = to_square_order(to_image_order(labels[0], flipped), flipped)
        assert torch.equal(back, labels[0])


@pytest.mark.parametrize("flipped", [False, True])
def test_outputs_in_image_order_decode_to_the_standard_board(flipped):
    labels = torch.tensor(square_labels(ASYMMETRIC_FEN))
    in_cells = to_image_order(_one_hot_log_probs(labels.tolist()), flipped, dim=0)
    meta = torch.tensor([[0.9 if flipped else 0.1, 0.5, 0.5, 0.1]])
    (reading,) = decode_outputs(in_cells.unsqueeze(0), meta, "argmax", with_to_move=False)
    assert reading.flipped is flipped
    assert reading.board.board_fen() == chess.Board(ASYMMETRIC_FEN).board_fen()
    mirrored = chess.Board(ASYMMETRIC_FEN).transform(chess.flip_horizontal).board_fen()
    assert reading.board.board_fen() != mirrored
    assert reading.black_to_move_probability is None


@pytest.mark.parametrize("flipped", [False, True])
def test_a_known_orientation_overrides_the_predicted_one(flipped):
    labels = square_labels(ASYMMETRIC_FEN)
    in_cells = to_image_order(_one_hot_log_probs(labels), flipped, dim=0).unsqueeze(0)
    wrong_guess = torch.tensor([[0.1 if flipped else 0.9, 0.5, 0.5, 0.1]])
    (guessed,) = decode_outputs(in_cells, wrong_guess, "argmax", False)
    (told,) = decode_outputs(in_cells, wrong_guess, "argmax", False, [flipped])
    assert guessed.board.board_fen() != chess.Board(ASYMMETRIC_FEN).board_fen()
    assert told.board.board_fen() == chess.Board(ASYMMETRIC_FEN).board_fen()
    assert told.flipped is flipped and told.flipped_probability == wrong_guess[0, 0].item()


# --------------------------------------------------------------------------- decoding


def test_chess_rules_decoding_fixes_kings_and_back_rank_pawns():
    board = chess.Board("4k3/8/8/8/8/8/8/4K3 w - - 0 1")
    labels = square_labels(board.fen())
    log_probs = _one_hot_log_probs(labels)
    king, black_king = SQUARE_CLASSES.index("K"), SQUARE_CLASSES.index("k")
    pawn, queen = SQUARE_CLASSES.index("P"), SQUARE_CLASSES.index("Q")
    log_probs[chess.E1, king] = 1.0
    log_probs[chess.A3, king] = 0.5  # a second, less sure white king
    log_probs[chess.E8] = torch.tensor([0.0] + [-9.0] * 12)  # black king read as empty...
    log_probs[chess.E8, black_king] = -1.0  # ...but with some belief in it
    log_probs[chess.B8, pawn] = 1.0  # a pawn on rank 8, a queen second best
    log_probs[chess.B8, queen] = 0.2
    plain = decode_squares(log_probs, chess_rules=False)
    ruled = decode_squares(log_probs, chess_rules=True)
    assert plain.count(king) == 2 and black_king not in plain and plain[chess.B8] == pawn
    assert ruled[chess.A3] == 0 and ruled[chess.E1] == king
    assert ruled[chess.E8] == black_king
    assert ruled[chess.B8] == queen


def test_chess_rules_decoding_keeps_pawns_and_pieces_to_their_counts():
    # Nine white pawns (c3 the least sure, a bishop second) and seventeen black pieces.
    board = chess.Board("rnbqkbnr/pppppppp/8/8/8/2P5/PPPPPPPP/4K3 w - - 0 1")
    board.set_piece_at(chess.H4, chess.Piece(chess.KNIGHT, chess.BLACK))
    log_probs = _one_hot_log_probs(square_labels(board.fen()))
    pawn, bishop = SQUARE_CLASSES.index("P"), SQUARE_CLASSES.index("B")
    black_knight = SQUARE_CLASSES.index("n")
    log_probs[chess.C3, pawn], log_probs[chess.C3, bishop] = 0.6, 0.5
    log_probs[chess.H4, black_knight], log_probs[chess.H4, 0] = 0.55, 0.5
    plain = decode_squares(log_probs, chess_rules=False)
    ruled = decode_squares(log_probs, chess_rules=True)
    assert plain.count(pawn) == 9 and plain[chess.H4] == black_knight
    assert ruled.count(pawn) == 8 and ruled[chess.C3] == bishop
    assert ruled[chess.H4] == 0 and sum(1 for c in ruled if c >= SQUARE_CLASSES.index("p")) == 16


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("spec", "size"),
    [
        (ReaderSpec(image_size=TEST_IMAGE_SIZE), TEST_IMAGE_SIZE),
        (ReaderSpec(image_size=128), 128),
        (ReaderSpec(encoder="clip", image_size=64, clip_config=TINY_CLIP), 64),
    ],
)
def test_model_output_shapes(spec, size):
    model = BoardReader(spec).eval()
    squares, meta = model(torch.rand(2, 3, size, size))
    assert squares.shape == (2, 64, len(SQUARE_CLASSES))
    assert meta.shape == (2, len(META_OUTPUTS))
    assert model.locator(torch.rand(2, 3, LOCATOR_SIZE, LOCATOR_SIZE)).shape == (2, 4)


def test_coordinates_output_sees_only_the_edge_squares():
    model = BoardReader(ReaderSpec(image_size=TEST_IMAGE_SIZE)).eval()
    images = torch.rand(1, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    square = TEST_IMAGE_SIZE // 8
    inside = images.clone()
    inside[..., :-square, square:] = torch.rand_like(inside[..., :-square, square:])
    edge = images.clone()
    edge[..., :square] = 1 - edge[..., :square]  # the left column, where rank digits are
    with torch.no_grad():
        base, moved, edged = (model(batch)[1] for batch in (images, inside, edge))
    assert torch.allclose(base[:, 2], moved[:, 2])  # the interior does not matter to it
    assert not torch.allclose(base[:, 2], edged[:, 2])
    assert not torch.allclose(base[:, 0], moved[:, 0])  # the full orientation head sees all


def test_clip_patches_must_be_squares():
    with pytest.raises(ChessVLMError, match="each patch"):
        BoardReader(ReaderSpec(encoder="clip", image_size=96, clip_config=TINY_CLIP))


@pytest.mark.parametrize(
    "spec",
    [
        ReaderSpec(image_size=TEST_IMAGE_SIZE),
        ReaderSpec(encoder="clip", image_size=64, clip_config=TINY_CLIP),
    ],
)
def test_checkpoint_round_trip(tmp_path, spec):
    torch.manual_seed(0)
    model = BoardReader(spec)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.eval()
    save_checkpoint(model, tmp_path, {"spec": spec.to_dict(), "decode": "argmax"})
    reader = load_reader(tmp_path, precision="float32")
    # The networks' round trip: the shipped position prior, square context and square matcher
    # would only amplify the folded network's rounding on these random weights' near-uniform
    # squares.
    reader.position_prior = reader.square_context = reader.square_matcher = None
    images = torch.randint(0, 256, (3, 3, spec.image_size, spec.image_size), dtype=torch.uint8)
    expected = read_arrays(Reader(model, {"spec": spec.to_dict()}, tmp_path), images)
    got = read_arrays(reader, images)
    assert [r.board.board_fen() for r in got] == [r.board.board_fen() for r in expected]
    assert [r.flipped_probability for r in got] == pytest.approx(
        [r.flipped_probability for r in expected], abs=1e-5
    )


def test_folding_for_inference_keeps_the_outputs(tmp_path):
    torch.manual_seed(0)
    model = BoardReader(ReaderSpec(image_size=TEST_IMAGE_SIZE))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        for norm in (module for module in model.modules() if isinstance(module, nn.BatchNorm2d)):
            norm.running_mean.normal_(0.0, 0.3)
            norm.running_var.uniform_(0.5, 2.0)
    model.eval()
    images = torch.rand(3, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    with torch.no_grad():
        expected = model(images)
        model.fold_for_inference()
        got = model(images)
    for before, after in zip(expected, got, strict=True):
        assert torch.allclose(before, after, atol=1e-4)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    with pytest.raises(ChessVLMError, match="folded"):
        save_checkpoint(model, tmp_path, {"spec": model.spec.to_dict()})


def test_a_zoomed_view_magnifies_or_shrinks_the_board_about_its_centre():
    size = 64
    images = torch.zeros(1, 3, size, size)
    images[..., 16:48, 16:48] = 1.0  # a bright square half the board wide
    assert torch.allclose(zoomed_view(images, 1.0), images, atol=1e-5)
    bright = {span: int((zoomed_view(images, span)[0, 0] > 0.5).sum()) for span in (0.8, 1.25)}
    # Half the board's width, seen by a view 0.8 (1.25) times as wide: 40 (26) px a side.
    assert bright == {0.8: 40 * 40, 1.25: 26 * 26}
    # Beyond the board's edge the view repeats the edge pixels.
    edge = torch.rand(2, 3, size, size)
    wider = zoomed_view(edge, 1.5)
    assert torch.allclose(wider[..., 0, 0], edge[..., 0, 0])


@torch.no_grad()
def test_zoom_views_read_the_mean_of_each_views_log_probabilities():
    torch.manual_seed(0)
    model = BoardReader(ReaderSpec(image_size=TEST_IMAGE_SIZE)).eval()
    images = torch.rand(3, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    views = [model(view) for view in (images, zoomed_view(images, 0.9), zoomed_view(images, 1.1))]
    set_zoom_views(model, [0.9, 1.1])
    squares, meta = model(images)
    expected = torch.stack([logits.log_softmax(-1) for logits, _ in views]).mean(0)
    assert torch.allclose(squares, expected, atol=1e-5)
    assert torch.allclose(meta, torch.stack([logits for _, logits in views]).mean(0), atol=1e-5)
    # Each board's reading is its own: a batch of one reads as in a batch of three.
    assert torch.allclose(model(images[1:2])[0], squares[1:2], atol=1e-5)


def test_a_checkpoints_zoom_views_are_loaded_and_bad_ones_named(tmp_path):
    spec = ReaderSpec(image_size=TEST_IMAGE_SIZE)
    config = {"spec": spec.to_dict(), "decode": "argmax"}
    save_checkpoint(BoardReader(spec).eval(), tmp_path, {**config, "zoom_views": [0.97, 1.03]})
    assert load_reader(tmp_path).model.zoom_views == (0.97, 1.03)
    config = json.loads((tmp_path / "reader.json").read_text())
    del config["zoom_views"]
    for bad in ([3.0], "0.97", [True]):
        (tmp_path / "reader.json").write_text(json.dumps({**config, "zoom_views": bad}))
        with pytest.raises(InputError, match=r"reader\.json.*zoom_views: must be"):
            load_reader(tmp_path)
    (tmp_path / "reader.json").write_text(json.dumps(config))
    assert load_reader(tmp_path).model.zoom_views == ()  # written before zoom views: none


def test_auto_precision_is_bfloat16_only_where_the_cpu_computes_it(monkeypatch):
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr("chessvlm.reader.read.native_bfloat16", lambda native=native: native)
        assert compute_precision("auto") == expected
        assert compute_precision("float32") == "float32"
        assert compute_precision("bfloat16") == "bfloat16"
    with pytest.raises(ChessVLMError, match=r"unknown precision 'half'; choose from auto"):
        compute_precision("half")


@pytest.mark.parametrize(
    ("capabilities", "native"),
    [
        ({"amx_bf16": True, "avx512_bf16": True}, True),
        ({"avx512_bf16": True}, True),
        # AVX512 without bfloat16 instructions: oneDNN emulates it, slower than float32.
        ({"avx512_bw": True, "avx512_vl": True, "avx512_dq": True}, False),
        ({"avx2": True}, False),
        ({"bf16": True, "architecture": "arm64"}, False),
    ],
)
def test_native_bfloat16_needs_the_instructions(monkeypatch, capabilities, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert native_bfloat16() is native


def test_bfloat16_reading_gives_float32_outputs_close_to_float32s():
    torch.manual_seed(0)
    model = BoardReader(ReaderSpec(image_size=TEST_IMAGE_SIZE)).eval()
    prepare_for_cpu(model)
    model.fold_for_inference()
    boards = torch.randint(0, 256, (2, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE), dtype=torch.uint8)
    exact, rounded = (run_network(model, boards, kind) for kind in ("float32", "bfloat16"))
    for before, after in zip(exact, rounded, strict=True):
        assert after.dtype == torch.float32
        assert not torch.equal(before, after)  # bfloat16 was used
        assert torch.allclose(before, after, atol=0.1)


def test_augmentation_keeps_shape_and_range():
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    first = augment_batch(images, torch.Generator().manual_seed(3))
    again = augment_batch(images, torch.Generator().manual_seed(3))
    assert first.shape == images.shape and first.dtype == torch.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal(first, again)
    assert not torch.allclose(first, images.float() / 255)


def test_augmentation_without_reframing_never_moves_the_board(monkeypatch):
    from chessvlm.reader import augment

    moved = []
    monkeypatch.setattr(augment, "_reframe", lambda x, generator: moved.append(len(x)))
    images = torch.randint(0, 256, (32, 3, 64, 64), dtype=torch.uint8)
    kept = augment_batch(images, torch.Generator().manual_seed(3), reframe=False)
    assert moved == [] and not torch.allclose(kept, images.float() / 255)
    augment_batch(images, torch.Generator().manual_seed(3))
    assert moved == [32]


def test_redrawn_pieces_stay_in_their_squares():
    # One flat colour a square: a warp that kept each square to itself changes nothing.
    colours = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    boards = colours.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3).float() / 255
    redrawn = boards.clone()
    _redraw_pieces(redrawn, torch.Generator().manual_seed(0))
    assert torch.allclose(redrawn, boards, atol=1e-5)
    # A piece (a dot in each square's middle) moves and changes size within its square.
    boards[:, :, 3::8, 3::8] = 0.0
    redrawn = boards.clone()
    _redraw_pieces(redrawn, torch.Generator().manual_seed(0))
    assert not torch.allclose(redrawn, boards, atol=1e-3)
    cells = (redrawn - boards).abs().view(4, 3, 8, 8, 8, 8).amax(dim=(1, 3, 5))
    assert (cells > 0).float().mean() > 0.1  # some squares of the chosen boards changed


def test_stroke_weight_thickens_or_thins_dark_lines():
    boards = torch.ones(32, 3, 16, 16)
    boards[:, :, :, 8] = 0.0  # a dark line one pixel wide
    _stroke_weight(boards, torch.Generator().manual_seed(0))
    widths = (boards[:, 0, 0] < 0.5).sum(1)
    assert set(widths.tolist()) == {0, 1, 3}  # thinned away, unchanged, thickened


def test_the_3x3_extremum_is_max_pooling_at_stride_one():
    images = torch.rand(3, 3, 12, 10)

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1)

    assert torch.equal(_extremum_3x3(images, torch.maximum), pooled(images))
    assert torch.equal(_extremum_3x3(images, torch.minimum), -pooled(-images))


def test_the_warp_samples_as_an_affine_grid_and_fills_the_outside():
    # Scale and shift per axis, as _reframe and augment_scenes draw them; the reference is
    # torch's affine grid, and a mask of ones sampled alike for what falls outside.
    images = torch.rand(4, 3, 20, 24)
    scale = torch.tensor([[1.3, 1.1], [0.9, 0.95], [1.6, 1.6], [1.0, 1.0]])
    shift = torch.tensor([[0.2, -0.3], [0.05, 0.0], [-0.5, 0.4], [0.0, 0.0]])
    theta = torch.zeros(4, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = scale[:, 0], scale[:, 1], shift
    grid = torch.nn.functional.affine_grid(theta, [4, 3, 20, 24], align_corners=False)
    sample = {"mode": "bilinear", "padding_mode": "zeros", "align_corners": False}
    moved = torch.nn.functional.grid_sample(images, grid, **sample)
    inside = torch.nn.functional.grid_sample(torch.ones(4, 1, 20, 24), grid, **sample)
    background = torch.rand(4, 3, 1, 1, generator=torch.Generator().manual_seed(5))
    expected = moved + (1 - inside) * background
    warped = _warp(images, scale, shift, torch.Generator().manual_seed(5))
    assert torch.allclose(warped, expected, atol=1e-5)
    assert torch.allclose(warped[3], images[3], atol=1e-5)  # the identity keeps the image


def test_specs_written_before_the_context_layers_have_none():
    spec = ReaderSpec(image_size=TEST_IMAGE_SIZE)
    assert spec.context_layers > 0 and BoardReader(spec).context is not None
    old = {key: value for key, value in spec.to_dict().items() if key != "context_layers"}
    assert ReaderSpec.from_dict(old).context_layers == 0
    assert BoardReader(ReaderSpec.from_dict(old)).context is None
    assert ReaderSpec.from_dict(spec.to_dict()) == spec


def test_the_coordinates_view_has_the_specs_width_and_older_specs_keep_sixteen():
    spec = ReaderSpec(image_size=TEST_IMAGE_SIZE, edge_channels=4)
    assert BoardReader(spec).edges.out_features == 2 * 4 * 8
    old = {key: value for key, value in spec.to_dict().items() if key != "edge_channels"}
    assert BoardReader(ReaderSpec.from_dict(old)).edges.out_features == 2 * 16 * 8
    assert ReaderSpec.from_dict(spec.to_dict()) == spec


def test_scene_augmentation_moves_the_box_with_the_board():
    # A white board on black: after augmentation the box must frame the white pixels.
    scenes = torch.zeros(16, 3, 64, 64, dtype=torch.uint8)
    scenes[:, :, 8:40, 16:56] = 255  # rows 8..40, columns 16..56
    boxes = torch.tensor([[16 / 64, 8 / 64, 56 / 64, 40 / 64]]).repeat(16, 1)
    moved_scenes, moved_boxes = augment_scenes(scenes, boxes, torch.Generator().manual_seed(1))
    assert not torch.equal(moved_boxes, boxes)  # some boards moved
    for scene, box in zip(moved_scenes, moved_boxes, strict=True):
        left, top, right, bottom = (box * 64).tolist()
        inside = scene[:, round(top) + 1 : round(bottom) - 1, round(left) + 1 : round(right) - 1]
        # Recolouring changes the white, but the board stays the brightest part of the scene.
        brightness = scene.mean(dim=0)
        assert inside.mean(dim=0).min() >= brightness.max() * 0.7


def test_scene_clutter_is_painted_in_the_margins_never_on_the_board():
    scenes = torch.full((64, 3, 64, 64), 0.5)
    boxes = torch.tensor([[0.25, 0.25, 0.75, 0.75]]).repeat(64, 1)
    cluttered = scenes.clone()
    _clutter(cluttered, boxes, torch.Generator().manual_seed(0))
    assert torch.equal(cluttered[:, :, 16:48, 16:48], scenes[:, :, 16:48, 16:48])
    changed = (cluttered != scenes).flatten(1).any(dim=1)
    assert 16 < changed.sum() < 48  # about half the scenes, by CLUTTER_CHANCE


def test_reading_a_whole_image_crops_at_the_located_box(tmp_path):
    torch.manual_seed(0)
    spec = ReaderSpec(image_size=TEST_IMAGE_SIZE)
    model = BoardReader(spec).eval()
    reader = Reader(model, {"spec": spec.to_dict()}, tmp_path)
    board = render_board(chess.Board(ASYMMETRIC_FEN), RenderParams(size=128))
    page = Image.new("RGB", (200, 160), "white")
    page.paste(board, (40, 20))
    box = [40 / 200, 20 / 160, 168 / 200, 148 / 160]
    model.locator.forward = lambda images: torch.tensor([box] * len(images))
    page.save(tmp_path / "page.png")
    ((_, reading, error),) = predict_boards(reader, [tmp_path / "page.png"], workers=1)
    assert error is None
    assert reading.box == pytest.approx((40, 20, 168, 148))
    (direct,) = read_arrays(reader, [np.asarray(board.resize((64, 64), Image.Resampling.BILINEAR))])
    assert reading.board.board_fen() == direct.board.board_fen()
    (located,) = locate_boards(reader, [page])
    assert located == pytest.approx(box)
    assert crop_to_box(page, located).tobytes() == board.tobytes()


def _unsure_page(tmp_path, located_off: float):
    """An untrained reader (unsure of every square), a page with a board of 16 px squares at
    (40, 20, 168, 148), saved as page.png, and the reader's locator made to put the board
    `located_off` squares left of and above that: (reader, page, the board's box)."""
    torch.manual_seed(0)
    spec = ReaderSpec(image_size=TEST_IMAGE_SIZE)
    model = BoardReader(spec).eval()
    reader = Reader(model, {"spec": spec.to_dict()}, tmp_path)
    page = Image.new("RGB", (200, 160), "white")
    page.paste(render_board(chess.Board(ASYMMETRIC_FEN), RenderParams(size=128)), (40, 20))
    page.save(tmp_path / "page.png")
    truth = (40.0, 20.0, 168.0, 148.0)
    sides = (200, 160) * 2
    located = [(edge - 16 * located_off) / side for edge, side in zip(truth, sides, strict=True)]
    model.locator.forward = lambda images: torch.tensor([located] * len(images))
    return reader, page, truth


def test_an_unsure_board_is_read_again_at_its_exact_corners(tmp_path):
    reader, _, truth = _unsure_page(tmp_path, 0.25)
    ((_, reading, _),) = predict_boards(reader, [tmp_path / "page.png"], workers=1)
    assert reading.min_square_confidence < reader.recut_below
    assert reading.box == pytest.approx(truth, abs=0.05 * 16)
    (x0, y0), _, (x2, y2), _ = reading.corners
    assert (x0, y0, x2, y2) == pytest.approx(truth, abs=0.05 * 16)
    # Where no reading is unsure enough, the board keeps the locator's box.
    sure = dataclasses.replace(reader, recut_below=0.0)
    ((_, kept, _),) = predict_boards(sure, [tmp_path / "page.png"], workers=1)
    assert kept.box == pytest.approx(tuple(edge - 4 for edge in truth))
    assert kept.corners is None


def test_found_boards_are_read_again_only_where_the_locator_placed_them(tmp_path):
    reader, page, truth = _unsure_page(tmp_path, 0.25)
    left, top, right, bottom = (edge - 4 for edge in truth)
    corners = ((left, top), (right, top), (right, bottom), (left, bottom))
    by_locator = FoundBoard(corners, 1.0, 100.0, found_by="locator")
    by_corners = dataclasses.replace(by_locator, found_by="corners")
    located, searched = read_found_boards(reader, page, [by_locator, by_corners])
    assert located.box == pytest.approx(truth, abs=0.05 * 16)
    assert searched.box == by_corners.box and searched.corners == corners


def test_only_a_box_off_the_corners_is_read_again(tmp_path):
    reader, page, truth = _unsure_page(tmp_path, 0.0)
    read_counts: list[int] = []

    def read(crops, flipped, margins):
        read_counts.append(len(crops))
        return read_arrays(reader, crops, None, flipped, margins)

    (reading,) = read_images(reader, [page], [scene_array(page, LOCATOR_SIZE)])
    assert reading.min_square_confidence < RECUT_BELOW
    assert read_unsure_again(read, [reading], [page], [truth], TEST_IMAGE_SIZE) == []
    half_off = tuple(edge + 8 for edge in truth)
    ((index, _, board),) = read_unsure_again(read, [reading], [page], [half_off], TEST_IMAGE_SIZE)
    assert index == 0 and read_counts == [1]
    assert board.box == pytest.approx(truth, abs=0.05 * 16)
    sure = read_unsure_again(read, [reading], [page], [half_off], TEST_IMAGE_SIZE, recut_below=0)
    assert sure == [] and read_counts == [1]


def test_meta_losses_follow_the_output_names(monkeypatch):
    boards = BoardSet(
        ids=["a", "b"],
        images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
        labels=torch.zeros(2, 64, dtype=torch.long),
        flipped=torch.tensor([True, False]),
        black_to_move=torch.tensor([False, False]),
        coordinates=torch.tensor([False, False]),
        scenes=torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
        boxes=torch.zeros(2, 4),
    )
    # Logits that are right for every output: the loss is near its floor whatever the order.
    right = torch.tensor([[20.0, -20.0, 20.0, -20.0], [-20.0, -20.0, -20.0, -20.0]])
    monkeypatch.setattr("chessvlm.reader.train.META_OUTPUTS", META_OUTPUTS)
    assert float(_meta_loss(right, boards, torch.arange(2))) < 1e-6
    # The orientation from coordinates is not taught on boards that draw none.
    no_coordinates_signal = right.clone()
    no_coordinates_signal[:, META_OUTPUTS.index("flipped_by_coordinates")] *= -1
    assert float(_meta_loss(no_coordinates_signal, boards, torch.arange(2))) < 1e-6


def test_orientation_is_shown_by_pawns_or_coordinates():
    kings = chess.Board("4k3/8/8/8/8/8/8/4K3 w - - 0 1")
    pawns = chess.Board("4k3/4p3/8/8/8/8/4P3/4K3 w - - 0 1")

    def reading(board, coordinates):
        return BoardReading(board, False, 0.1, None, 0.9, coordinates_probability=coordinates)

    assert not reading(kings, 0.1).orientation_shown
    assert reading(kings, 0.9).orientation_shown
    assert reading(pawns, 0.1).orientation_shown


# --------------------------------------------------------------------------- training


def test_training_writes_a_checkpoint_and_a_log(checkpoint):
    config = json.loads((checkpoint / "reader.json").read_text())
    assert config["spec"]["encoder"] == "cnn"
    assert config["decode"] in ("argmax", "chess_rules")
    assert set(config["val_by_decode"]) == {"argmax", "chess_rules"}
    assert 0.0 <= config["val"]["per_square"] <= 1.0
    # One epoch on a few boards cannot read the side to move at the 95% a checkpoint needs.
    assert config["predicts_to_move"] is False
    assert config["zoom_views"] == list(ZOOM_VIEWS)
    (entry,) = read_jsonl(checkpoint / LOG_FILE)
    assert entry["epoch"] == 1 and entry["complete"] is True
    assert (checkpoint / STATE_FILE).is_file()
    size = sum(path.stat().st_size for path in checkpoint.glob("reader.*"))
    assert size < 20_000_000


def test_training_resumes_where_it_stopped(tmp_path, dataset, capsys):
    out = tmp_path / "run"
    train_reader(_train_config(dataset, out, epochs=1))
    state = torch.load(out / STATE_FILE, weights_only=False)
    assert state["progress"]["epoch"] == 1
    train_reader(_train_config(dataset, out, epochs=1))
    assert "already complete" in capsys.readouterr().out
    train_reader(_train_config(dataset, out, epochs=2))
    entries = read_jsonl(out / LOG_FILE)
    assert [entry["epoch"] for entry in entries] == [1, 2]
    # 8 boards in batches of 4: the second epoch continued the step count
    assert entries[1]["step"] == 4


@pytest.mark.parametrize("ahead", [True, False])
def test_batches_augmented_ahead_are_those_of_their_steps(tmp_path, dataset, ahead):
    # Augmenting on a second thread or in turn must not change what a step trains on: a run
    # resumed mid-epoch (batch 1, step 5) draws the same inputs as batches prepared alone.
    config = _train_config(dataset, tmp_path, batch_size=2)
    train = load_board_set(
        dataset, read_split(dataset, "train"), TEST_IMAGE_SIZE, workers=1, desc="train"
    )
    model = BoardReader(config.spec())
    progress = {"epoch": 0, "batch": 1, "step": 5, "seconds": 0.0, "best": None}
    optimizer = torch.optim.SGD(model.parameters())
    trainer = _Trainer(model, optimizer, 0.1, config, "float32", tmp_path, progress, train)
    trainer.augment_ahead = ahead
    batches = torch.arange(len(train)).split(2)
    prepared = list(trainer.prepared(batches))
    assert len(prepared) == len(batches) - 1
    for offset, inputs in enumerate(prepared):
        alone = trainer.inputs(batches[1 + offset], 5 + offset)
        assert all(torch.equal(a, b) for a, b in zip(inputs, alone, strict=True))
    assert not torch.equal(prepared[0].pixels, trainer.inputs(batches[1], 6).pixels)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_training_loss_falls_on_a_few_boards(tmp_path, dataset, precision):
    out = tmp_path / "run"
    config = _train_config(
        dataset, out, epochs=12, augment=False, learning_rate=3e-3, precision=precision
    )
    train_reader(config)
    losses = [entry["train_loss"] for entry in read_jsonl(out / LOG_FILE)]
    assert losses[-1] < 0.6 * losses[0]
    reader = load_reader(out, precision="float32")
    assert reader.config["train_precision"] == precision
    # Autocast leaves the weights, and so the checkpoint, in float32.
    assert all(p.dtype == torch.float32 for p in reader.model.parameters())


def test_a_bfloat16_step_computes_in_bfloat16(tmp_path, dataset):
    config = _train_config(dataset, tmp_path, augment=False)
    train = load_board_set(
        dataset, read_split(dataset, "train"), TEST_IMAGE_SIZE, workers=1, desc="train"
    )
    indices = torch.arange(4)
    losses = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = BoardReader(config.spec())
        progress = {"epoch": 0, "batch": 0, "step": 0, "seconds": 0.0, "best": None}
        optimizer = torch.optim.SGD(model.parameters())
        trainer = _Trainer(model, optimizer, 0.1, config, precision, tmp_path, progress, train)
        losses[precision] = trainer.step(indices, trainer.inputs(indices, 0))
    # The same network on the same boards: bfloat16's rounding moves the loss a little.
    assert losses["bfloat16"] != losses["float32"]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.05)


def test_training_with_zoom_views_out_of_range_is_refused_before_it_starts(tmp_path, dataset):
    with pytest.raises(ChessVLMError, match=r"zoom_views: must be a list of widths"):
        train_reader(_train_config(dataset, tmp_path / "reader", zoom_views=(0.97, 3.0)))
    assert not (tmp_path / "reader").exists()


def test_training_in_an_unknown_precision_is_refused(tmp_path, dataset):
    with pytest.raises(ChessVLMError, match="unknown precision 'half'"):
        train_reader(_train_config(dataset, tmp_path / "run", precision="half"))


def test_clip_encoder_trains_a_step(tmp_path, dataset):
    out = tmp_path / "clip"
    config = _train_config(dataset, out, encoder="clip", clip_config=TINY_CLIP)
    train_reader(config)
    reader = load_reader(out)
    assert reader.config["spec"]["encoder"] == "clip"
    assert reader.config["spec"]["clip_config"]["hidden_size"] == 32


def test_missing_training_image_is_named(tmp_path, dataset):
    data = tmp_path / "data"
    data.mkdir()
    records = read_jsonl(dataset / "train.jsonl")
    records[1]["image_path"] = "images/nowhere.png"
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (data / "val.jsonl").write_text((dataset / "val.jsonl").read_text())
    (data / "images").symlink_to(dataset / "images")
    with pytest.raises(InputError, match=r"nowhere\.png.*train_0001"):
        train_reader(_train_config(data, tmp_path / "out"))


def test_bad_label_is_named_with_its_line(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        '{"id": "a", "image_path": "a.png", "fen": "8/8/8/8/8/8/8/8 w - - 0 1"}\n'
        '{"id": "b", "image_path": "b.png", "fen": "not a fen"}\n'
    )
    with pytest.raises(InputError, match=r"train\.jsonl:2"):
        read_split(tmp_path, "train")


# --------------------------------------------------------------------------- evaluation


def test_evaluate_writes_predictions_metrics_and_run(tmp_path, dataset, checkpoint):
    out = tmp_path / "eval"
    config = ReaderEvalConfig(model=str(checkpoint), data_dir=str(dataset), output=str(out))
    metrics = evaluate_reader(config)
    predictions = read_jsonl(out / "predictions.jsonl")
    assert [p["id"] for p in predictions] == [f"test_{i:04d}" for i in range(6)]
    for prediction in predictions:
        chess.Board(prediction["fen"] + " w - - 0 1")  # a placement FEN
        assert isinstance(prediction["flipped_pred"], bool)
    assert metrics["n_samples"] == 6
    assert json.loads((out / "metrics.json").read_text())["n_samples"] == 6
    run = json.loads((out / "run.json").read_text())
    assert run["image_base_dir"] == str(dataset.resolve())
    assert run["test_data"] == str((dataset / "test.jsonl").resolve())
    # What was trained, on what, for how long: 8 boards, batch 4, one epoch.
    assert run["train_data"] == str((dataset / "train.jsonl").resolve())
    assert (run["train_samples"], run["steps"], run["epochs"]) == (8, 2, 1.0)
    assert run["recipe"].startswith("CNN encoder; batch 4, lr ")
    assert "epoch 1" in run["recipe"]
    assert metrics["reader"]["model_load_seconds"] < 2
    # The orientation per place of the coordinates, over the boards that print them there
    # (this dataset's records name them in the style only, as before the "coordinates" field).
    records = {r["id"]: r for r in read_jsonl(dataset / "test.jsonl")}
    rights: dict[str, list[bool]] = {}
    for prediction in predictions:
        record = records[prediction["id"]]
        place = "inside" if "coords" in record["style"].split("/") else "none"
        rights.setdefault(place, []).append(prediction["flipped_pred"] == record["flipped"])
    assert metrics["reader"]["orientation_accuracy_by_coordinates"] == {
        place: sum(right) / len(right) for place, right in sorted(rights.items())
    }


def test_evaluate_with_given_orientation_keeps_the_models_guess(tmp_path, dataset, checkpoint):
    out = tmp_path / "eval"
    config = ReaderEvalConfig(
        model=str(checkpoint), data_dir=str(dataset), output=str(out), orientation="given"
    )
    metrics = evaluate_reader(config)
    assert metrics["reader"]["orientation"] == "given"
    guessed = [p["flipped_pred"] for p in read_jsonl(out / "predictions.jsonl")]
    reader = load_reader(checkpoint)
    paths = [dataset / r["image_path"] for r in read_jsonl(dataset / "test.jsonl")]
    own = [reading.flipped for _, reading, _ in predict_boards(reader, paths)]
    assert guessed == own


def test_evaluate_cli_reads_in_the_precision_asked_and_records_it(
    tmp_path, dataset, checkpoint, capsys
):
    args = ["reader", "evaluate", "--model", str(checkpoint), "--data_dir", str(dataset)]
    assert main([*args, "--out", str(tmp_path / "run"), "--precision", "float32"]) == 0
    assert "in float32" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["reader"]["precision"] == "float32"
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "other"), "--precision", "half"])
    assert "--precision: invalid choice: 'half'" in capsys.readouterr().err


def test_evaluate_reads_with_the_square_matcher_it_is_given(
    tmp_path, dataset, checkpoint, monkeypatch
):
    recipe = MatcherRecipe()
    save_square_matcher(SquareMatcher(recipe.embedding), tmp_path / "matcher", recipe, {})
    used = []

    def recording(matcher, boards, log_probs):
        used.append(matcher)
        return with_look_alikes(matcher, boards, log_probs)

    monkeypatch.setattr("chessvlm.reader.read.with_look_alikes", recording)
    config = ReaderEvalConfig(
        model=str(checkpoint),
        data_dir=str(dataset),
        output=str(tmp_path / "run"),
        square_matcher=str(tmp_path / "matcher"),
    )
    assert evaluate_reader(config)["reader"]["square_matcher"] == str(tmp_path / "matcher")
    assert used and all(m is not default_square_matcher() for m in used)
    assert all(m.folded_for_inference for m in used)
    missing = dataclasses.replace(config, square_matcher=str(tmp_path / "none"))
    with pytest.raises(ChessVLMError, match=r"none"):
        evaluate_reader(missing)


def test_evaluate_resumes_and_counts_unreadable_images(tmp_path, dataset, checkpoint):
    data = tmp_path / "data"
    data.mkdir()
    records = read_jsonl(dataset / "test.jsonl")
    for record in records:
        record["image_path"] = str(dataset / record["image_path"])
    records[2]["image_path"] = str(tmp_path / "missing.png")
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "eval"
    config = ReaderEvalConfig(model=str(checkpoint), data_dir=str(data), output=str(out))
    evaluate_reader(config)
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    # an interruption mid-write: three lines kept, the fourth cut in half
    (out / "predictions.jsonl").write_text("".join(lines[:3]) + lines[3][:10])
    metrics = evaluate_reader(config)
    ids = [p["id"] for p in read_jsonl(out / "predictions.jsonl")]
    assert sorted(ids) == sorted(r["id"] for r in records)
    errors = [p for p in read_jsonl(out / "predictions.jsonl") if "error" in p]
    assert [p["id"] for p in errors] == ["test_0002"]
    assert "no such image file" in errors[0]["error"]
    assert metrics["n_samples"] == 6


def test_reading_matches_single_image_loading(dataset, checkpoint):
    reader = load_reader(checkpoint)
    paths = sorted((dataset / "images").glob("test_*.png"))
    arrays = [load_board_image(path, reader.image_size) for path in paths]
    together = read_arrays(reader, arrays)
    alone = [read_arrays(reader, [array])[0] for array in arrays]
    assert [r.board.board_fen() for r in together] == [r.board.board_fen() for r in alone]


def test_batched_file_reading_keeps_the_order_and_the_errors_between(tmp_path, dataset, checkpoint):
    reader = load_reader(checkpoint)
    paths = sorted((dataset / "images").glob("test_*.png"))
    missing = tmp_path / "missing.png"
    sources = [*paths[:3], missing, *paths[3:]]
    results = list(predict_boards(reader, sources, batch_size=2, workers=1))
    assert [source for source, _, _ in results] == sources
    assert results[3][1] is None and "no such image file" in str(results[3][2])
    scenes = [load_scene(path, reader.image_size, LOCATOR_SIZE) for path in paths]
    alone = [read_images(reader, [image], [scene])[0] for image, scene in scenes]
    read = [reading for _, reading, _ in results if reading is not None]
    assert [r.board.board_fen() for r in read] == [r.board.board_fen() for r in alone]
    np.testing.assert_allclose([r.box for r in read], [r.box for r in alone], atol=1e-4)


def test_each_reading_gives_the_probability_of_every_square_read(dataset, checkpoint):
    reader = load_reader(checkpoint)
    paths = sorted((dataset / "images").glob("test_*.png"))
    readings = read_arrays(reader, [load_board_image(path, reader.image_size) for path in paths])
    for reading in readings:
        assert len(reading.square_probabilities) == 64
        assert all(0.0 < p <= 1.0 for p in reading.square_probabilities)
        assert min(reading.square_probabilities) == pytest.approx(reading.min_square_confidence)


def test_a_located_box_that_is_no_board_keeps_the_whole_image():
    from chessvlm.reader.images import FULL_FRAME, usable_box

    image = Image.new("RGB", (100, 80))
    assert usable_box((0.5, 0.5, 0.5, 0.9), image) == FULL_FRAME
    assert usable_box((-0.1, 0.1, 0.6, 1.2), image) == (0.0, 0.1, 0.6, 1.0)


@pytest.mark.parametrize(("cores", "threads", "ahead"), [(2, 1, True), (2, 2, False), (8, 4, True)])
def test_batches_are_augmented_ahead_only_on_a_spare_core(
    monkeypatch, tmp_path, dataset, cores, threads, ahead
):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert spare_core() is ahead
    train = load_board_set(
        dataset, read_split(dataset, "train"), TEST_IMAGE_SIZE, workers=1, desc="train"
    )
    model = BoardReader(ReaderSpec(image_size=TEST_IMAGE_SIZE))
    progress = {"epoch": 0, "batch": 0, "step": 0, "seconds": 0.0, "best": None}
    optimizer = torch.optim.SGD(model.parameters())
    for augment in (True, False):
        config = _train_config(dataset, tmp_path, augment=augment)
        trainer = _Trainer(model, optimizer, 0.1, config, "float32", tmp_path, progress, train)
        assert trainer.augment_ahead is (ahead and augment)
