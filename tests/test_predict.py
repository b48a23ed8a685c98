"""`chessvlm predict` and the image loading behind it: good and bad files, metadata, formats,
reader checkpoints and VLM folders."""

from __future__ import annotations

import json
from pathlib import Path

import chess
import numpy as np
import pytest
from PIL import Image
from reader_fixtures import TEST_IMAGE_SIZE, write_dataset

from chessvlm.cli import main
from chessvlm.errors import ChessVLMError, InputError
from chessvlm.positions import answer_text
from chessvlm.predict import (
    CASTLING_INFERRED,
    TO_MOVE_ASSUMED,
    Metadata,
    Placement,
    check_flags,
    complete_position,
    format_result,
)
from chessvlm.reader.images import collect_image_paths, load_board_image
from chessvlm.reader.train import ReaderTrainConfig, train_reader
from chessvlm.rendering import RenderParams, render_board


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    data = write_dataset(tmp_path_factory.mktemp("data"), {"train": 4, "val": 2})
    out = tmp_path_factory.mktemp("reader")
    config = ReaderTrainConfig(
        data_dir=str(data), out=str(out), image_size=TEST_IMAGE_SIZE, epochs=1, batch_size=4
    )
    return train_reader(config)


@pytest.fixture
def boards(tmp_path) -> Path:
    folder = tmp_path / "boards"
    folder.mkdir()
    for index, fen in enumerate([chess.STARTING_FEN, "8/8/4k3/8/8/3K4/8/8 w - - 0 1"]):
        render_board(chess.Board(fen), RenderParams(size=128)).save(folder / f"board{index}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


# --------------------------------------------------------------------------- images


def test_folders_and_patterns_expand_to_images(boards, tmp_path):
    items = collect_image_paths(
        [str(boards), str(boards / "*.png"), str(tmp_path / "none*.png"), "missing.png"]
    )
    names = [(Path(path).name, problem) for path, problem in items]
    assert names[:4] == [("board0.png", None), ("board1.png", None)] * 2
    assert names[4] == ("none*.png", "no file matches this pattern")
    assert names[5] == ("missing.png", None)  # reported when read, like any unreadable file


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16", "CMYK", "1"])
def test_other_image_modes_are_converted(tmp_path, mode):
    image = render_board(chess.Board(), RenderParams(size=128))
    converted = image.convert("L").point(lambda v: v * 256) if mode == "I;16" else image
    path = tmp_path / f"board.{'jpg' if mode == 'CMYK' else 'png'}"
    (converted if mode == "I;16" else image.convert(mode)).save(path)
    array = load_board_image(path, 64)
    assert array.shape == (64, 64, 3) and array.dtype == np.uint8
    assert array.std() > 20  # still a board, not a flat image


def test_transparent_pixels_become_white(tmp_path):
    image = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    image.save(tmp_path / "clear.png")
    assert load_board_image(tmp_path / "clear.png", 64).min() == 255


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello"), "not an image file"),
        (lambda p: Image.new("RGB", (40, 40)).save(p, "PNG"), "at least|or more"),
        (lambda p: Image.new("RGB", (300, 100)).save(p, "PNG"), "too far from square"),
        (lambda p: p.write_bytes(_png_bytes()[:300]), "cannot decode"),
    ],
)
def test_bad_images_give_clear_errors(tmp_path, make, problem):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(InputError, match=problem) as caught:
        load_board_image(path, 64)
    assert str(path) in str(caught.value)


def test_huge_images_are_refused_or_read_at_reduced_scale(tmp_path, monkeypatch):
    photo = render_board(chess.Board(), RenderParams(size=512)).resize((2400, 2400))
    photo.save(tmp_path / "big.jpg", quality=90)
    assert load_board_image(tmp_path / "big.jpg", 64).shape == (64, 64, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    with pytest.raises(InputError, match="too large"):
        load_board_image(tmp_path / "big.jpg", 64)


def _png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    render_board(chess.Board(), RenderParams(size=128)).save(buffer, "PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- metadata


def test_castling_rights_are_those_the_placement_allows():
    start = Placement(chess.Board())
    board, notes = complete_position(start, Metadata())
    assert board.fen() == chess.STARTING_FEN
    assert notes["castling_rights"] == CASTLING_INFERRED
    assert notes["to_move"] == TO_MOVE_ASSUMED
    moved = chess.Board("r3k2r/8/8/8/8/8/8/R4K1R w - - 0 1")
    board, _ = complete_position(Placement(moved), Metadata())
    assert board.castling_xfen() == "kq"


def test_flags_set_the_metadata():
    placement = Placement(chess.Board("4k3/8/8/3pP3/8/8/8/4K3 w - - 0 1"))
    board, notes = complete_position(placement, Metadata("w", "-", "d6"))
    assert board.fen() == "4k3/8/8/3pP3/8/8/8/4K3 w - d6 0 1"
    assert notes["to_move"] == "from --to-move" and notes["castling_rights"] == "from --castling"


def test_side_to_move_read_by_the_model_is_used_and_labelled():
    board, notes = complete_position(Placement(chess.Board(), {}, 0.97), Metadata())
    assert board.turn == chess.BLACK and "read from the image" in notes["to_move"]
    board, _ = complete_position(Placement(chess.Board(), {}, 0.97), Metadata(to_move="w"))
    assert board.turn == chess.WHITE


@pytest.mark.parametrize(
    "flags", [Metadata(to_move="x"), Metadata(castling="KX"), Metadata(en_passant="e4")]
)
def test_bad_flags_are_refused(flags):
    with pytest.raises(ChessVLMError):
        check_flags(flags)


def test_formats():
    board = chess.Board()
    line = json.loads(format_result("a.png", board, {"x": "y"}, "json", with_name=False))
    assert line["image"] == "a.png" and len(line["position"]["pieces"]) == 32
    assert line["position"]["metadata"]["castling_rights"] == {
        "white": ["K", "Q"],
        "black": ["k", "q"],
    }
    assert format_result("a.png", board, {}, "fen", with_name=False) == chess.STARTING_FEN
    assert (
        format_result("a.png", board, {}, "fen", with_name=True) == f"a.png\t{chess.STARTING_FEN}"
    )
    compact = format_result("a.png", board, {}, "compact", with_name=False)
    assert compact == answer_text(board, "compact")


# --------------------------------------------------------------------------- command


def test_predict_with_a_reader_reports_each_image(checkpoint, boards, capsys):
    code = main(["predict", str(boards), str(boards / "notes.txt"), "--model", str(checkpoint)])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 1
    assert [Path(line["image"]).name for line in lines] == ["board0.png", "board1.png"]
    for line in lines:
        assert set(line["position"]) == {"pieces", "metadata"}
        assert line["notes"]["castling_rights"] == CASTLING_INFERRED
        assert "at the bottom" in line["notes"]["orientation"]
        assert 0.5 <= line["orientation_probability"] <= 1.0
        left, top, right, bottom = line["board_box"]
        assert 0 <= left < right <= 128 and 0 <= top < bottom <= 128
    assert "notes.txt: not an image file" in captured.err


def test_orientation_a_board_cannot_show_is_called_a_guess(monkeypatch):
    from chessvlm.predict import _orientation_note
    from chessvlm.reader.read import BoardReading

    kings = chess.Board("4k3/8/8/8/8/8/8/4K3 w - - 0 1")
    reading = BoardReading(kings, True, 0.7, None, 0.9, coordinates_probability=0.05)
    note = _orientation_note(reading, given=False)
    assert note.startswith("black at the bottom, a guess (probability 0.700)")
    assert "--orientation white" in note
    reading.coordinates_probability = 0.95
    assert _orientation_note(reading, given=False) == "black at the bottom (probability 0.700)"


@pytest.mark.parametrize("flipped", [False, True])
def test_coordinates_outside_a_board_without_pawns_show_its_orientation(flipped, tmp_path, capsys):
    # Kings and knights mid-board: the position is as likely from either side, and the
    # letters are printed in a band outside the squares, where the reader's network never
    # looks.
    ending = chess.Board("8/8/2kn4/8/8/4NK2/8/8 w - - 0 1")
    params = RenderParams(
        piece_set="merida", size=320, flipped=flipped, coordinates=True, coordinate_place="outside"
    )
    path = tmp_path / "ending.png"
    render_board(ending, params).save(path)
    assert main(["predict", str(path), "--format", "json"]) == 0
    line = json.loads(capsys.readouterr().out)
    side = "black" if flipped else "white"
    assert line["notes"]["orientation"].startswith(f"{side} at the bottom (probability")
    assert line["orientation_probability"] > 0.999


def test_predict_fen_for_one_image_with_flags(checkpoint, boards, capsys):
    args = ["predict", str(boards / "board0.png"), "--model", str(checkpoint), "--format", "fen"]
    assert main([*args, "--to-move", "b", "--castling", "-"]) == 0
    (fen,) = capsys.readouterr().out.splitlines()
    assert fen.split()[1:4] == ["b", "-", "-"]
    chess.Board(fen)


def test_predict_with_a_stated_orientation(checkpoint, boards, capsys):
    args = ["predict", str(boards / "board0.png"), "--model", str(checkpoint)]
    assert main([*args, "--orientation", "black"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert notes["orientation"] == "black at the bottom (from --orientation)"


def test_predict_with_a_vlm_folder(tmp_path, boards, monkeypatch, capsys):
    from chessvlm import generation
    from chessvlm.modeling import init_model

    model = init_model("tiny", tmp_path / "tiny")
    start = answer_text(chess.Board(), "compact")
    asked = []

    def fake_answers(vlm, processor, images, prompt, **options):
        answers = [start, "I see a chess board."]
        asked.append((len(images), prompt, options))
        return [generation.Generation(answers[len(asked) - 1], 80, 0.1, False) for _ in images]

    monkeypatch.setattr(generation, "generate_answers", fake_answers)
    code = main(["predict", str(boards / "board*.png"), "--model", str(model), "--format", "fen"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.splitlines() == [f"{boards / 'board0.png'}\t{chess.STARTING_FEN}"]
    assert "board1.png board 1: the model's answer is not a board (no_json)" in captured.err
    # The finder cut each board out of its image: one call per image, the board's crop.
    assert [images for images, _, _ in asked] == [1, 1]
    (_, prompt, options) = asked[0]
    assert prompt.startswith("Read the chess position")
    assert options["batch_size"] == 32


def test_predict_with_a_folder_that_is_no_model(tmp_path, boards, capsys):
    assert main(["predict", str(boards / "board0.png"), "--model", str(tmp_path)]) == 2
    assert "neither a reader checkpoint" in capsys.readouterr().err


def test_command_choices_match_the_reader_modules():
    from chessvlm import predict
    from chessvlm.cli import reader as command
    from chessvlm.reader import evaluate, model, read

    assert tuple(command.ENCODERS) == model.ENCODERS
    assert tuple(command.DECODERS) == read.DECODERS
    assert tuple(command.ORIENTATIONS) == evaluate.ORIENTATIONS
    assert tuple(command.FORMATS) == predict.FORMATS


def test_predict_without_the_finder_crops_to_the_located_board_for_a_vlm_trained_on_crops(
    tmp_path, boards, monkeypatch, capsys
):
    import chessvlm.reader.default
    import chessvlm.reader.read
    from chessvlm import generation
    from chessvlm.modeling import init_model, read_run_config, write_run_config

    model = init_model("tiny", tmp_path / "tiny")
    write_run_config(model, {**read_run_config(model), "board_crop": "label box"})
    reader = tmp_path / "reader"
    reader.mkdir()
    (reader / "reader.json").write_text("{}")
    (reader / "reader.safetensors").write_bytes(b"")
    monkeypatch.setattr(chessvlm.reader.default, "default_reader", lambda: reader)
    monkeypatch.setattr(chessvlm.reader.read, "load_reader", lambda path: "reader")
    located, seen = [], []

    def locate(found, images):
        located.append(len(images))
        return [(0.25, 0.25, 0.75, 0.75)] * len(images)

    def fake_answers(vlm, processor, images, prompt, **options):
        seen.extend(image.size for image in images)
        answer = answer_text(chess.Board(), "compact")
        return [generation.Generation(answer, 80, 0.1, False) for _ in images]

    monkeypatch.setattr(chessvlm.reader.read, "locate_boards", locate)
    monkeypatch.setattr(generation, "generate_answers", fake_answers)
    code = main(["predict", str(boards / "board*.png"), "--model", str(model), "--no-detect"])
    captured = capsys.readouterr()
    assert code == 0 and "default reader" in captured.err
    assert located == [2] and seen == [(64, 64), (64, 64)]  # one batch; 128 px boards cut
    for line in captured.out.splitlines():
        result = json.loads(line)
        assert result["board_box"] == [32.0, 32.0, 96.0, 96.0]
        assert "default reader" in result["notes"]["board_crop"]


# --------------------------------------------------------------------------- the board finder


def two_boards_page(path: Path) -> Path:
    """A page with two boards side by side: the start position left, two kings right."""
    page = Image.new("RGB", (900, 500), "white")
    page.paste(render_board(chess.Board(), RenderParams(size=240)), (40, 100))
    kings = chess.Board("8/8/4k3/8/8/3K4/8/8 w - - 0 1")
    page.paste(render_board(kings, RenderParams(size=240, theme="green")), (500, 120))
    page.save(path)
    return path


def test_predict_prints_every_board_of_a_page_in_reading_order(checkpoint, tmp_path, capsys):
    page = two_boards_page(tmp_path / "page.png")
    assert main(["predict", str(page), "--model", str(checkpoint)]) == 0
    left, right = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert [left["board"], right["board"]] == [1, 2]
    assert left["board_box"] == pytest.approx([40, 100, 280, 340], abs=1)
    assert right["board_box"] == pytest.approx([500, 120, 740, 360], abs=1)
    for result in (left, right):
        assert 0.0 <= result["confidence"] <= 1.0
        assert all(square["probability"] < 0.9 for square in result["uncertain_squares"])
        assert result["legal"] == ("illegal_because" not in result)


def test_a_board_whose_pieces_hide_its_corners_is_found_by_the_locator(tmp_path, capsys):
    # Bauhaus's block pieces hide most X-corners of the starting position: the corner search
    # finds nothing, the shipped reader's locator finds the board filling the picture.
    path = tmp_path / "bauhaus.png"
    render_board(chess.Board(), RenderParams(size=512, piece_set="bauhaus")).save(path)
    assert main(["predict", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["board_box"] == pytest.approx([0, 0, 512, 512], abs=10)
    # Bauhaus is among the hardest seen designs (94.9% of its squares in a 1,000-board test): the
    # white knight on b1 is a near tie, so the test asks that every square read wrong is
    # among those the result flags for checking.
    read = chess.Board(result["fen"]).piece_map()
    wrong = {
        chess.square_name(square)
        for square in chess.SQUARES
        if read.get(square) != chess.Board().piece_at(square)
    }
    assert len(wrong) <= 1
    assert wrong <= {entry["square"] for entry in result["uncertain_squares"]}


def test_a_picture_without_a_board_says_so_and_prints_no_board(checkpoint, tmp_path, capsys):
    Image.new("RGBA", (640, 480), (0, 0, 0, 0)).save(tmp_path / "transparent.png")
    Image.new("RGB", (1280, 800), "white").save(tmp_path / "blank.png")
    code = main(["predict", str(tmp_path / "transparent.png"), str(tmp_path / "blank.png")])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "transparent.png: no board found" in captured.err
    assert "blank.png: no board found" in captured.err


def test_pdf_pages_stream_and_a_rerun_resumes(checkpoint, tmp_path, capsys):
    page = two_boards_page(tmp_path / "page.png")
    images = [Image.open(page), Image.new("RGB", (900, 500), "white"), Image.open(page)]
    pdf = tmp_path / "book.pdf"
    images[0].save(pdf, format="PDF", save_all=True, append_images=images[1:], resolution=72)
    log = tmp_path / "results.jsonl"
    args = ["predict", str(pdf), "--model", str(checkpoint), "--dpi", "72", "--out", str(log)]
    args += ["--format", "fen"]
    assert main(args) == 1
    captured = capsys.readouterr()
    names = [line.split("\t")[0] for line in captured.out.splitlines()]
    assert names == [f"{pdf}#page={p}#board={b}" for p in (1, 3) for b in (1, 2)]
    assert f"{pdf}#page=2: no board found" in captured.err
    pages = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(p["page"], len(p["boards"])) for p in pages] == [(1, 2), (2, 0), (3, 2)]
    assert main(args) == 0  # every page done: nothing is read again
    assert capsys.readouterr().out == ""


def test_no_detect_reads_a_cropped_board_and_refuses_pdfs(checkpoint, boards, tmp_path, capsys):
    Image.new("RGB", (100, 100), "white").save(tmp_path / "page.pdf")
    args = ["predict", str(boards / "board0.png"), str(tmp_path / "page.pdf"), "--no-detect"]
    assert main([*args, "--model", str(checkpoint)]) == 1
    captured = capsys.readouterr()
    (result,) = (json.loads(line) for line in captured.out.splitlines())
    assert result["image"].endswith("board0.png") and "corners" not in result
    assert "page.pdf: a PDF page is no board cropped to its squares" in captured.err
