"""Batch augmentation on tensors: one affine warp does crop, scale, aspect, rotation and flip.

Working on whole batches with ``grid_sample`` costs a fraction of per-image PIL transforms on a CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from shitu import model_input

MEAN = torch.tensor(model_input.MEAN).view(1, 3, 1, 1)
STD = torch.tensor(model_input.STD).view(1, 3, 1, 1)


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """NHWC uint8 -> NCHW float normalised with ImageNet mean/std (the inference preprocessing)."""
    x = images_uint8.permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN.to(x.device)) / STD.to(x.device)


def random_affine(batch: int, scale_min: float, rotation: float, generator: torch.Generator) -> torch.Tensor:
    """Affine matrices (output -> input coordinates) for random resized crops with rotation and flip."""
    area = torch.empty(batch).uniform_(scale_min, 1.0, generator=generator)
    log_ratio = torch.empty(batch).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp()
    width, height = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    shift_x = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - width)
    shift_y = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - height)
    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(rotation)
    flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([
        torch.stack([width * cos * flip, -height * sin, shift_x], dim=1),
        torch.stack([width * sin * flip, height * cos, shift_y], dim=1),
    ], dim=1)
    return theta


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Random brightness, contrast and saturation on [0, 1] images."""
    n = x.shape[0]

    def factor():
        return (1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * strength).to(x.device)

    x = x * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    gray = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = (x - gray) * factor() + gray
    return x.clamp(0.0, 1.0)


def random_erase(x: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Fill one random rectangle (2-20 % of the area) with noise in a share of the images."""
    n, _, h, w = x.shape
    for i in torch.nonzero(torch.rand(n, generator=generator) < probability).flatten().tolist():
        area = h * w * (0.02 + 0.18 * torch.rand(1, generator=generator).item())
        aspect = math.exp((torch.rand(1, generator=generator).item() * 2 - 1) * math.log(3))
        eh, ew = min(h, int(round(math.sqrt(area * aspect)))), min(w, int(round(math.sqrt(area / aspect))))
        top = int(torch.randint(0, h - eh + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - ew + 1, (1,), generator=generator))
        x[i, :, top:top + eh, left:left + ew] = torch.rand(3, eh, ew, generator=generator).to(x.device)
    return x


def augment(images_uint8: torch.Tensor, size: int, config, generator: torch.Generator,
            scale_min: float | None = None) -> torch.Tensor:
    """NHWC uint8 cache crops -> augmented, normalised NCHW float batch of side ``size``.

    ``scale_min`` (default: the config's ``crop_scale_min``) is the smallest share of the area a crop keeps.
    """
    x = images_uint8.permute(0, 3, 1, 2).float() / 255.0
    scale_min = config.crop_scale_min if scale_min is None else scale_min
    theta = random_affine(x.shape[0], scale_min, config.rotation, generator).to(x.device)
    grid = F.affine_grid(theta, [x.shape[0], 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = color_jitter(x, config.color_jitter, generator)
    x = random_erase(x, config.erase_prob, generator)
    return (x - MEAN.to(x.device)) / STD.to(x.device)


def fixed_views(images_uint8: torch.Tensor, keys: list[int], size: int, config) -> torch.Tensor:
    """Like ``augment``, but image j's random view is fully determined by ``keys[j]``.

    With a view drawn from a fixed few per image, the teacher's features of each view can be computed
    once and reused (``teacher_views``).
    """
    views = []
    for j, key in enumerate(keys):
        generator = torch.Generator().manual_seed(int(key))
        views.append(augment(images_uint8[j:j + 1], size, config, generator))
    return torch.cat(views)
