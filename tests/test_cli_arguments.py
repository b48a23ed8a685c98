"""The CLI's shared arguments: one spelling per flag with the seed's as aliases, lazy
defaults, errors told in flag names, and commands that check their paths first."""

import re
import subprocess
import sys
import time

import pytest

from chessvlm.cli import build_parser, main
from chessvlm.errors import ChessVLMError
from chessvlm.modeling import check_hub_model


@pytest.mark.parametrize(
    ("seed", "current"),
    [
        (
            ["train", "--data_dir", "d", "--output_dir", "o", "--model_name", "m",
             "--num_epochs", "2"],
            ["train", "--data_dir", "d", "--out", "o", "--model", "m", "--epochs", "2"],
        ),
        (
            ["evaluate", "--model_path", "m", "--test_data", "t", "--image_base_dir", "i",
             "--output", "o"],
            ["evaluate", "--model", "m", "--test_data", "t", "--image_base_dir", "i", "--out", "o"],
        ),
        (
            ["create-vlm-dataset", "--data_dir", "d", "--output_dir", "o", "--max_samples", "3"],
            ["create-vlm-dataset", "--data_dir", "d", "--out", "o", "--max_samples", "3"],
        ),
    ],
)  # fmt: skip
def test_the_seeds_flag_names_are_aliases_of_one_spelling(seed, current):
    def options(argv):
        parsed = vars(build_parser().parse_args(argv))
        return {key: value for key, value in parsed.items() if key != "command_parser"}

    assert options(seed) == options(current)


def test_help_shows_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "rank (default: 16)" in text and "(default: 3.0)" in text


def test_unset_flags_leave_the_config_defaults(tmp_path):
    from chessvlm.cli.arguments import config_options
    from chessvlm.training import TrainConfig

    args = build_parser().parse_args(["train", "--data_dir", "d", "--out", "o", "--lora_r", "8"])
    config = TrainConfig(**config_options(args, TrainConfig))
    assert (config.lora_r, config.lora_alpha, config.num_epochs) == (8, 32, 3.0)


def test_train_names_a_missing_data_folder_in_a_second_without_loading_torch(tmp_path):
    code = (
        "import sys, time; from chessvlm.cli import main; start = time.monotonic();"
        f"code = main(['train', '--data_dir', '{tmp_path / 'nowhere'}', '--model_name', 'x']);"
        "print(code, 'torch' in sys.modules, round(time.monotonic() - start, 1))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    exit_code, torch_loaded, seconds = result.stdout.split()
    assert (exit_code, torch_loaded) == ("2", "False"), result.stderr
    assert float(seconds) < 5
    assert f"--data_dir: {tmp_path / 'nowhere'}: folder not found" in result.stderr


def test_train_asks_for_its_run_folder_once_the_data_is_there(tmp_path, capsys):
    (tmp_path / "train.json").write_text("[]")
    assert main(["train", "--data_dir", str(tmp_path), "--model_name", "x"]) == 2
    assert "--out: is required: the run folder to write" in capsys.readouterr().err


def test_evaluate_names_a_missing_test_file(tmp_path, capsys):
    argv = ["evaluate", "--model", "x", "--test_data", str(tmp_path / "test.json"),
            "--image_base_dir", str(tmp_path), "--out", str(tmp_path / "m.json")]  # fmt: skip
    assert main(argv) == 2
    assert f"--test_data: {tmp_path / 'test.json'}: file not found" in capsys.readouterr().err


def test_library_errors_name_fields_and_the_cli_names_flags(tmp_path, capsys):
    from chessvlm.predict import Metadata, check_flags

    with pytest.raises(ChessVLMError, match=r"^castling: must be a FEN castling field"):
        check_flags(Metadata(None, "X", None))
    image = tmp_path / "board.png"
    image.write_bytes(b"")
    assert main(["predict", str(image), "--castling", "X"]) == 2
    assert "chessvlm: error: --castling: must be a FEN castling field" in capsys.readouterr().err


def test_a_hub_id_that_cannot_be_had_fails_within_seconds(monkeypatch):
    from huggingface_hub import constants

    # The tests run offline (conftest); this one asks the hub as a user's run would.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(ChessVLMError, match="cannot load 'chessvlm-tests/no-such-model'"):
        check_hub_model("chessvlm-tests/no-such-model")
    assert time.monotonic() - start < 15


def test_building_every_command_imports_no_torch():
    code = (
        "import sys; from chessvlm.cli import build_parser; build_parser();"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_reader_train_names_a_missing_data_folder(tmp_path, capsys):
    argv = ["reader", "train", "--data_dir", str(tmp_path / "nowhere"), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert f"--data_dir: {tmp_path / 'nowhere'}: folder not found" in capsys.readouterr().err


def test_reader_widths_are_read_as_a_list_and_a_bad_one_is_named(capsys):
    from chessvlm.cli.arguments import config_options
    from chessvlm.reader.train import ReaderTrainConfig

    argv = ["reader", "train", "--data_dir", "d", "--out", "o", "--widths", "16,32,64,128"]
    config = ReaderTrainConfig(**config_options(build_parser().parse_args(argv), ReaderTrainConfig))
    assert config.spec().widths == (16, 32, 64, 128)
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv[:-1], "16,x"])
    assert "--widths: expected integers separated by commas, got 16,x" in capsys.readouterr().err


def test_reader_train_precision_reaches_the_config_and_a_bad_one_is_refused(capsys):
    from chessvlm.cli.arguments import config_options
    from chessvlm.reader.train import ReaderTrainConfig

    argv = ["reader", "train", "--data_dir", "d", "--out", "o"]

    def config(*extra: str) -> ReaderTrainConfig:
        args = build_parser().parse_args([*argv, *extra])
        return ReaderTrainConfig(**config_options(args, ReaderTrainConfig))

    assert config().precision == "float32"
    assert config("--precision", "auto").precision == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--precision", "half"])
    assert "--precision: invalid choice: 'half'" in capsys.readouterr().err


def test_synth_help_names_every_style(capsys):
    from chessvlm.rendering import STYLES

    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    # argparse wraps lines at hyphens too: join them back before looking for whole names.
    help_text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))
    named = set(re.findall(r"[\w-]+", help_text))
    assert [name for name in STYLES if name not in named] == []
