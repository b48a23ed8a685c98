"""JSON dataset (synthetic and imported), resume after an interruption, bad input, and the VLM
dataset built from it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import chess
import pytest
from PIL import Image
from seed_layouts import (
    ROWS,
    image_bytes,
    write_arrow_layout,
    write_csv_layout,
    write_parquet_layout,
)

from chessvlm import rendering
from chessvlm.cli import main
from chessvlm.datasets import (
    assistant_answer,
    create_vlm_dataset,
    import_json_dataset,
    read_json_dataset,
    read_vlm_dataset,
    synth_json_dataset,
    user_prompt,
)
from chessvlm.errors import ChessVLMError, InputError
from chessvlm.io import read_jsonl
from chessvlm.positions import board_from_seed_json, parse_answer
from chessvlm.prompts import PROMPTS, SHORT_PROMPT

COUNTS = {"train": 10, "val": 3, "test": 4}
RECORD_KEYS = [
    "id",
    "image_path",
    "fen",
    "json_repr",
    "active_color",
    "castling_rights",
    "en_passant_target_square",
    "flipped",
    "style",
    "board_box",
    "coordinates",
]


def _synth(out: Path, workers: int = 1, **options) -> dict:
    options = {"counts": COUNTS, "seed": 3, "style": "simple", **options}
    return synth_json_dataset(out, workers=workers, **options)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert _synth(out, test_style="seed") == COUNTS
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# --------------------------------------------------------------------------- synthetic


def test_synth_writes_records_whose_labels_match_the_board(synth_dir):
    assert sorted(p.name for p in synth_dir.iterdir()) == [
        "dataset.json",
        "images",
        "test.jsonl",
        "train.jsonl",
        "val.jsonl",
    ]
    for split, count in COUNTS.items():
        pairs = read_json_dataset(synth_dir / f"{split}.jsonl")
        assert [record["id"] for record, _ in pairs] == [f"{split}_{i:06d}" for i in range(count)]
        for record, board in pairs:
            assert list(record) == RECORD_KEYS
            assert board.fen() == record["fen"]
            key = " ".join(record["fen"].split()[:4])
            assert " ".join(board_from_seed_json(record["json_repr"]).fen().split()[:4]) == key
            fields = [record[k] for k in RECORD_KEYS[4:7]]
            assert fields == record["fen"].split()[1:4]
            with Image.open(synth_dir / record["image_path"]) as image:
                size = 512 if split == "test" else 224  # --test-style seed vs simple
                assert image.size == (size, size)
            assert record["flipped"] is False
            assert record["style"] == f"cburnett/brown/{size}"
            assert record["board_box"] == [0.0, 0.0, size, size]
            assert record["coordinates"] == "none"


def test_synth_records_carry_the_board_box_and_the_sets_used(tmp_path):
    from chessvlm.rendering import image_size, sample_render_params

    _synth(tmp_path, style="mixed", counts={"train": 12, "val": 0, "test": 0}, seed=5)
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    records = [record for record, _ in read_json_dataset(tmp_path / "train.jsonl")]
    used = sorted({r["style"].split("/")[0] for r in records})
    assert manifest["piece_sets_used"] == used
    assert set(used) <= set(manifest["piece_sets"])
    for record in records:
        params = sample_render_params("mixed", random.Random(f"5/{record['id']}"))
        assert record["style"] == params.name
        assert record["coordinates"] == params.coordinate_mode
        with Image.open(tmp_path / record["image_path"]) as image:
            assert image.size == image_size(params)
        x0, y0, x1, y1 = record["board_box"]
        assert 0 <= x0 < x1 <= image.size[0] and 0 <= y0 < y1 <= image.size[1]
        assert x1 - x0 == y1 - y0 == params.size
    # Resuming a finished dataset with the same settings is allowed.
    _synth(tmp_path, style="mixed", counts={"train": 12, "val": 0, "test": 0}, seed=5)


def test_synth_splits_share_no_board(synth_dir):
    placements = {
        split: {board.board_fen() for _, board in read_json_dataset(synth_dir / f"{split}.jsonl")}
        for split in COUNTS
    }
    assert not placements["train"] & placements["test"]
    assert not placements["train"] & placements["val"]
    assert not placements["val"] & placements["test"]


def test_synth_is_deterministic_and_workers_do_not_change_it(synth_dir, tmp_path):
    _synth(tmp_path, workers=2, test_style="seed")
    assert _files(tmp_path) == _files(synth_dir)


def test_mixed_style_records_what_each_image_shows(tmp_path):
    _synth(tmp_path, counts={"train": 12}, style="mixed")
    records = read_jsonl(tmp_path / "train.jsonl")
    assert len({record["style"] for record in records}) > 6
    for record in records:
        assert record["flipped"] == ("flip" in record["style"].split("/"))
        assert record["image_path"].endswith(".jpg") == ("jpeg" in record["style"])


def test_unknown_style_and_changed_settings_are_refused(synth_dir, tmp_path):
    with pytest.raises(ChessVLMError, match="unknown style 'fancy'"):
        _synth(tmp_path, style="fancy")
    with pytest.raises(ChessVLMError, match=r"other settings \(counts differ\)"):
        _synth(synth_dir, counts={"train": 11, "val": 3, "test": 4}, test_style="seed")
    (tmp_path / "dataset.json").write_text("{")
    with pytest.raises(InputError, match=r"dataset.json: unreadable"):
        _synth(tmp_path)


class _Interrupt(Exception):
    pass


def _interrupting_render_many(after: int, jobs_seen: list):
    """`render_many` that stops like a Ctrl-C after `after` images."""
    real = rendering.render_many

    def render_many(jobs, *args, **kwargs):
        for count, job in enumerate(real(jobs, *args, **kwargs)):
            jobs_seen.append(Path(job.path).name)
            if count == after:
                raise _Interrupt
            yield job

    return render_many


def test_interrupted_synth_resumes_without_redoing_finished_images(
    synth_dir, tmp_path, monkeypatch
):
    first_run: list[str] = []
    monkeypatch.setattr(rendering, "render_many", _interrupting_render_many(6, first_run))
    with pytest.raises(_Interrupt):
        _synth(tmp_path, test_style="seed")
    progress = read_jsonl(tmp_path / ".progress" / "train.jsonl")
    assert [r["id"] for r in progress] == [f"train_{i:06d}" for i in range(6)]
    assert not (tmp_path / "train.jsonl").exists()
    finished = {r["image_path"]: (tmp_path / r["image_path"]).stat().st_mtime_ns for r in progress}
    # A crash can also tear the last log line and leave a temporary image file behind.
    with (tmp_path / ".progress" / "train.jsonl").open("a") as handle:
        handle.write('{"id": "train_0000')
    (tmp_path / "images" / ".train_000007.png.abc.tmp").write_bytes(b"partial")

    second_run: list[str] = []
    monkeypatch.setattr(rendering, "render_many", _interrupting_render_many(10**6, second_run))
    assert _synth(tmp_path, test_style="seed") == COUNTS
    assert second_run[0] == "train_000006.png" and len(second_run) == sum(COUNTS.values()) - 6
    for path, mtime in finished.items():
        assert (tmp_path / path).stat().st_mtime_ns == mtime
    assert _files(tmp_path) == _files(synth_dir)


# --------------------------------------------------------------------------- imports


def _fens(out: Path, split: str) -> list[str]:
    return [record["fen"] for record in read_jsonl(out / f"{split}.jsonl")]


EXPECTED_FENS = [
    "r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1",
    "4k3/8/8/8/3pP3/8/8/4K3 b - e3 0 1",
    "6k1/5ppp/8/8/8/8/5PPP/3R2K1 w - - 0 1",
]


def test_csv_import_copies_images_and_keeps_real_metadata(tmp_path):
    source, out = tmp_path / "seed", tmp_path / "ds"
    write_csv_layout(source)
    results = import_json_dataset(out, "csv", source)
    assert results == {"train": (3, 0), "val": (3, 0), "test": (3, 0)}
    records = read_jsonl(out / "val.jsonl")
    assert [r["fen"] for r in records] == EXPECTED_FENS
    assert [r["active_color"] for r in records] == ["w", "b", "w"]
    assert [r["castling_rights"] for r in records] == ["KQkq", "-", "-"]
    assert [r["en_passant_target_square"] for r in records] == ["-", "e3", "-"]
    assert [r["best_continuation"] for r in records] == [row[4] for row in ROWS]
    assert records[0]["image_path"] == "images/val_000000.png"
    original = source / "validation" / "images" / "validation_000000.png"
    assert (out / records[0]["image_path"]).read_bytes() == original.read_bytes()
    assert records[0]["style"] == "import-csv" and records[0]["flipped"] is False
    assert records[0]["source"] == f"{source / 'validation.csv'}:2"


@pytest.mark.parametrize("writer", [write_parquet_layout, write_arrow_layout])
def test_hf_import_writes_the_same_json_dataset(tmp_path, writer):
    source, out = tmp_path / "hf", tmp_path / "ds"
    writer(source)
    results = import_json_dataset(out, "hf", source, max_samples=2)
    assert results == {"train": (2, 0), "val": (2, 0), "test": (2, 0)}
    records = read_jsonl(out / "test.jsonl")
    assert [r["fen"] for r in records] == EXPECTED_FENS[:2]
    assert records[1]["image_path"] == "images/test_000001.jpg"
    assert (out / records[1]["image_path"]).read_bytes() == image_bytes("JPEG")
    assert records[1]["style"] == "import-hf"


def _bad_csv_source(root: Path) -> Path:
    """A CSV split with one good row, then one row of each kind of bad input."""
    write_csv_layout(root, splits=("test",))
    images = root / "test" / "images"
    (images / "truncated.jpg").write_bytes(image_bytes("JPEG")[:-200])
    (images / "notes.png").write_text("not an image")
    lines = [
        "missing.png,4k3/8/8/8/8/8/8/4K3,w,-,-,",
        "test\\images\\truncated.jpg,4k3/8/8/8/8/8/8/4K3,w,-,-,",
        "test\\images\\notes.png,4k3/8/8/8/8/8/8/4K3,w,-,-,",
        "test\\images\\test_000000.png,4k3/8/8/8/8/8/8/4KK2,w,-,-,",
        "test\\images\\test_000000.png,4k3/8/8/8/8/8/8/4K3,green,-,-,",
        "test\\images\\test_000000.png,4k3/8/8/8",
    ]
    with (root / "test.csv").open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    return root / "test.csv"


BAD_ROW_PROBLEMS = [
    (5, "cannot read image"),
    (6, "corrupt or truncated image"),
    (7, "not an image file"),
    (8, "white has 2 kings"),
    (9, "active_color 'green'"),
    (10, "expected 6 fields"),
]


def test_bad_import_rows_stop_the_run_naming_file_and_line_and_keep_finished_rows(tmp_path):
    csv_file, out = _bad_csv_source(tmp_path / "seed"), tmp_path / "ds"
    with pytest.raises(InputError, match=r"test.csv:5: cannot read image .*missing.png"):
        import_json_dataset(out, "csv", csv_file)
    kept = read_jsonl(out / ".progress" / "test.jsonl")
    assert [r["id"] for r in kept] == ["test_000000", "test_000001", "test_000002"]
    # Fixing the data and rerunning resumes from the bad row.
    lines = csv_file.read_text().splitlines()
    csv_file.write_text("\n".join(lines[:4]) + "\n")
    assert import_json_dataset(out, "csv", csv_file) == {"test": (3, 0)}


def test_skip_bad_lists_every_bad_row_with_its_reason(tmp_path):
    csv_file, out = _bad_csv_source(tmp_path / "seed"), tmp_path / "ds"
    assert import_json_dataset(out, "csv", csv_file, skip_bad=True) == {"test": (3, 6)}
    assert _fens(out, "test") == EXPECTED_FENS
    skipped = read_jsonl(out / "skipped.jsonl")
    assert len(skipped) == len(BAD_ROW_PROBLEMS)
    for entry, (line, problem) in zip(skipped, BAD_ROW_PROBLEMS, strict=True):
        assert entry["split"] == "test"
        assert entry["where"] == f"{csv_file}:{line}"
        assert problem in entry["skipped"]
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "test_000000.png",
        "test_000001.png",
        "test_000002.png",
    ]


def test_unknown_columns_stop_the_import(tmp_path):
    (tmp_path / "test.csv").write_text("image,fen\n")
    with pytest.raises(InputError, match=r"test.csv:1: missing column.*unknown column\(s\) image"):
        import_json_dataset(tmp_path / "ds", "csv", tmp_path / "test.csv")


# --------------------------------------------------------------------------- VLM dataset


@pytest.mark.parametrize("target", ["compact", "seed"])
def test_vlm_dataset_teaches_the_labelled_board_with_the_target_prompt(synth_dir, tmp_path, target):
    results = create_vlm_dataset(synth_dir, tmp_path, target=target)
    assert results == {split: (count, 0) for split, count in COUNTS.items()}
    for split in COUNTS:
        records = read_vlm_dataset(tmp_path / f"{split}.json")
        labels = read_json_dataset(synth_dir / f"{split}.jsonl")
        for record, (label, board) in zip(records, labels, strict=True):
            assert record["id"] == label["id"] and record["image"] == label["image_path"]
            assert record["conversations"][0] == {
                "from": "user",
                "value": "<image>\n" + PROMPTS[target],
            }
            assert user_prompt(record) == PROMPTS[target]
            parsed = parse_answer(assistant_answer(record), target)
            assert parsed.board.board_fen() == board.board_fen()
            if target == "seed":
                assert parsed.board.fen().split()[1:4] == board.fen().split()[1:4]
            assert (record["fen"], record["flipped"], record["style"], record["target"]) == (
                label["fen"],
                label["flipped"],
                label["style"],
                target,
            )
    assert not (tmp_path / "skipped.jsonl").exists()


def test_vlm_image_paths_are_relative_to_the_base_dir(synth_dir, tmp_path):
    create_vlm_dataset(synth_dir, tmp_path, base_dir=synth_dir.parent, max_samples=2)
    records = read_vlm_dataset(tmp_path / "train.json")
    assert [r["image"] for r in records] == [
        f"{synth_dir.name}/images/train_00000{i}.png" for i in range(2)
    ]
    assert all((synth_dir.parent / r["image"]).is_file() for r in records)


def test_vlm_dataset_can_ask_its_own_prompt(synth_dir, tmp_path):
    main(["create-vlm-dataset", "--data_dir", str(synth_dir), "--output_dir", str(tmp_path),
          "--max_samples", "2", "--prompt", SHORT_PROMPT])  # fmt: skip
    records = read_vlm_dataset(tmp_path / "train.json")
    assert [user_prompt(record) for record in records] == [SHORT_PROMPT] * 2
    assert json.loads(assistant_answer(records[0]))["board"]  # the answer stays compact


def test_compact_prompt_states_the_answer_format():
    prompt = PROMPTS["compact"]
    for phrase in ("rank 8 down to rank 1", "white's side", "black's side", "'.'", '"board"'):
        assert phrase in prompt


def test_seed_style_json_dataset_is_read(tmp_path, monkeypatch):
    """The seed's own JSON dataset: placement-only fen, metadata fields, cwd-relative images."""
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    (tmp_path / "data" / "imgs" / "train_000000.png").write_bytes(image_bytes())
    record = {
        "image_path": "data\\imgs\\train_000000.png",
        "fen": "4k3/8/8/8/3pP3/8/8/4K3",
        "json_repr": {},
        "active_color": "b",
        "castling_rights": "",
        "en_passant_target_square": "e3",
    }
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "train.jsonl").write_text(json.dumps(record) + "\n")
    monkeypatch.chdir(tmp_path)
    create_vlm_dataset("json", "vlm", base_dir=".")
    (entry,) = read_vlm_dataset(tmp_path / "vlm" / "train.json")
    assert entry["id"] == "train_000000" and entry["image"] == "data/imgs/train_000000.png"
    assert entry["fen"] == "4k3/8/8/8/3pP3/8/8/4K3 b - e3 0 1"
    assert entry["flipped"] is False and entry["style"] is None


def _bad_json_lines(root: Path) -> list[str]:
    """Images under `root`, and a good JSON dataset line followed by one of each bad kind."""
    (root / "images").mkdir(parents=True)
    for name, data in [
        ("good.png", image_bytes()),
        ("cut.jpg", image_bytes("JPEG")[:-200]),
        ("text.png", b"hello"),
    ]:
        (root / "images" / name).write_bytes(data)
    good = {"id": "a", "image_path": "images/good.png", "fen": chess.Board().fen()}
    return [
        json.dumps(good),
        "",
        '{"id": "b", "image_path": ',
        json.dumps([1, 2]),
        json.dumps({"id": "c", "fen": chess.Board().fen()}),
        json.dumps({**good, "id": "d", "fen": "8/8/8/8/8/8/8/8 w - - 0 1"}),
        json.dumps({**good, "id": "e", "image_path": "images/none.png"}),
        json.dumps({**good, "id": "f", "image_path": "images/cut.jpg"}),
        json.dumps({**good, "id": "g", "image_path": "images/text.png"}),
        json.dumps(good),
        json.dumps({**good, "id": "h"}),
    ]


VLM_BAD_LINES = [
    (2, "empty line"),
    (3, "not valid JSON"),
    (4, "expected a JSON object"),
    (5, "missing or non-text key(s): image_path"),
    (6, "white has 0 kings"),
    (7, "cannot read image"),
    (8, "corrupt or truncated image"),
    (9, "not an image file"),
    (10, "duplicate id 'a'"),
]


@pytest.mark.parametrize(("line", "problem"), VLM_BAD_LINES)
def test_bad_json_dataset_line_stops_with_file_and_line(tmp_path, line, problem):
    lines = _bad_json_lines(tmp_path / "ds")
    path = tmp_path / "ds" / "test.jsonl"
    path.write_text(f"{lines[0]}\n{lines[line - 1]}\n")
    with pytest.raises(InputError) as error:
        create_vlm_dataset(tmp_path / "ds", tmp_path / "vlm")
    assert str(error.value).startswith(f"{path}:2: ")
    assert problem in str(error.value)
    assert not (tmp_path / "vlm" / "test.json").exists()


def test_skip_bad_json_lines_keeps_the_good_ones_and_lists_the_rest(tmp_path):
    path = tmp_path / "ds" / "test.jsonl"
    path.write_text("\n".join(_bad_json_lines(tmp_path / "ds")) + "\n")
    results = create_vlm_dataset(tmp_path / "ds", tmp_path / "vlm", skip_bad=True)
    assert results == {"test": (2, len(VLM_BAD_LINES))}
    assert [r["id"] for r in read_vlm_dataset(tmp_path / "vlm" / "test.json")] == ["a", "h"]
    skipped = read_jsonl(tmp_path / "vlm" / "skipped.jsonl")
    for entry, (line, problem) in zip(skipped, VLM_BAD_LINES, strict=True):
        assert entry["where"] == f"{path}:{line}" and problem in entry["skipped"]


def _boxed_json_dataset(root: Path, box: object) -> Path:
    """A JSON dataset of one 16x16 image whose record gives `box` as its `board_box`."""
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(image_bytes())
    record = {"id": "a", "image_path": "images/a.png", "fen": chess.Board().fen()}
    path = root / "test.jsonl"
    path.write_text(json.dumps({**record, "board_box": box}) + "\n")
    return path


def test_vlm_record_keeps_the_board_box(tmp_path):
    _boxed_json_dataset(tmp_path / "ds", [2, 1.5, 14, 13.5])
    create_vlm_dataset(tmp_path / "ds", tmp_path / "vlm")
    (entry,) = read_vlm_dataset(tmp_path / "vlm" / "test.json")
    assert entry["board_box"] == [2, 1.5, 14, 13.5]
    assert [turn["from"] for turn in entry["conversations"]] == ["user", "assistant"]
    # Without a box the record is as before: the board fills the image.
    (tmp_path / "ds" / "test.jsonl").write_text(
        json.dumps({"id": "a", "image_path": "images/a.png", "fen": chess.Board().fen()}) + "\n"
    )
    create_vlm_dataset(tmp_path / "ds", tmp_path / "vlm")
    assert "board_box" not in read_vlm_dataset(tmp_path / "vlm" / "test.json")[0]


@pytest.mark.parametrize(
    ("box", "problem"),
    [
        ([1, 2, 3], "'board_box' must be [left, top, right, bottom]"),
        ([5, 0, 2, 10], "0 <= left < right"),
        ([0, 0, "16", 16], "got [0, 0, '16', 16]"),
        ([-1, 0, 16, 16], "0 <= left < right"),
        ([0, 0, 17, 16], "reaches outside the 16x16 image"),
    ],
)
def test_bad_board_box_stops_with_file_and_line(tmp_path, box, problem):
    path = _boxed_json_dataset(tmp_path / "ds", box)
    with pytest.raises(InputError) as error:
        create_vlm_dataset(tmp_path / "ds", tmp_path / "vlm")
    assert str(error.value).startswith(f"{path}:1: ") and problem in str(error.value)


def test_read_vlm_dataset_names_the_line_of_a_bad_board_box(tmp_path):
    path = tmp_path / "test.json"
    records = [_vlm_record(), _vlm_record(id="y", board_box=[0, 0, 10, True])]
    path.write_text(json.dumps(records, indent=2))
    line = path.read_text().splitlines().index("  {", 2) + 1  # where the second record starts
    with pytest.raises(InputError, match=rf"test\.json:{line} record 1 \(id 'y'\): 'board_box'"):
        read_vlm_dataset(path)
    path.write_text(json.dumps([_vlm_record(board_box=[0, 0.5, 10, 9.5])]))
    assert read_vlm_dataset(path)[0]["board_box"] == [0, 0.5, 10, 9.5]


def test_missing_json_dataset_is_named(tmp_path):
    with pytest.raises(InputError, match=r"no train\.jsonl, val\.jsonl or test\.jsonl"):
        create_vlm_dataset(tmp_path, tmp_path / "vlm")


def _vlm_record(**changes) -> dict:
    record = {
        "id": "x",
        "image": "images/x.png",
        "conversations": [
            {"from": "user", "value": "<image>\nprompt"},
            {"from": "assistant", "value": "answer"},
        ],
        "fen": chess.Board().fen(),
        "target": "compact",
    }
    return {**record, **changes}


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        ({"a": 1}, "expected a JSON list"),
        ([_vlm_record(), "text"], r"record 1: not a JSON object"),
        ([_vlm_record(image="")], r"record 0 \(id 'x'\): 'image' is empty"),
        ([_vlm_record(id=1)], r"record 0 \(id 1\): 'id' must be a string, got 1"),
        ([{k: v for k, v in _vlm_record().items() if k != "image"}], r"missing 'image'"),
        ([_vlm_record(), _vlm_record()], r"record 1 \(id 'x'\): duplicate id"),
        ([_vlm_record(conversations=[])], "'conversations' must be a list"),
        (
            [
                _vlm_record(
                    conversations=[
                        {"from": "user", "value": "no image"},
                        {"from": "assistant", "value": ""},
                    ]
                )
            ],
            "first turn must be from 'user' and hold <image>",
        ),
        (
            [
                _vlm_record(
                    conversations=[
                        {"from": "user", "value": "<image>"},
                        {"from": "user", "value": ""},
                    ]
                )
            ],
            "last turn must be from 'assistant'",
        ),
        ([_vlm_record(target="fen")], "unknown target 'fen'"),
        ([_vlm_record(fen="8/8/8/8/8/8/8/8 w - - 0 1")], "white has 0 kings"),
        ([_vlm_record(board_box=[0, 0, 10])], r"'board_box' must be \[left, top, right, bottom\]"),
        ([_vlm_record(board_box=[0, 0, float("nan"), 9])], "'board_box' must be"),
    ],
)
def test_read_vlm_dataset_names_the_bad_record(tmp_path, records, problem):
    path = tmp_path / "test.json"
    path.write_text(json.dumps(records))
    with pytest.raises(InputError, match=problem):
        read_vlm_dataset(path)


def test_read_vlm_dataset_reports_the_json_error_line(tmp_path):
    path = tmp_path / "test.json"
    path.write_text('[\n  {"id": "x",\n  "image": }\n]')
    with pytest.raises(InputError, match=r"test.json:3: not valid JSON"):
        read_vlm_dataset(path)
