"""The margin reader: the strips it reads outside a board, what it learns from them, the
shipped one on boards it never saw, and its say in a reading's orientation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from chessvlm.datasets import synth_json_dataset
from chessvlm.errors import ChessVLMError, InputError
from chessvlm.io import read_jsonl
from chessvlm.reader.default import DEFAULT_MARGIN_READER, DEFAULT_READER
from chessvlm.reader.margin import (
    MARGIN_CONFIG_FILE,
    MARGIN_WEIGHTS_FILE,
    STRIP_HEIGHT,
    STRIP_WIDTH,
    STRIPS,
    MarginReader,
    MarginRecipe,
    load_margin_reader,
    margin_evidence,
    margin_examples,
    margin_strips,
    save_margin_reader,
    scene_margin_examples,
    train_margin_reader,
)
from chessvlm.reader.model import META_OUTPUTS
from chessvlm.reader.orientation import combined_flipped_probability, default_position_prior
from chessvlm.reader.read import BoardReading, load_reader, predict_boards
from chessvlm.scenes import LABELS_FILE, write_scenes

TINY = MarginRecipe(widths=(4, 8), hidden=8, epochs=1, cuts_per_board=1, batch_size=8)
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _marked_page() -> Image.Image:
    """A white 400 px page with a board box at 40-360 px (40 px squares), a red mark just
    below the board's left end and a blue one just left of its top."""
    page = Image.new("RGB", (400, 400), "white")
    page.paste(RED, (40, 365, 80, 395))  # below file a (white at the bottom)
    page.paste(BLUE, (5, 40, 35, 80))  # left of rank 8
    return page


def test_strips_lie_along_the_bottom_and_left_edges_first_file_and_top_rank_first():
    strips = margin_strips(_marked_page(), (0.1, 0.1, 0.9, 0.9))
    assert strips.shape == (2 * STRIP_HEIGHT, STRIP_WIDTH, 3)
    below, beside = strips[:STRIP_HEIGHT], strips[STRIP_HEIGHT:]
    cell = STRIP_WIDTH // 8

    def colour_share(strip: np.ndarray, colour: tuple[int, int, int], cells: slice) -> float:
        part = strip[:, cells].astype(int)
        return float((np.abs(part - colour).sum(axis=2) < 60).mean())

    # Each mark sits in its strip's first square, nowhere else.
    assert colour_share(below, RED, slice(0, cell)) > 0.5
    assert colour_share(below, RED, slice(cell, None)) == 0
    assert colour_share(beside, BLUE, slice(0, cell)) > 0.5
    assert colour_share(beside, BLUE, slice(cell, None)) == 0


def test_strips_beyond_the_image_are_black():
    strips = margin_strips(_marked_page(), (0.0, 0.0, 1.0, 1.0))
    assert not strips.any()


def test_a_margin_reader_trains_saves_and_loads(tmp_path):
    synth_json_dataset(tmp_path / "data", {"train": 12, "val": 6}, seed=3, style="designs-seen")
    strips, labels = margin_examples(tmp_path / "data", "val", 2, 0.15, seed=0)
    assert strips.shape == (12, 2 * STRIP_HEIGHT, STRIP_WIDTH, 3) and labels.shape == (12, 2)
    scenes = tmp_path / "scenes"
    write_scenes(scenes, 2, seed=1, designs="seen", kind="screenshot")
    reader, figures = train_margin_reader(tmp_path / "data", TINY, scenes)
    assert figures["boards"] == 6 and 0.0 <= figures["shown_accuracy"] <= 1.0
    save_margin_reader(reader, tmp_path / "margin", TINY, figures)
    loaded = load_margin_reader(tmp_path / "margin")
    pixels = strips[:4].permute(0, 3, 1, 2).float() / 255
    # Loading folds the batch norms into the convolutions: the same logits.
    assert torch.allclose(loaded(pixels), reader(pixels), atol=1e-5)
    config = json.loads((tmp_path / "margin" / MARGIN_CONFIG_FILE).read_text())
    assert config == {"recipe": TINY.to_dict(), "strips": STRIPS, "validation": figures}


def test_scene_boards_are_cut_at_their_corners_and_labelled_by_their_look(tmp_path):
    scenes = tmp_path / "scenes"
    write_scenes(scenes, 6, seed=5, designs="seen", kind="multi")
    labelled = [board for scene in read_jsonl(scenes / LABELS_FILE) for board in scene["boards"]]
    strips, labels = scene_margin_examples(scenes, 1, 0.0, seed=0)
    assert strips.shape == (len(labelled), 2 * STRIP_HEIGHT, STRIP_WIDTH, 3)
    for board, (outside, flipped) in zip(labelled, labels.tolist(), strict=True):
        assert bool(outside) == ("/coords-outside" in board["look"])
        assert bool(flipped) == board["flipped"]


def test_a_missing_or_broken_margin_reader_is_a_clear_error(tmp_path):
    with pytest.raises(ChessVLMError, match=r"no margin reader.*build-default"):
        load_margin_reader(tmp_path)
    save_margin_reader(MarginReader((4,), 8), tmp_path, TINY, {})
    with pytest.raises(InputError, match=r"margin\.safetensors.*do not fit"):
        load_margin_reader(tmp_path)  # the config says two layers, the weights one
    config = json.loads((tmp_path / MARGIN_CONFIG_FILE).read_text())
    config["strips"] = {"cell": 99, "depth": 1.0}
    (tmp_path / MARGIN_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"margin\.json.*made for strips.*rebuild"):
        load_margin_reader(tmp_path)
    (tmp_path / MARGIN_CONFIG_FILE).write_text("{not json")
    with pytest.raises(InputError, match=r"margin\.json.*not a margin reader"):
        load_margin_reader(tmp_path)


def test_the_shipped_margin_reader_is_made_by_its_recipe():
    config = json.loads((DEFAULT_MARGIN_READER / MARGIN_CONFIG_FILE).read_text())
    assert config["recipe"] == MarginRecipe().to_dict()
    assert (DEFAULT_MARGIN_READER / MARGIN_WEIGHTS_FILE).stat().st_size < 500_000


def test_the_shipped_reader_reads_outside_coordinates_of_unseen_designs(tmp_path):
    # Fresh boards in the designs and looks kept out of training, as `predict` reads them.
    synth_json_dataset(tmp_path, {"test": 200}, seed=777, style="designs-held-out")
    records = [json.loads(line) for line in (tmp_path / "test.jsonl").open()]
    paths = [tmp_path / record["image_path"] for record in records]
    readings = [reading for _, reading, _ in predict_boards(load_reader(DEFAULT_READER), paths)]
    outside = [r for r in records if r["coordinates"] == "outside"]
    assert len(outside) >= 25
    for record, reading in zip(records, readings, strict=True):
        printed = record["coordinates"] == "outside"
        assert (reading.outside_coordinates_probability > 0.5) == printed, record["id"]
        if printed:  # they settle the orientation, whatever the position says
            assert reading.flipped == record["flipped"], record["id"]


def test_the_shipped_margin_reader_takes_no_player_names_or_captions_for_coordinates(tmp_path):
    # Screenshots and pages of unseen designs: names, clocks, move lists and captions stand
    # beside the boards, and only some boards print their coordinates outside.
    scenes = tmp_path / "scenes"
    for kind in ("screenshot", "page"):
        write_scenes(scenes / kind, 25, seed=31, designs="held-out", kind=kind)
    reader = load_margin_reader(DEFAULT_MARGIN_READER)
    for kind in ("screenshot", "page"):
        labelled = [b for scene in read_jsonl(scenes / kind / LABELS_FILE) for b in scene["boards"]]
        strips, labels = scene_margin_examples(scenes / kind, 1, 0.0, seed=0)
        shown, by_them = margin_evidence(reader, strips.numpy())
        assert labels[:, 0].sum() >= 3, kind  # some boards of each kind print them
        assert torch.equal(shown > 0.5, labels[:, 0].bool()), kind
        printed = labels[:, 0].bool()
        assert torch.equal((by_them > 0)[printed], labels[printed, 1].bool()), kind
        assert len(labelled) == len(labels)


def _meta(flipped: float) -> torch.Tensor:
    named = {"flipped": flipped, "black_to_move": 0.5}
    named |= {"flipped_by_coordinates": 0.5, "coordinates": 0.0}
    return torch.tensor([[named[name] for name in META_OUTPUTS]])


def test_outside_coordinates_outweigh_the_position_only_where_they_are_shown():
    from chessvlm.reader.data import square_labels
    from chessvlm.reader.orientation import shown_as_images

    # An opening seen from black's side: the position alone says so.
    opening = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"
    classes = torch.tensor([square_labels(opening)])
    log_probs = shown_as_images(classes, torch.tensor([True])).clamp_min(1e-4).log()
    prior = default_position_prior()
    position_only = combined_flipped_probability(_meta(0.9), prior, log_probs).item()
    assert position_only > 0.99
    white_below = (torch.tensor([1.0]), torch.tensor([-12.0]))
    assert combined_flipped_probability(_meta(0.9), prior, log_probs, white_below).item() < 0.01
    not_shown = (torch.tensor([0.0]), torch.tensor([-12.0]))
    unchanged = combined_flipped_probability(_meta(0.9), prior, log_probs, not_shown).item()
    assert unchanged == pytest.approx(position_only)


def test_outside_coordinates_show_the_orientation_of_a_board_without_pawns():
    import chess

    ending = chess.Board("8/8/4k3/8/8/8/3K4/8 w - - 0 1")
    reading = BoardReading(ending, False, 0.1, None, 0.9, coordinates_probability=0.0)
    assert not reading.orientation_shown
    reading.outside_coordinates_probability = 0.97
    assert reading.orientation_shown
