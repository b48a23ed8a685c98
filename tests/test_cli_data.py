"""The data commands end to end: `chessvlm data synth|import|vlm` and `create-vlm-dataset`."""

from __future__ import annotations

import json
import subprocess
import sys

from seed_layouts import write_csv_layout

from chessvlm.cli import main
from chessvlm.datasets import read_vlm_dataset
from chessvlm.io import read_jsonl


def test_synth_then_create_vlm_dataset_with_the_seed_flag_names(tmp_path, capsys):
    data = tmp_path / "json"
    synth = ["data", "synth", "--out", str(data), "--train", "4", "--val", "2", "--test", "2"]
    assert main([*synth, "--seed", "1", "--style", "simple", "--workers", "1"]) == 0
    assert f"synthetic dataset in {data}: train 4, val 2, test 2" in capsys.readouterr().out
    out = tmp_path / "vlm"
    step1 = ["create-vlm-dataset", "--data_dir", str(data), "--output_dir", str(out)]
    assert main([*step1, "--base_dir", str(tmp_path), "--max_samples", "3"]) == 0
    assert "train 3, val 2, test 2" in capsys.readouterr().out
    records = read_vlm_dataset(out / "train.json")
    assert [r["image"] for r in records] == [f"json/images/train_00000{i}.png" for i in range(3)]
    assert {r["target"] for r in records} == {"compact"}


def test_data_vlm_alias_defaults_and_seed_target(tmp_path, capsys):
    data = tmp_path / "json"
    synth = ["data", "synth", "--out", str(data), "--train", "2", "--val", "0", "--test", "1"]
    assert main([*synth, "--style", "simple", "--workers", "1"]) == 0
    assert main(["data", "vlm", "--data-dir", str(data), "--target", "seed"]) == 0
    records = read_vlm_dataset(data / "vlm" / "test.json")
    assert records[0]["image"] == "images/test_000000.png" and records[0]["target"] == "seed"
    assert json.loads(records[0]["conversations"][1]["value"])["metadata"]["to_move"]


def test_import_command_and_skip_bad(tmp_path, capsys):
    source, out = tmp_path / "seed", tmp_path / "ds"
    write_csv_layout(source)
    (source / "test" / "images" / "test_000001.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    command = ["data", "import", "--format", "csv", "--source", str(source), "--out", str(out)]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert f"\nchessvlm: error: {source / 'test.csv'}:3: not an image file\n" in error
    assert "Traceback" not in error
    assert main([*command, "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "train 3, val 3, test 2" in printed
    assert f"skipped 1 bad sample(s), listed in {out / 'skipped.jsonl'}" in printed
    (skipped,) = read_jsonl(out / "skipped.jsonl")
    assert skipped["where"] == f"{source / 'test.csv'}:3"


def test_changed_settings_are_refused_without_traceback(tmp_path, capsys):
    synth = ["data", "synth", "--out", str(tmp_path), "--train", "1", "--val", "0", "--test", "0"]
    assert main([*synth, "--style", "simple", "--workers", "1"]) == 0
    assert main([*synth, "--style", "seed", "--workers", "1"]) == 2
    assert "other settings (styles differ)" in capsys.readouterr().err


def test_data_commands_start_without_heavy_imports():
    code = (
        "import sys, chessvlm.cli.data as d, argparse;"
        "d.register(argparse.ArgumentParser().add_subparsers());"
        "heavy = [m for m in ('PIL', 'torch', 'pyarrow', 'chessvlm.datasets') if m in sys.modules];"
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
