"""RandAugment for batches of uint8 images, with tensor ops on whatever device the images are on:
the RandAugment that MLKD trains its strong view with (Jin, Wang & Lin, "Multi-Level Logit
Distillation", CVPR 2023; github.com/Jin-Ying/Multi-Level-Logit-Distillation,
``mdistiller/dataset/cifar100.py`` at commit 5ee473f, unchanged since the first commit 6327e73:
``RandAugment`` (lines 292-305, with ``augment_list`` at 272-289 and ``Cutout`` at 242-269) as
``RandAugment(2, 10)`` inside ``get_cifar100_train_transform_strong``, lines 321-343; the copy
sunshangquan/logit-standardization-KD carries at f6e5aa5 is identical), what
:func:`kdzoo.data.loader.strong_view` gets.

It is FixMatch's variant, **not** torchvision's ``RandAugment``: each image draws ``num_ops``
operations uniformly *with replacement* from 14 (``random.choices``), each with a magnitude drawn
uniformly from the operation's own range (``magnitude`` is ignored: the reference stores ``m``
and marks it "deprecated"), and always ends with a Cutout of a random square of side up to half
the image, filled with (125, 123, 114):

========================  ==================  =============================================
operation                 range of v          PIL operation
========================  ==================  =============================================
AutoContrast              (0, 1), unused      ``ImageOps.autocontrast``
Brightness                [0.05, 0.95]        ``ImageEnhance.Brightness(v)``
Color                     [0.05, 0.95]        ``ImageEnhance.Color(v)``
Contrast                  [0.05, 0.95]        ``ImageEnhance.Contrast(v)``
Equalize                  (0, 1), unused      ``ImageOps.equalize``
Identity                  (0, 1), unused      --
Posterize                 [4, 8]              ``ImageOps.posterize(int(v))`` (4 to 7 bits)
Rotate                    [-30, 30]           ``img.rotate(v)`` (degrees, counter-clockwise)
Sharpness                 [0.05, 0.95]        ``ImageEnhance.Sharpness(v)``
ShearX / ShearY           [-0.3, 0.3]         affine (1, v, 0, 0, 1, 0) / (1, 0, 0, v, 1, 0)
Solarize                  [0, 256]            ``ImageOps.solarize(threshold=v)``
TranslateX / TranslateY   [-0.3, 0.3]         affine shift by v * width / v * height pixels
========================  ==================  =============================================

The operations are written as tensor kernels that reproduce Pillow's arithmetic (the float32
blends of ``ImageEnhance``, the ITU-R 601 luma of ``convert("L")``, the 16.16 fixed-point
nearest-neighbour affine transform, the 3x3 SMOOTH filter with untouched borders, Cutout's
inclusive integer rectangle), so that, given the same draws, they give Pillow's pixels (the
tests compare them with Pillow). Cutout keeps the reference's quirk ``np.random.uniform(w)``,
which draws the centre in (1, w], not in [0, w). For images with other than 3 channels every
channel is treated as an "L" image (Color is then the identity) and Cutout fills with the luma
of (125, 123, 114), 123.

Every random number comes from ``generator`` (drawn on its device), so the result depends only
on the images and the generator's state. The per-image parameters are small CPU tensors; the
pixels never leave the images' device.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CUTOUT_COLOR", "MLKD_OPS", "MLKD_RANGES", "MLKDPlan", "cutout", "mlkd_op",
           "mlkd_plan", "rand_augment"]

#: MLKD's operations, in the order of its ``augment_list``.
MLKD_OPS: tuple[str, ...] = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
    "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
#: (min, max) of each operation's value, as in MLKD's ``augment_list``.
MLKD_RANGES: dict[str, tuple[float, float]] = {
    "AutoContrast": (0.0, 1.0), "Brightness": (0.05, 0.95), "Color": (0.05, 0.95),
    "Contrast": (0.05, 0.95), "Equalize": (0.0, 1.0), "Identity": (0.0, 1.0),
    "Posterize": (4.0, 8.0), "Rotate": (-30.0, 30.0), "Sharpness": (0.05, 0.95),
    "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "Solarize": (0.0, 256.0),
    "TranslateX": (-0.3, 0.3), "TranslateY": (-0.3, 0.3)}
#: Cutout's fill colour (RGB) in MLKD's ``CutoutAbs``.
CUTOUT_COLOR = (125, 123, 114)


# ------------------------------------------------------------------------------ the draws
@dataclass
class MLKDPlan:
    """Everything random about MLKD's RandAugment for a batch (CPU tensors): ``ops`` (B, n)
    indices into :data:`MLKD_OPS`, ``values`` (B, n) their values, and ``cutout`` (B, 3) the
    uniform draws of Cutout (size fraction, x, y)."""

    ops: Tensor
    values: Tensor
    cutout: Tensor


def mlkd_plan(batch: int, generator: torch.Generator, num_ops: int = 2) -> MLKDPlan:
    """The draws of MLKD's RandAugment for ``batch`` images: per image, ``num_ops`` operations
    uniformly with replacement, each value ``min + (max - min) * U[0, 1)``, then three uniforms
    for Cutout."""
    device = generator.device
    ops = torch.randint(len(MLKD_OPS), (batch, num_ops), generator=generator, device=device)
    uniform = torch.rand(batch, num_ops + 3, generator=generator, device=device,
                         dtype=torch.float64)
    ops, uniform = ops.cpu(), uniform.cpu()
    bounds = torch.tensor([MLKD_RANGES[name] for name in MLKD_OPS], dtype=torch.float64)
    low, high = bounds[ops, 0], bounds[ops, 1]
    values = low + (high - low) * uniform[:, :num_ops]
    return MLKDPlan(ops, values, uniform[:, num_ops:])


# ------------------------------------------------------------------------- Pillow arithmetic
def _luma(images: Tensor) -> Tensor:
    """Pillow's ``convert("L")`` of RGB: (19595 R + 38470 G + 7471 B + 2^15) >> 16, as int32
    (B, 1, H, W); other channel counts are returned as they are (each channel an "L" image)."""
    if images.shape[1] != 3:
        return images.to(torch.int32)
    x = images.to(torch.int32)
    return ((x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 0x8000) >> 16)


def _blend(degenerate: Tensor, images: Tensor, factors: Tensor) -> Tensor:
    """Pillow's ``Image.blend(degenerate, image, alpha)`` on 8-bit images: in float32,
    ``deg + alpha * (img - deg)``, clipped to [0, 255] and truncated (``ImageEnhance``)."""
    alpha = factors.to(torch.float32).to(images.device).view(-1, 1, 1, 1)
    deg = degenerate.to(torch.float32)
    blended = deg + alpha * (images.to(torch.float32) - deg)
    return blended.clamp(0, 255).to(torch.uint8)


def _autocontrast(images: Tensor, values: Tensor) -> Tensor:
    """``ImageOps.autocontrast`` (no cutoff): per channel, ``int(x * scale + offset)`` with
    scale = 255 / (hi - lo) and offset = -lo * scale (float64), clipped; unchanged when
    hi <= lo."""
    x = images.to(torch.float64)
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    flat = high <= low
    # (a tensor numerator: ``255.0 / tensor`` would multiply by a rounded reciprocal)
    scale = torch.full_like(high, 255.0) / torch.where(flat, torch.ones_like(high), high - low)
    offset = -low * scale
    mapped = (x * scale + offset).trunc().clamp(0, 255)
    return torch.where(flat, x, mapped).to(torch.uint8)


def _brightness(images: Tensor, values: Tensor) -> Tensor:
    return _blend(torch.zeros_like(images), images, values)


def _color(images: Tensor, values: Tensor) -> Tensor:
    if images.shape[1] != 3:
        return images.clone()  # an "L" image: convert("L") is the image itself
    return _blend(_luma(images).expand_as(images), images, values)


def _contrast(images: Tensor, values: Tensor) -> Tensor:
    """``ImageEnhance.Contrast``: the degenerate image is grey at int(mean of L + 0.5)."""
    luma = _luma(images)
    count = luma.shape[-1] * luma.shape[-2]
    mean = luma.sum(dim=(-2, -1), keepdim=True, dtype=torch.int64).to(torch.float64) / count
    grey = (mean + 0.5).floor()
    return _blend(grey.expand(images.shape), images, values)


def _equalize(images: Tensor, values: Tensor) -> Tensor:
    """``ImageOps.equalize`` per channel: step = (N - count of the last used level) // 255;
    lut[i] = (step // 2 + number of pixels below level i) // step, clipped to 255 as
    ``Image.point`` does; unchanged when at most one level is used or step is 0."""
    batch, channels, height, width = images.shape
    flat = images.reshape(batch * channels, height * width).to(torch.int64)
    # The histogram from sorted pixels (deterministic on every device, unlike scatter_add):
    # below[v] = #pixels < v, hist[v] = #pixels == v.
    ordered = flat.sort(dim=1).values
    levels = torch.arange(256, device=images.device).expand(flat.shape[0], 256).contiguous()
    below = torch.searchsorted(ordered, levels, right=False)
    hist = torch.searchsorted(ordered, levels, right=True) - below
    used = hist > 0
    last = 255 - used.flip(1).to(torch.int8).argmax(dim=1)
    step = (height * width - hist.gather(1, last.unsqueeze(1))) // 255
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    identity = torch.arange(256, device=images.device).expand_as(lut)
    keep = (used.sum(dim=1, keepdim=True) <= 1) | (step == 0)
    lut = torch.where(keep, identity, lut)
    return lut.gather(1, flat).reshape(images.shape).to(torch.uint8)


def _posterize(images: Tensor, values: Tensor) -> Tensor:
    bits = values.trunc().to(torch.int64).clamp(min=1, max=8)
    masks = (~((1 << (8 - bits)) - 1)) & 0xFF
    return images & masks.to(torch.uint8).to(images.device).view(-1, 1, 1, 1)


def _solarize(images: Tensor, values: Tensor) -> Tensor:
    """``ImageOps.solarize``: levels ``>= threshold`` are inverted."""
    threshold = values.to(images.device).view(-1, 1, 1, 1)
    return torch.where(images.to(torch.float64) < threshold, images, 255 - images)


def _smooth(images: Tensor) -> Tensor:
    """Pillow's ``filter(ImageFilter.SMOOTH)`` (3x3 kernel (1 1 1; 1 5 1; 1 1 1) / 13) on 8-bit
    images: in float32, 0.5 + row y+1 + row y + row y-1 (each row summed left to right),
    truncated after clipping; the border rows and columns are copied."""
    x = images.to(torch.float32)
    one = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(13.0, dtype=torch.float32)
    five = torch.tensor(5.0, dtype=torch.float32) / torch.tensor(13.0, dtype=torch.float32)
    one, five = one.to(images.device), five.to(images.device)

    def row(r: Tensor, centre: Tensor) -> Tensor:
        return r[..., :-2] * one + r[..., 1:-1] * centre + r[..., 2:] * one

    total = 0.5 + row(x[..., 2:, :], one)
    total = total + row(x[..., 1:-1, :], five)
    total = total + row(x[..., :-2, :], one)
    out = images.clone()
    if images.shape[-1] > 2 and images.shape[-2] > 2:
        out[..., 1:-1, 1:-1] = total.clamp(0, 255).to(torch.uint8)
    return out


def _sharpness(images: Tensor, values: Tensor) -> Tensor:
    return _blend(_smooth(images), images, values)


def _fixed(value: float) -> int:
    """Pillow's 16.16 fixed point: FLOOR(v * 65536 + 0.5)."""
    return math.floor(value * 65536.0 + 0.5)


def _affine(images: Tensor, matrices: list[tuple[float, ...]]) -> Tensor:
    """Pillow's ``transform(size, AFFINE, (a, b, c, d, e, f), NEAREST)`` for each image, with
    fill 0: output pixel (x, y) reads input (a x' + b y' + c, d x' + e y' + f) at the pixel
    centre (x', y') = (x + 0.5, y + 0.5), rounded down. Pillow takes one of two paths, whose
    arithmetic is reproduced: pure translations (b = d = 0) go through ``ImagingScaleAffine``
    (float64, positions accumulated pixel by pixel), the others through ``affine_fixed``
    (16.16 fixed point), which Pillow uses for images under 32768 pixels a side."""
    batch, channels, height, width = images.shape
    device = images.device
    shifts = [m for m in matrices if m[1] == 0 and m[3] == 0]
    if shifts and len(shifts) != len(matrices):
        raise ValueError("translations and other affine maps go through separate paths")
    if shifts:
        # xo = c + a/2, then xo += a per column (a = e = 1 here); COORD: -1 below 0, else int().
        starts = torch.tensor([[m[2] + m[0] * 0.5, m[5] + m[4] * 0.5] for m in matrices],
                              dtype=torch.float64)
        steps_x = torch.tensor([m[0] for m in matrices], dtype=torch.float64)
        steps_y = torch.tensor([m[4] for m in matrices], dtype=torch.float64)
        xs = torch.cat([starts[:, :1], steps_x[:, None].expand(batch, width - 1)], 1).cumsum(1)
        ys = torch.cat([starts[:, 1:], steps_y[:, None].expand(batch, height - 1)], 1).cumsum(1)
        coord = lambda v: torch.where(v < 0, torch.full_like(v, -1), v.trunc())
        x_in = coord(xs).to(torch.int64).to(device)[:, None, :].expand(batch, height, width)
        y_in = coord(ys).to(torch.int64).to(device)[:, :, None].expand(batch, height, width)
    else:
        fixed = torch.tensor([[_fixed(m[0]), _fixed(m[1]), _fixed(m[2] + m[0] * 0.5 + m[1] * 0.5),
                               _fixed(m[3]), _fixed(m[4]), _fixed(m[5] + m[3] * 0.5 + m[4] * 0.5)]
                              for m in matrices], dtype=torch.int64).to(device)
        a0, a1, a2, a3, a4, a5 = (fixed[:, i].view(-1, 1, 1) for i in range(6))
        cols = torch.arange(width, device=device).view(1, 1, -1)
        rows = torch.arange(height, device=device).view(1, -1, 1)
        x_in = (a2 + rows * a1 + cols * a0) >> 16
        y_in = (a5 + rows * a4 + cols * a3) >> 16
    inside = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
    index = (y_in.clamp(0, height - 1) * width + x_in.clamp(0, width - 1)).view(batch, 1, -1)
    gathered = images.reshape(batch, channels, -1).gather(2, index.expand(-1, channels, -1))
    out = gathered.view(batch, channels, height, width)
    return torch.where(inside.unsqueeze(1), out, torch.zeros_like(out))


def _rotation_matrix(angle: float, width: int, height: int) -> tuple[float, ...]:
    """The inverse matrix of Pillow's ``Image.rotate(angle)`` about the image centre."""
    theta = -math.radians(angle % 360.0)
    a, b = round(math.cos(theta), 15), round(math.sin(theta), 15)
    d, e = round(-math.sin(theta), 15), round(math.cos(theta), 15)
    cx, cy = width / 2, height / 2
    return (a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy)


def _rotate(images: Tensor, values: Tensor) -> Tensor:
    height, width = images.shape[-2:]
    return _affine(images, [_rotation_matrix(v, width, height) for v in values.tolist()])


def _shear_x(images: Tensor, values: Tensor) -> Tensor:
    return _affine(images, [(1.0, v, 0.0, 0.0, 1.0, 0.0) for v in values.tolist()])


def _shear_y(images: Tensor, values: Tensor) -> Tensor:
    return _affine(images, [(1.0, 0.0, 0.0, v, 1.0, 0.0) for v in values.tolist()])


def _translate_x(images: Tensor, values: Tensor) -> Tensor:
    width = images.shape[-1]
    return _affine(images, [(1.0, 0.0, v * width, 0.0, 1.0, 0.0) for v in values.tolist()])


def _translate_y(images: Tensor, values: Tensor) -> Tensor:
    height = images.shape[-2]
    return _affine(images, [(1.0, 0.0, 0.0, 0.0, 1.0, v * height) for v in values.tolist()])


def _identity(images: Tensor, values: Tensor) -> Tensor:
    return images.clone()


_MLKD_KERNELS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "AutoContrast": _autocontrast, "Brightness": _brightness, "Color": _color,
    "Contrast": _contrast, "Equalize": _equalize, "Identity": _identity,
    "Posterize": _posterize, "Rotate": _rotate, "Sharpness": _sharpness, "ShearX": _shear_x,
    "ShearY": _shear_y, "Solarize": _solarize, "TranslateX": _translate_x,
    "TranslateY": _translate_y}


def mlkd_op(name: str, images: Tensor, values: Tensor | list[float]) -> Tensor:
    """MLKD's operation ``name`` (one of :data:`MLKD_OPS`) on uint8 ``images`` (B, C, H, W),
    with one value per image (``values``: B numbers)."""
    values = torch.as_tensor(values, dtype=torch.float64).cpu().reshape(-1)
    if values.numel() != images.shape[0]:
        raise ValueError(f"{name}: {values.numel()} values for {images.shape[0]} images")
    return _MLKD_KERNELS[name](images, values)


def cutout(images: Tensor, draws: Tensor) -> Tensor:
    """MLKD's ``Cutout(img, 0.5 * u0)`` with its ``CutoutAbs``, from three uniforms per image
    (``draws``: (B, 3) in [0, 1)): side v = 0.5 * u0 * width (none when v = 0); corner
    x0 = int(max(0, x - v/2)) with x = np.random.uniform(w) = w + (1 - w) * u1 (and y alike);
    x1 = min(w, x0 + v); Pillow's ``rectangle`` fills columns x0 .. int(x1) and rows
    y0 .. int(y1), inclusive and clipped, with :data:`CUTOUT_COLOR`."""
    _, channels, height, width = images.shape
    draws = draws.to(torch.float64).cpu()
    side = draws[:, 0] * 0.5 * width
    x = width + (1 - width) * draws[:, 1]
    y = height + (1 - height) * draws[:, 2]
    x0 = (x - side / 2).clamp(min=0).trunc()
    y0 = (y - side / 2).clamp(min=0).trunc()
    x1 = torch.minimum(torch.full_like(x0, width), x0 + side).trunc().clamp(max=width - 1)
    y1 = torch.minimum(torch.full_like(y0, height), y0 + side).trunc().clamp(max=height - 1)
    x1 = torch.where(side > 0, x1, x0 - 1)  # v = 0: no Cutout
    bounds = torch.stack([x0, x1, y0, y1], 1).to(torch.int64).to(images.device)
    cols = torch.arange(width, device=images.device).view(1, 1, -1)
    rows = torch.arange(height, device=images.device).view(1, -1, 1)
    inside = ((cols >= bounds[:, 0, None, None]) & (cols <= bounds[:, 1, None, None])
              & (rows >= bounds[:, 2, None, None]) & (rows <= bounds[:, 3, None, None]))
    if channels == 3:
        colour = torch.tensor(CUTOUT_COLOR, dtype=torch.uint8)
    else:
        grey = _luma(torch.tensor(CUTOUT_COLOR, dtype=torch.uint8).view(1, 3, 1, 1))
        colour = grey.reshape(1).to(torch.uint8).expand(channels)
    colour = colour.to(images.device).view(1, channels, 1, 1)
    return torch.where(inside.unsqueeze(1), colour, images)


def _apply_grouped(images: Tensor, ops: Tensor, values: Tensor) -> Tensor:
    """One operation per image (``ops``: indices into :data:`MLKD_OPS`), applied batched over
    the images that drew the same operation."""
    out = images.clone()
    for op in torch.unique(ops).tolist():
        name = MLKD_OPS[op]
        if name == "Identity":
            continue
        chosen = (ops == op).nonzero().flatten()
        index = chosen.to(images.device)
        out[index] = _MLKD_KERNELS[name](images[index], values[chosen])
    return out


# -------------------------------------------------------------------------------- the entry
def rand_augment(images: Tensor, generator: torch.Generator, num_ops: int = 2,
                 magnitude: int = 10) -> Tensor:
    """MLKD's RandAugment(``num_ops``, ``magnitude``) of uint8 ``images`` (B, C, H, W), each
    image drawing its own operations from ``generator``; uint8 of the same shape, on the same
    device (module docstring; ``magnitude`` is ignored, as in the reference)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError("rand_augment needs uint8 images of shape (B, C, H, W)")
    if num_ops < 0:
        raise ValueError(f"num_ops must be >= 0, got {num_ops}")
    plan = mlkd_plan(images.shape[0], generator, num_ops)
    out = images
    for k in range(num_ops):
        out = _apply_grouped(out, plan.ops[:, k], plan.values[:, k])
    return cutout(out, plan.cutout)
