"""Reader ensembles: the mean of the members' outputs, stored in one checkpoint that loads,
reads and validates like a single reader's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reader_fixtures import TEST_IMAGE_SIZE, write_dataset
from safetensors import safe_open

from chessvlm.cli import main
from chessvlm.errors import ChessVLMError, InputError
from chessvlm.reader.ensemble import combine_readers
from chessvlm.reader.model import BoardReader, ReaderEnsemble, ReaderSpec
from chessvlm.reader.read import CONFIG_FILE, WEIGHTS_FILE, load_reader, save_checkpoint
from chessvlm.reader.storage import SCALE_SUFFIX

SPEC = ReaderSpec(image_size=TEST_IMAGE_SIZE)


def _random_reader(seed: int, spec: ReaderSpec = SPEC) -> BoardReader:
    torch.manual_seed(seed)
    model = BoardReader(spec)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def _saved_reader(folder: Path, seed: int, spec: ReaderSpec = SPEC) -> Path:
    config = {"spec": spec.to_dict(), "decode": "argmax", "epoch": seed + 1}
    folder.mkdir(parents=True)
    save_checkpoint(_random_reader(seed, spec), folder, config)
    return folder


@pytest.fixture(scope="module")
def val_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), {"val": 4})


def test_an_ensemble_reads_the_mean_of_its_members():
    members = [_random_reader(0), _random_reader(1)]
    ensemble = ReaderEnsemble(members).eval()
    images = torch.rand(2, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    scenes = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        squares, meta = ensemble(images)
        outputs = [member(images) for member in members]
        boxes = ensemble.locator(scenes)
        member_boxes = [member.locator(scenes) for member in members]
    mean_log_probs = (outputs[0][0].log_softmax(-1) + outputs[1][0].log_softmax(-1)) / 2
    assert torch.allclose(squares, mean_log_probs, atol=1e-6)
    assert torch.allclose(meta, (outputs[0][1] + outputs[1][1]) / 2, atol=1e-6)
    assert torch.allclose(boxes, (member_boxes[0] + member_boxes[1]) / 2, atol=1e-6)


def _mean_outputs(members, images):
    outputs = [member(images) for member in members]
    squares = torch.stack([logits.log_softmax(-1) for logits, _ in outputs]).mean(0)
    return squares, torch.stack([meta for _, meta in outputs]).mean(0)


@torch.no_grad()
def test_later_members_read_only_the_boards_the_first_are_unsure_of():
    members = [_random_reader(seed) for seed in range(3)]
    images = torch.rand(4, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    first_squares, first_meta = _mean_outputs(members[:2], images)
    every_squares, every_meta = _mean_outputs(members, images)
    # A threshold between the boards' least sure squares leaves two boards on each side.
    least_sure = first_squares.amax(-1).amin(-1).exp().sort().values
    ensemble = ReaderEnsemble(members, always=2, unsure_below=float(least_sure[1:3].mean()))
    unsure = ensemble.unsure_boards(first_squares)
    assert unsure.sum() == 2
    calls = []
    members[2].register_forward_hook(lambda _, inputs, __: calls.append(len(inputs[0])))
    squares, meta = ensemble(images)
    assert calls == [2]  # the third member read only the two unsure boards
    assert torch.allclose(squares[unsure], every_squares[unsure], atol=1e-6)
    assert torch.allclose(meta[unsure], every_meta[unsure], atol=1e-6)
    assert torch.allclose(squares[~unsure], first_squares[~unsure], atol=1e-6)
    assert torch.allclose(meta[~unsure], first_meta[~unsure], atol=1e-6)
    traced_squares, traced_meta = ensemble.forward_every_member(images)
    assert torch.allclose(traced_squares, squares, atol=1e-6)
    assert torch.allclose(traced_meta, meta, atol=1e-6)
    sure_of_all = ReaderEnsemble(members, always=2, unsure_below=1e-9)
    assert torch.allclose(sure_of_all(images)[0], first_squares, atol=1e-6)
    assert torch.allclose(ReaderEnsemble(members)(images)[0], every_squares, atol=1e-6)


def test_an_ensemble_needs_two_readers_of_one_spec():
    with pytest.raises(ChessVLMError, match="at least two"):
        ReaderEnsemble([_random_reader(0)])
    other = ReaderSpec(image_size=TEST_IMAGE_SIZE, edge_channels=4)
    with pytest.raises(ChessVLMError, match="share one spec"):
        ReaderEnsemble([_random_reader(0), _random_reader(1, other)])


def test_combined_checkpoint_loads_reads_and_is_validated(tmp_path, val_data):
    members = [_saved_reader(tmp_path / f"seed{seed}", seed) for seed in (0, 1)]
    out = combine_readers(members, tmp_path / "ensemble", data_dir=val_data, workers=1)
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["members"] == 2
    assert [member["epoch"] for member in config["member_checkpoints"]] == [1, 2]
    assert [member["path"] for member in config["member_checkpoints"]] == [
        str(member) for member in members
    ]
    assert config["val"]["n"] == 4 and set(config["val_by_decode"]) == {"argmax", "chess_rules"}
    with safe_open(out / WEIGHTS_FILE, framework="pt") as weights:
        names = list(weights.keys())
        dtypes = {weights.get_tensor(name).dtype for name in names}
    assert {name.split(".")[1] for name in names} == {"0", "1"}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    reader = load_reader(out)
    assert isinstance(reader.model, ReaderEnsemble)
    # Half-precision storage reads as the members' float32 weights do, to rounding.
    expected = ReaderEnsemble([load_reader(member, fold=False).model for member in members])
    images = torch.rand(3, 3, TEST_IMAGE_SIZE, TEST_IMAGE_SIZE)
    with torch.no_grad():
        (squares, meta), (want_squares, want_meta) = reader.model(images), expected.eval()(images)
    assert torch.allclose(squares.exp(), want_squares.exp(), atol=1e-2)
    assert torch.allclose(meta.sigmoid(), want_meta.sigmoid(), atol=1e-2)


def test_combining_refuses_mixed_specs_and_nested_ensembles(tmp_path):
    first = _saved_reader(tmp_path / "a", 0)
    other_spec = _saved_reader(tmp_path / "b", 1, ReaderSpec(image_size=TEST_IMAGE_SIZE * 2))
    with pytest.raises(ChessVLMError, match=r"b and .*a are readers of different specs"):
        combine_readers([first, other_spec], tmp_path / "out")
    nested = combine_readers([first, _saved_reader(tmp_path / "c", 2)], tmp_path / "pair")
    with pytest.raises(ChessVLMError, match=r"pair is an ensemble already"):
        combine_readers([first, nested], tmp_path / "out")


def test_combined_escalation_is_kept_in_int8_and_reloads(tmp_path, val_data):
    members = [_saved_reader(tmp_path / f"seed{seed}", seed) for seed in range(3)]
    out = combine_readers(
        members, tmp_path / "triple", storage="int8", always_members=2, unsure_below=0.5
    )
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["weights_storage"] == "int8"
    assert (config["always_members"], config["unsure_below"]) == (2, 0.5)
    with safe_open(out / WEIGHTS_FILE, framework="pt") as weights:
        names = list(weights.keys())
        layer_weights = [name for name in names if name.endswith(SCALE_SUFFIX)]
        assert any(name.startswith("members.2.") for name in layer_weights)
        for name in layer_weights:
            assert weights.get_tensor(name.removesuffix(SCALE_SUFFIX)).dtype == torch.int8
    model = load_reader(out).model
    assert isinstance(model, ReaderEnsemble)
    assert (model.always, model.unsure_below) == (2, 0.5)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"always_members": 4}, "4 of 3 members"),
        ({"always_members": "two"}, "'always_members' must be a count"),
        ({"always_members": 2, "unsure_below": 0}, "unsure_below must be a probability"),
        ({"always_members": 2, "unsure_below": "high"}, "'unsure_below' must be a probability"),
    ],
)
def test_a_bad_escalation_names_the_config(tmp_path, setting, message):
    members = [_saved_reader(tmp_path / f"seed{seed}", seed) for seed in range(3)]
    out = combine_readers(members, tmp_path / "triple")
    config = json.loads((out / CONFIG_FILE).read_text())
    (out / CONFIG_FILE).write_text(json.dumps({**config, **setting}))
    with pytest.raises(InputError, match=rf"reader\.json.*{message}"):
        load_reader(out)


def test_a_bad_member_count_names_the_config(tmp_path):
    folder = _saved_reader(tmp_path / "reader", 0)
    config = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "members": "two"}))
    with pytest.raises(InputError, match=r"reader\.json.*'members'"):
        load_reader(folder)


def test_combine_command_writes_a_checkpoint_predict_reads(tmp_path, val_data, capsys):
    members = [str(_saved_reader(tmp_path / f"seed{seed}", seed)) for seed in (0, 1)]
    out = tmp_path / "ensemble"
    args = ["reader", "combine", "--model", members[0], "--model", members[1], "--out", str(out)]
    assert main([*args, "--data_dir", str(val_data)]) == 0
    assert f"ensemble checkpoint: {out}" in capsys.readouterr().out
    board = val_data / "images" / "val_0000.png"
    assert main(["predict", str(board), "--model", str(out), "--no-detect", "--format", "fen"]) == 0
    (fen,) = capsys.readouterr().out.splitlines()
    assert len(fen.split()) == 6  # a whole FEN, whatever these random weights read
    assert main(["reader", "combine", "--model", str(tmp_path / "none"), "--out", str(out)]) == 2
    escalating = tmp_path / "escalating"
    more = ["--storage", "int8", "--always_members", "1", "--unsure_below", "0.9"]
    assert main([*args[:-1], str(escalating), *more]) == 0
    config = json.loads((escalating / CONFIG_FILE).read_text())
    assert (config["weights_storage"], config["always_members"], config["unsure_below"]) == (
        "int8",
        1,
        0.9,
    )
    assert json.loads((out / CONFIG_FILE).read_text())["weights_storage"] == "float16"


def test_an_ensemble_reads_in_the_zoom_views_combine_gives_not_its_members(tmp_path):
    members = [_saved_reader(tmp_path / f"seed{seed}", seed) for seed in (0, 1)]
    config = json.loads((members[0] / CONFIG_FILE).read_text())
    (members[0] / CONFIG_FILE).write_text(json.dumps({**config, "zoom_views": [0.97, 1.03]}))
    assert load_reader(members[0]).model.zoom_views == (0.97, 1.03)
    plain = load_reader(combine_readers(members, tmp_path / "plain")).model
    assert [member.zoom_views for member in plain.members] == [(), ()]
    zoomed = load_reader(combine_readers(members, tmp_path / "zoomed", zoom_views=[0.9, 1.1]))
    assert [member.zoom_views for member in zoomed.model.members] == [(0.9, 1.1)] * 2


def test_the_zoom_views_flag_takes_widths_or_none(tmp_path, capsys):
    members = [str(_saved_reader(tmp_path / f"seed{seed}", seed)) for seed in (0, 1)]
    args = ["reader", "combine", "--model", members[0], "--model", members[1]]
    assert main([*args, "--out", str(tmp_path / "a"), "--zoom_views", "0.95,1.05"]) == 0
    assert json.loads((tmp_path / "a" / CONFIG_FILE).read_text())["zoom_views"] == [0.95, 1.05]
    assert main([*args, "--out", str(tmp_path / "b"), "--zoom_views", "none"]) == 0
    assert "zoom_views" not in json.loads((tmp_path / "b" / CONFIG_FILE).read_text())
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "c"), "--zoom_views", "wide"])
    assert "--zoom_views" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "c"), "--zoom_views", "3"]) == 2
    assert "--zoom_views: must be a list of widths from 0.5 to 2" in capsys.readouterr().err
