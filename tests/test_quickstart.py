"""Smoke run of the whole quickstart pipeline: tiny model, tiny data, seconds of training."""

from __future__ import annotations

import json

from chessvlm.cli import main


def test_quickstart_connects_every_stage_and_resumes(tmp_path, capsys):
    out = tmp_path / "quick"
    argv = [
        "quickstart",
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--train",
        "12",
        "--val",
        "2",
        "--test",
        "3",
        "--minutes",
        "0.02",
        "--reader-minutes",
        "0.02",
        "--workers",
        "1",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed
    for name in ("small VLM", "board reader"):
        assert f"{name}, in distribution:" in printed and f"{name}, unseen designs:" in printed

    for run in ("vlm", "reader", "vlm_unseen", "reader_unseen"):
        metrics = json.loads((out / "runs" / run / "metrics.json").read_text())
        assert metrics["n_samples"] == 3
        lines = (out / "runs" / run / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 3
    report = (out / "report" / "report.md").read_text()
    assert "tiny VLM" in report and "board reader" in report and "43.55%" in report
    assert "unseen designs (designs-held-out)" in report
    assert "| Training recipe | all weights of the tiny preset, from scratch; batch" in report
    # What each model trained on and for how long, both filled in.
    for row in ("Training samples", "Steps", "Epochs", "Training time"):
        (line,) = [line for line in report.splitlines() if line.startswith(f"| {row} |")]
        assert "—" not in line, line
    assert (out / "report" / "report.html").is_file()
    assert list((out / "report" / "plots").glob("*.png"))

    stages = sorted(p.stem for p in (out / "stages").glob("*.json"))
    assert len(stages) == 9
    # A rerun finds every stage done and redoes nothing.
    before = (out / "runs" / "vlm" / "predictions.jsonl").stat().st_mtime_ns
    assert main(argv) == 0
    assert capsys.readouterr().out.count("done before, skipped") == 9
    assert (out / "runs" / "vlm" / "predictions.jsonl").stat().st_mtime_ns == before
