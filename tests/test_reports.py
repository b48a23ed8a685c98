"""The report renders from tiny synthetic runs: tables, plots, gallery, and the CLI around it."""

import json
from pathlib import Path

import cairosvg
import chess
import chess.svg
import pytest
from PIL import Image

from chessvlm.cli import main
from chessvlm.datasets import vlm_record
from chessvlm.errors import ChessVLMError
from chessvlm.io import atomic_write_json, atomic_write_jsonl
from chessvlm.metrics import compute_metrics
from chessvlm.pieces import PIECE_SETS
from chessvlm.positions import answer_text, compact_rows
from chessvlm.rendering import held_out_designs
from chessvlm.reports import Run, load_run, percent, write_report
from chessvlm.run_info import write_run_info

FENS = [
    chess.STARTING_FEN,
    "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
    "4k3/8/8/8/8/8/8/4K3 w - - 0 1",
    "8/5pk1/6p1/8/3Q4/8/5PPP/6K1 b - - 0 1",
]


def _wrong_answer(board: chess.Board, edits: dict[str, str]) -> str:
    edited = board.copy()
    for square, symbol in edits.items():
        piece = None if symbol == "." else chess.Piece.from_symbol(symbol)
        edited.set_piece_at(chess.parse_square(square), piece)
    return json.dumps({"board": compact_rows(edited)})


def make_dataset(root: Path, styles: tuple[str, str] = ("plain", "wood")) -> Path:
    """A 4-board JSON dataset with small images; the last image is missing on purpose. The
    first two boards have the first style, the others the second."""
    records = []
    for index, fen in enumerate(FENS):
        board = chess.Board(fen)
        flipped = index % 2 == 1
        image_path = f"images/test_{index}.png"
        if index < len(FENS) - 1:
            orientation = chess.BLACK if flipped else chess.WHITE
            svg = chess.svg.board(board, size=96, orientation=orientation, coordinates=False)
            (root / "images").mkdir(parents=True, exist_ok=True)
            cairosvg.svg2png(bytestring=svg.encode(), write_to=str(root / image_path))
        records.append(
            {
                "id": f"test_{index}",
                "image_path": image_path,
                "fen": fen,
                "flipped": flipped,
                "style": styles[0] if index < 2 else styles[1],
            }
        )
    atomic_write_jsonl(root / "test.jsonl", records)
    return root / "test.jsonl"


def make_run(run_dir: Path, labels_path: Path) -> None:
    """A run folder: one exact answer, two wrong boards, one truncated answer."""
    boards = [chess.Board(fen) for fen in FENS]
    answers = [
        answer_text(boards[0], "compact"),
        _wrong_answer(boards[1], {"c6": "N", "e5": ".", "a1": "r"}),
        '{"board": ["4k3", ',
        _wrong_answer(boards[3], {"d4": "q"}),
    ]
    predictions = [
        {"id": f"test_{i}", "answer": answer, "answer_tokens": 78, "seconds": 0.5}
        for i, answer in enumerate(answers)
    ]
    atomic_write_jsonl(run_dir / "predictions.jsonl", predictions)
    labels = [json.loads(line) for line in labels_path.read_text().splitlines()]
    atomic_write_json(run_dir / "metrics.json", compute_metrics(labels, predictions, "compact"))
    write_run_info(run_dir, name="tiny-lora", model="Qwen/Qwen2-VL-2B-Instruct", steps=12)
    write_run_info(run_dir, test_data=labels_path, train_seconds=3725.0, eval_seconds=2.0)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    labels_path = make_dataset(tmp_path / "data")
    run = tmp_path / "run"
    make_run(run, labels_path)
    return run


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Path]:
    """One run's report, written once for the tests that read it."""
    root = tmp_path_factory.mktemp("tiny")
    make_run(root / "run", make_dataset(root / "data"))
    run = load_run(root / "run")
    write_report([run], root / "report", worst=5)
    return run, root / "report"


def test_run_info_is_merged_and_paths_absolute(run_dir: Path):
    info = json.loads((run_dir / "run.json").read_text())
    assert info["name"] == "tiny-lora" and info["steps"] == 12 and info["eval_seconds"] == 2.0
    assert Path(info["test_data"]).is_absolute()
    with pytest.raises(ChessVLMError, match=r"unknown run\.json keys"):
        write_run_info(run_dir, learning_rate=1e-4)


def test_load_run_reads_the_run_folder(run_dir: Path):
    run = load_run(run_dir)
    assert run.name == "tiny-lora"
    assert load_run(run_dir / "metrics.json") == run
    assert run.predictions == run_dir / "predictions.jsonl"
    assert run.test_data == run_dir.parent / "data/test.jsonl"


def test_report_renders_tables_plots_and_gallery(tiny_report: tuple[Run, Path]):
    run, out = tiny_report
    markdown = (out / "report.md").read_text()
    metrics = run.metrics
    for expected in (
        "| Per-square accuracy (all answers) | " + percent(metrics["per_square_accuracy"]),
        "79.32%",  # the seed's CLIP reference
        "43.55%",  # the seed's Qwen2-VL reference
        "| Training time | 1h 02m 05s |",
        "| Model | Qwen/Qwen2-VL-2B-Instruct |",
        "| invalid_json | 1 |",
        "1 of 4 test images are missing",
        "image missing: ",  # test_3 is wrong and has no image
        "c6: n read as N",
        "| Answer tokens: mean / median / max (answers cut at the limit) | 78.0 / 78 / 78 (0) |",
        "## By piece set (image style)",
        "| black_bottom |",
    ):
        assert expected in markdown, expected
    # Worst first: test_1 has 3 wrong squares, test_3 one; exact and unparsed answers are not drawn.
    assert markdown.index("sample test_1") < markdown.index("sample test_3")
    assert "sample test_0" not in markdown and "sample test_2<" not in markdown
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html and "79.32%" in html
    images = sorted(path.relative_to(out).as_posix() for path in out.rglob("*.png"))
    assert images == [
        "gallery/tiny-lora_00_board.png",
        "gallery/tiny-lora_00_image.png",
        "gallery/tiny-lora_01_board.png",
        "plots/class_accuracy.png",
        "plots/tiny-lora_confusion.png",
        "plots/tiny-lora_squares.png",
    ]
    for image in images:
        assert f"({image})" in markdown and f'src="{image}"' in html
        with Image.open(out / image) as picture:
            assert picture.width > 50 and picture.height > 50


def test_gallery_marks_wrong_squares_in_red(tiny_report: tuple[Run, Path]):
    _, out = tiny_report
    with Image.open(out / "gallery/tiny-lora_00_board.png") as picture:
        board = picture.convert("RGB")
    # chess.svg draws 45-unit squares inside a 15-unit coordinate margin (390 units in all).
    scale = board.width / 390

    def is_red(column: int, row: int) -> bool:
        x, y = (15 + 45 * column + 5) * scale, (15 + 45 * row + 5) * scale
        red, green, blue = board.getpixel((int(x), int(y)))
        return red > 150 and green < 120 and blue < 120

    # test_1 is shown black at the bottom, so a1 is the top-right square and h8 bottom left.
    wrong = {"a1", "e5", "c6"}
    for square in chess.SQUARES:
        column, row = 7 - chess.square_file(square), chess.square_rank(square)
        assert is_red(column, row) == (chess.square_name(square) in wrong), square


def test_report_compares_runs_and_handles_bare_metrics(run_dir: Path, tmp_path: Path):
    bare = tmp_path / "reader_metrics.json"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    atomic_write_json(bare, {**metrics, "per_square_accuracy": 0.5})
    out = tmp_path / "report"
    markdown = write_report([load_run(run_dir), load_run(bare), load_run(run_dir)], out).read_text()
    assert "| Metric | tiny-lora | reader_metrics | tiny-lora (2) |" in markdown
    assert "| Per-square accuracy (all answers) | " in markdown and "| 50.00% |" in markdown
    assert "No gallery: the run names no predictions file" in markdown
    with Image.open(out / "plots/class_accuracy.png") as picture:
        assert picture.width > 100


def test_load_run_errors(tmp_path: Path):
    with pytest.raises(ChessVLMError, match="no metrics file"):
        load_run(tmp_path)
    (tmp_path / "metrics.json").write_text('{"n_samples": 3}')
    with pytest.raises(ChessVLMError, match="not a chessvlm metrics file"):
        load_run(tmp_path)
    with pytest.raises(ChessVLMError, match="no runs"):
        write_report([], tmp_path / "out")


def test_cli_metrics_then_report_with_vlm_labels(run_dir: Path, tmp_path: Path, capsys):
    # VLM dataset labels live elsewhere; their image paths are relative to --image_base_dir.
    records = [json.loads(line) for line in (tmp_path / "data/test.jsonl").read_text().splitlines()]
    vlm = [
        vlm_record(r, chess.Board(r["fen"]), r["image_path"], "compact", r["id"]) for r in records
    ]
    labels = tmp_path / "vlm/test.json"
    atomic_write_json(labels, vlm)
    output = tmp_path / "scored/metrics.json"
    args = ["metrics", "--labels", str(labels), "--output", str(output)]
    args += ["--predictions", str(run_dir / "predictions.jsonl"), "--elapsed_seconds", "2"]
    assert main([*args, "--image_base_dir", str(tmp_path / "data")]) == 0
    written = json.loads(output.read_text())
    assert written["boards_per_second"] == 2.0 and written["target"] == "compact"
    assert written["sources"]["test_data"] == str(labels.resolve())
    assert "4 samples, valid JSON 75.00%" in capsys.readouterr().out
    assert main(["report", str(output), "--out", str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report/report.md").read_text()
    assert "c6: n read as N" in markdown  # the gallery found the labels via "sources"
    assert "![test image test_1](gallery/scored_00_image.png)" in markdown
    # Without the image folder the gallery still renders and counts the missing images.
    assert main(["metrics", *args[1:]]) == 0
    assert main(["report", str(output), "--out", str(tmp_path / "report2")]) == 0
    markdown = (tmp_path / "report2/report.md").read_text()
    assert "4 of 4 test images are missing" in markdown


def test_cli_metrics_reports_mismatched_ids(run_dir: Path, tmp_path: Path, capsys):
    predictions = tmp_path / "few.jsonl"
    predictions.write_text('{"id": "test_0", "answer": "no idea"}\n')
    args = ["metrics", "--labels", str(tmp_path / "data/test.jsonl")]
    args += ["--predictions", str(predictions), "--output", str(tmp_path / "m.json")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "3 labels have no prediction (test_1, test_2, test_3)" in error
    assert "Traceback" not in error
    assert main([*args, "--partial"]) == 0
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["error_counts"] == {"missing_prediction": 3, "no_json": 1}


def test_boards_of_unseen_designs_get_their_own_section(tmp_path: Path):
    held, seen = (
        next(name for name, s in PIECE_SETS.items() if (s.design in held_out_designs()) == want)
        for want in (True, False)
    )
    labels = make_dataset(tmp_path / "data", styles=(f"{held}/brown/224", f"{seen}/blue/256"))
    make_run(tmp_path / "run", labels)
    run = load_run(tmp_path / "run")
    by_design = run.metrics["by_design"]
    assert by_design[PIECE_SETS[held].design]["held_out"] is True
    assert by_design[PIECE_SETS[seen].design]["held_out"] is False
    markdown = write_report([run], tmp_path / "report").read_text()
    section = markdown.split("## Unseen designs", 1)[1].split("\n## ", 1)[0]
    assert f"| {PIECE_SETS[held].design} |" in section
    assert f"| {PIECE_SETS[seen].design} |" not in section
    # Its gallery shows the one wrong board of the unseen design (test_1), not test_3.
    assert "sample test_1" in section and "sample test_3" not in section
    assert list((tmp_path / "report" / "gallery").glob("*_unseen_00_board.png"))
