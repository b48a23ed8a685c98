"""Reader weights stored as trained, in half precision or as 8-bit integers, and read back as
float32."""

from __future__ import annotations

import pytest
import torch

from chessvlm.reader.storage import SCALE_SUFFIX, expanded, stored


def _weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    conv = torch.randn(8, 3, 3, 3)
    conv[3] = 0.0  # a dead channel must not divide by zero
    return {
        "stem.weight": conv,
        "stem.bias": torch.randn(8),
        "attention.in_proj_weight": torch.randn(12, 4),
        "places": torch.randn(1, 64, 4),
        "norm.num_batches_tracked": torch.tensor(7),
    }


def test_int8_keeps_layer_weights_within_half_a_step_of_their_channel():
    weights = _weights()
    kept = stored(weights, "int8")
    for name in ("stem.weight", "attention.in_proj_weight"):
        assert kept[name].dtype == torch.int8
        assert kept[name + SCALE_SUFFIX].shape == (weights[name].shape[0],)
    assert kept["stem.bias"].dtype == torch.float16
    assert kept["places"].dtype == torch.float16  # not a layer's weight: its rows differ
    back = expanded(kept)
    assert set(back) == set(weights)
    for name in ("stem.weight", "attention.in_proj_weight"):
        step = weights[name].abs().flatten(1).amax(1) / 127
        error = (back[name] - weights[name]).abs().flatten(1).amax(1)
        assert back[name].dtype == torch.float32
        assert torch.all(error <= step / 2 + 1e-7)
    assert torch.equal(back["stem.weight"][3], torch.zeros(3, 3, 3))
    assert back["norm.num_batches_tracked"].item() == 7


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_float_storages_keep_every_tensor_as_a_float(storage):
    weights = _weights()
    back = expanded(stored(weights, storage))
    for name, tensor in weights.items():
        if tensor.is_floating_point():
            assert back[name].dtype == torch.float32
            tolerance = 0 if storage == "float32" else 1e-2
            assert torch.allclose(back[name], tensor, atol=tolerance, rtol=tolerance)
    assert not any(name.endswith(SCALE_SUFFIX) for name in stored(weights, storage))


def test_an_unknown_storage_is_refused():
    with pytest.raises(ValueError, match="unknown weight storage 'int4'"):
        stored(_weights(), "int4")
