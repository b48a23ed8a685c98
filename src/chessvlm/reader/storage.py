"""How a reader checkpoint's weights are stored: as trained (float32), in half precision, or
with the convolution and linear weights as 8-bit integers.

The shipped default must stay small (docs/reader.md); 8-bit weights, one scale for each
output channel, take half the room of half precision. Loading turns every stored form back
into float32 (`expanded`), so the rest of the code sees one kind of checkpoint.
"""

from __future__ import annotations

import torch

STORAGES = ("float32", "float16", "int8")
# The per-output-channel scale of an 8-bit weight is stored beside it under this suffix.
SCALE_SUFFIX = ":int8_scale"
_INT8_LIMIT = 127


def stored(tensors: dict[str, torch.Tensor], storage: str) -> dict[str, torch.Tensor]:
    """`tensors` (float32 weights by name) in the form `storage` keeps them: `float16` turns
    floating-point tensors into half precision; `int8` also stores each convolution or
    linear weight (a `...weight` of two or more dimensions, attention's `in_proj_weight`
    among them) as int8 with a float32 scale for each output channel, under the weight's
    name + `SCALE_SUFFIX`."""
    if storage not in STORAGES:
        raise ValueError(f"unknown weight storage {storage!r}; choose from {', '.join(STORAGES)}")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach()
        if storage == "int8" and _is_layer_weight(name, tensor):
            out[name], out[name + SCALE_SUFFIX] = _to_int8(tensor.float())
        elif storage != "float32" and tensor.is_floating_point():
            out[name] = tensor.to(torch.float16)
        else:
            out[name] = tensor
        out[name] = out[name].contiguous()
    return out


def expanded(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored tensors (`stored`) back as float32 weights by name; integer tensors without a
    scale (counters such as a batch norm's) stay as they are."""
    out = {}
    for name, tensor in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is not None:
            out[name] = tensor.float() * scale.view(-1, *[1] * (tensor.dim() - 1))
        elif tensor.is_floating_point():
            out[name] = tensor.float()
        else:
            out[name] = tensor
    return out


def _is_layer_weight(name: str, tensor: torch.Tensor) -> bool:
    return name.endswith("weight") and tensor.is_floating_point() and tensor.dim() >= 2


def _to_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric rounding to int8 with one scale per output channel (the first dimension)."""
    largest = weight.abs().flatten(1).amax(dim=1)
    scale = torch.where(largest > 0, largest / _INT8_LIMIT, torch.ones_like(largest))
    shaped = scale.view(-1, *[1] * (weight.dim() - 1))
    quantised = torch.round(weight / shaped).clamp(-_INT8_LIMIT, _INT8_LIMIT)
    return quantised.to(torch.int8), scale
