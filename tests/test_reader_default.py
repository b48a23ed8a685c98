"""The default reader shipped inside the package: present, small, reproducible by its recipe,
and still reading boards of designs it never saw, so that a change to rendering or
preprocessing that breaks the shipped weights cannot pass."""

from __future__ import annotations

import dataclasses
import json

import chess
import pytest

from chessvlm.cli import main
from chessvlm.datasets import synth_json_dataset
from chessvlm.errors import ChessVLMError
from chessvlm.io import read_jsonl
from chessvlm.reader.default import DEFAULT_READER, DefaultRecipe, default_reader
from chessvlm.reader.evaluate import ReaderEvalConfig, evaluate_reader
from chessvlm.reader.read import CONFIG_FILE, WEIGHTS_FILE
from chessvlm.reader.train import ReaderTrainConfig
from chessvlm.rendering import RenderParams, render_board

MAX_BYTES = 5_000_000


def test_the_package_ships_a_small_default_reader():
    folder = default_reader()
    size = sum((folder / name).stat().st_size for name in (CONFIG_FILE, WEIGHTS_FILE))
    assert size <= MAX_BYTES
    config = json.loads((folder / CONFIG_FILE).read_text())
    # The one command that makes it, with the recipe this code would use.
    assert config["built_by"] == {
        "command": "chessvlm reader build-default",
        **dataclasses.asdict(DefaultRecipe()),
    }
    # The network this code would train: a changed default (widths, context layers) must
    # come with rebuilt weights.
    assert config["spec"] == ReaderTrainConfig(data_dir="", out="").spec().to_dict()


def test_default_reader_reads_unseen_designs(tmp_path):
    # Fresh boards of the designs and looks the default reader was never trained on.
    data = synth_json_dataset(
        tmp_path / "data", {"test": 120}, seed=12345, style="designs-held-out"
    )
    assert data["test"] == 120
    fens = {}
    for precision in ("float32", "bfloat16"):
        run = tmp_path / precision
        metrics = evaluate_reader(
            ReaderEvalConfig(
                model=str(DEFAULT_READER),
                data_dir=str(tmp_path / "data"),
                output=str(run),
                workers=1,
                precision=precision,
            )
        )
        assert metrics["reader"]["precision"] == precision
        # The shipped weights read 99.77% of these fixed boards' squares in either precision
        # (99.18% of 1,000 others; 99.61% here with the readers shipped before the mesh sets,
        # 99.52% with the pair of readers before them); a preprocessing change that breaks
        # them falls far below. The target, 99.5%, is not reached on the 1,000
        # boards yet: raise this floor with the weights.
        assert metrics["per_square_accuracy"] >= 0.99
        fens[precision] = [
            prediction["fen"] for prediction in read_jsonl(run / "predictions.jsonl")
        ]
    # bfloat16, the default where the CPU computes it natively, reads as float32 does: all
    # 120 boards alike on a CPU with AMX; 2-5 of each 1,000 others differed, as many better
    # as worse.
    assert sum(a != b for a, b in zip(fens["bfloat16"], fens["float32"], strict=True)) <= 3


def test_predict_needs_no_model_flag(tmp_path, capsys):
    board = chess.Board("r1bqk2r/pppp1ppp/2n2n2/2b1p3/2B1P3/3P1N2/PPP2PPP/RNBQ1RK1 b kq - 2 5")
    render_board(board, RenderParams("merida", "green", 256)).save(tmp_path / "board.png")
    assert main(["predict", str(tmp_path / "board.png"), "--format", "fen"]) == 0
    (fen,) = capsys.readouterr().out.splitlines()
    assert fen.split()[0] == board.board_fen()


def test_a_missing_default_reader_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("chessvlm.reader.default.DEFAULT_READER", tmp_path / "none")
    with pytest.raises(ChessVLMError, match=r"no default reader.*--model"):
        default_reader()
