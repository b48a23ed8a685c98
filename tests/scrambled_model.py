"""A tiny preset model with large random weights, shared by the generation and evaluation tests.

The tiny model as initialised (std 0.02) answers the same token forever whatever the image,
which could not show a batch differing from single runs or a resumed run differing from a
whole one. With weight matrices redrawn large, every image gets its own chaotic answer, so
any padding leak or lost sample changes tokens.
"""

from pathlib import Path

import torch


def scramble(model, seed: int = 0, std: float = 0.5):
    """Redraw every weight matrix of `model` from N(0, std) (norms and biases are kept)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def scrambled_tiny_model(folder: Path) -> Path:
    """Build the tiny preset in `folder` and overwrite its weights with scrambled ones."""
    from chessvlm.modeling import init_model, load_model

    init_model("tiny", folder)
    scramble(load_model(str(folder), torch.float32)).save_pretrained(folder)
    return folder
