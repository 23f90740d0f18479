"""Reference values of RepDistiller's CIFAR models (HobbitLong/RepDistiller, ``models/``), for
checking kdzoo's re-implementations number for number.

``tests/data/repdistiller/<name>.json`` holds, for a model built with 100 classes:

* ``state_dict``: every key of RepDistiller's ``model.state_dict()`` with its shape;
* ``parameters``: its parameter count;
* ``logits_eval`` / ``logits_train``: its logits, in float64, for :func:`reference_input` after
  :func:`fill_deterministic` (eval mode, then train mode: BatchNorm on batch statistics);
* ``feats`` / ``feats_preact``: for each tensor of ``forward(x, is_feat=True, preact=False)``
  and ``preact=True`` (eval mode), its shape and its sum;
* ``bn_before_relu``: the state-dict prefixes of the modules ``get_bn_before_relu()`` returns.

The values were computed by running RepDistiller's own model code (outside this repository)
with these two functions; only the numbers are stored here.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

DATA = Path(__file__).parent / "data" / "repdistiller"
NUM_CLASSES = 100
BATCH = 4


def fill_deterministic(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite every tensor of ``model.state_dict()`` (visited in sorted key order, so two
    implementations with the same keys get the same values) with seeded values of a sane
    scale: weights ~ N(0, 1/fan_in), BatchNorm weights ~ 1 + N(0, 0.1^2), biases and running
    means ~ N(0, 0.1^2), running variances ~ U(0.5, 1.5). Converts the model to float64."""
    model.double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in sorted(model.state_dict().items()):
            if key.endswith("num_batches_tracked"):
                continue
            shape = tensor.shape
            if key.endswith("running_var"):
                value = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5
            elif tensor.dim() >= 2:
                fan_in = tensor[0].numel()
                value = torch.randn(shape, generator=gen, dtype=torch.float64) / fan_in ** 0.5
            elif key.endswith("weight"):  # BatchNorm / GroupNorm scale
                value = 1 + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
            else:
                value = 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
            tensor.copy_(value)
    return model


def reference_input(channels: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(BATCH, channels, size, size, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(1234))


def load_reference(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def reference_names() -> list[str]:
    return sorted(p.stem for p in DATA.glob("*.json"))
