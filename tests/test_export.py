"""`chessvlm export --format onnx`: the graphs take any batch, agree with torch, and the
check fails loudly when they do not."""

from __future__ import annotations

import json
import shutil

import chess
import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from serve_fixtures import FENS, board_png

from chessvlm.cli import main
from chessvlm.errors import ChessVLMError
from chessvlm.export import (
    LOCATOR_FILE,
    MANIFEST_FILE,
    READER_FILE,
    OnnxReader,
    check_boards,
    check_export,
    export_onnx,
    verify_export,
)
from chessvlm.reader.default import default_reader
from chessvlm.reader.read import load_reader, save_checkpoint
from chessvlm.serve.app import ServeConfig, create_app


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    assert main(["export", "--format", "onnx", "--out", str(out), "--check_boards", "6"]) == 0
    return out


def test_export_writes_checked_graphs_with_a_dynamic_batch(exported):
    manifest = json.loads((exported / MANIFEST_FILE).read_text())
    check = manifest["checked_against_torch"]
    assert check["boards"] == check["same_fen"] == 6
    assert check["max_square_probability_difference"] <= 1e-4
    for name in (LOCATOR_FILE, READER_FILE):
        graph = onnx.load(str(exported / name))
        onnx.checker.check_model(graph)
        (batch, *_) = graph.graph.input[0].type.tensor_type.shape.dim
        assert batch.dim_param, f"{name}: the batch size is fixed at {batch.dim_value}"


def test_onnx_reads_any_batch_as_torch_does(exported):
    reader = load_reader(default_reader())
    onnx_reader = OnnxReader(exported, reader.config, threads=1)
    for count in (1, 3):
        result = check_export(reader, onnx_reader, count, batch=count)
        assert result.passed, result
    images = [image.convert("RGB") for image, _ in check_boards(2, seed=5)]
    squares = [reading.square_probabilities for reading in onnx_reader.read_images(images)]
    assert all(len(row) == 64 and 0 < min(row) <= 1 for row in squares)


def test_a_graph_that_disagrees_with_torch_fails_the_check(exported, tmp_path, monkeypatch):
    def off_by_a_little(self, boards):
        squares, meta = original(self, boards)
        return squares, np.clip(meta + 1e-3, 0, 1)

    original = OnnxReader.probabilities
    monkeypatch.setattr(OnnxReader, "probabilities", off_by_a_little)
    reader = load_reader(default_reader())
    for name in (LOCATOR_FILE, READER_FILE):
        shutil.copyfile(exported / name, tmp_path / name)
    with pytest.raises(ChessVLMError, match="differ from torch"):
        verify_export(reader, tmp_path, 2)
    check = json.loads((tmp_path / MANIFEST_FILE).read_text())["checked_against_torch"]
    assert check["max_meta_probability_difference"] > 1e-4


def test_a_reader_with_zoom_views_exports_them(tmp_path):
    # One trained member of the shipped reader, read with the views: confident readings, and a
    # third of the ensemble's graph to trace.
    shipped = load_reader(default_reader(), fold=False)
    member = shipped.model.members[0]
    config = {"spec": member.spec.to_dict(), "decode": shipped.config["decode"]}
    save_checkpoint(member, tmp_path / "zoomed", {**config, "zoom_views": [0.97, 1.03]})
    result = export_onnx(tmp_path / "zoomed", tmp_path / "onnx", check_boards=3)
    assert result.passed and result.same_fen == 3
    reader = load_reader(tmp_path / "zoomed")
    # The graph reads the views: without them torch reads other probabilities.
    onnx_reader = OnnxReader(tmp_path / "onnx", reader.config, threads=1)
    reader.model.zoom_views = ()
    assert not check_export(reader, onnx_reader, 3).passed


def test_serve_reads_with_an_onnx_export(exported):
    with TestClient(create_app(ServeConfig(model=str(exported)))) as client:
        response = client.post(
            "/api/read?orientation=black",
            content=board_png(FENS[1], flipped=True),
            headers={"content-type": "image/png"},
        )
    (board,) = response.json()["boards"]
    assert board["fen"].split()[0] == chess.Board(FENS[1]).board_fen()
    assert board["notes"]["placement"] == f"board reader {exported}"
