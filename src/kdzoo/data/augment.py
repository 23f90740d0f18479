"""Batched augmentation and normalisation with tensor ops, on whatever device the data is on.

One gather does the reference zoo's ``Pad(4, reflect) -> RandomCrop(32) -> RandomHorizontalFlip``
for a whole uint8 batch: the crop window and the mirror are turned into row and column indices
into the *unpadded* image, reflected at the borders, so no padded copy is ever stored and no
Python runs per image. ``padding_mode="constant"`` is RepDistiller's and mdistiller's
``RandomCrop(32, padding=4)`` instead: the pixels outside the image are 0 (black, before
normalisation), as torchvision's zero fill.
"""
from __future__ import annotations

import torch
from torch import Tensor


def reflect(index: Tensor, size: int) -> Tensor:
    """Map indices in [-size+1, 2*size-2] into [0, size-1] as reflect padding does
    (the edge pixel is not repeated: -1 -> 1, size -> size-2)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor | None, pad: int,
              padding_mode: str = "reflect") -> Tensor:
    """Pad ``images`` (B, C, H, W) by ``pad`` (``padding_mode`` "reflect", or "constant": zeros),
    crop H x W windows whose top-left corners in the padded image are ``offsets`` (B, 2) =
    (row, col) in [0, 2*pad], and mirror the rows where ``flips`` (B,) is True. Works on any
    dtype; returns a new tensor."""
    batch, channels, height, width = images.shape
    device = images.device
    rows = offsets[:, :1].to(device) - pad + torch.arange(height, device=device)
    cols = offsets[:, 1:].to(device) - pad + torch.arange(width, device=device)
    if flips is not None:
        cols = torch.where(flips.to(device)[:, None], cols.flip(1), cols)
    b = torch.arange(batch, device=device)[:, None, None, None]
    c = torch.arange(channels, device=device)[None, :, None, None]
    if padding_mode == "reflect":
        rows, cols = reflect(rows, height), reflect(cols, width)
        return images[b, c, rows[:, None, :, None], cols[:, None, None, :]]
    inside = ((rows >= 0) & (rows < height))[:, None, :, None] & \
        ((cols >= 0) & (cols < width))[:, None, None, :]
    found = images[b, c, rows.clamp(0, height - 1)[:, None, :, None],
                   cols.clamp(0, width - 1)[:, None, None, :]]
    return found * inside.to(found.dtype)


class Normalize:
    """uint8 -> ``(x/255 - mean) / std`` in ``dtype`` (float32 by default; float64 for
    ``--precision float64``) as one multiply-add per element."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        std_t = torch.tensor(std, dtype=torch.float64)
        mean_t = torch.tensor(mean, dtype=torch.float64)
        self.dtype = dtype
        self.scale = (1.0 / (255.0 * std_t)).to(dtype).view(1, -1, 1, 1).to(device)
        self.shift = (-mean_t / std_t).to(dtype).view(1, -1, 1, 1).to(device)

    def __call__(self, images: Tensor) -> Tensor:
        return torch.addcmul(self.shift, images.to(self.dtype), self.scale)
