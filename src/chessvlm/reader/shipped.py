"""Files of the small networks shipped beside the reader (the position prior, the margin
reader, the square context): a safetensors file of weights and a JSON config, each written
atomically, read back with an error that names the file and says how to make it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from chessvlm.errors import ChessVLMError, InputError
from chessvlm.io import atomic_write_bytes, atomic_write_json

Network = TypeVar("Network", bound=nn.Module)


def save_network(
    network: nn.Module, out: str | Path, files: tuple[str, str], config: dict[str, Any]
) -> Path:
    """Write `network`'s weights and `config` into `out` as `files` (weights, config)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous() for name, t in network.state_dict().items()}
    atomic_write_bytes(out / files[0], save_safetensors(tensors))
    atomic_write_json(out / files[1], config)
    return out


def network_config(path: str | Path, files: tuple[str, str], what: str) -> dict[str, Any]:
    """The config of the `what` saved in `path`; a `ChessVLMError` naming the folder when
    either file is missing, an `InputError` naming the config when it is not JSON."""
    path = Path(path)
    weights_file, config_file = (path / name for name in files)
    if not config_file.is_file() or not weights_file.is_file():
        raise ChessVLMError(
            f"{path}: no {what} ({files[1]} and {files[0]}); "
            "make it with `chessvlm reader build-default`"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(str(config_file), f"not a {what} config ({error})") from None
    if not isinstance(config, dict):
        raise InputError(str(config_file), f"not a {what} config (not a JSON object)")
    return config


def load_weights(network: Network, path: str | Path, files: tuple[str, str]) -> Network:
    """`network` with the weights saved in `path`, in eval mode; an `InputError` naming the
    weights file when they do not fit."""
    weights_file = Path(path) / files[0]
    try:
        network.load_state_dict(load_safetensors(weights_file.read_bytes()))
    except (RuntimeError, OSError):
        raise InputError(str(weights_file), f"weights do not fit {files[1]}") from None
    return network.eval()


def load_network(
    path: str | Path, files: tuple[str, str], what: str, build: Callable[[dict[str, Any]], Network]
) -> Network:
    """The `what` saved in `path`: `build(config)` makes the network its config describes,
    then it gets its weights (eval mode). Errors name the folder, the config `build` cannot
    read, or the weights that do not fit."""
    config = network_config(path, files, what)
    try:
        network = build(config)
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(str(Path(path) / files[1]), f"not a {what} config ({error})") from None
    return load_weights(network, path, files)
