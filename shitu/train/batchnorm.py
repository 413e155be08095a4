"""Batch-norm recalibration ("precise BN"): running statistics measured exactly for the weights in use.

Running statistics lag behind the weights early in training, EMA-averaged statistics never match the
averaged weights, and a deep network without residuals then maps every image to the same point.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shitu.train.augment import normalize
from shitu.train.data import decode_all, read_records

CALIBRATION_IMAGES = 512


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: list[torch.Tensor]):
    """Replace every trained batch norm's running statistics by their exact average over ``batches``.

    Frozen ones (no trainable affine weights: the ImageNet stem of an EfficientNet teacher) keep theirs.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and (m.weight is None or m.weight.requires_grad)]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
        norm.train()
    for batch in batches:
        model(batch)
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def calibration_batches(images: torch.Tensor, seed: int, device="cpu") -> list[torch.Tensor]:
    """A fixed random subset of un-augmented uint8 images, normalised, in batches of 64."""
    chosen = torch.from_numpy(np.random.default_rng(seed).permutation(len(images))[:CALIBRATION_IMAGES])
    return [normalize(images[chosen[i:i + 64]].to(device)) for i in range(0, len(chosen), 64)]


def calibrate_on_training_data(model: nn.Module, config, size: int):
    """Recompute batch-norm statistics for input side ``size`` from the run's own training images."""
    items = read_records(config.data, config.lists)
    rng = np.random.default_rng(config.seed)
    subset = [items[i] for i in rng.permutation(len(items))[:CALIBRATION_IMAGES]]
    images = torch.from_numpy(decode_all(subset, size, max(1, torch.get_num_threads())))
    recalibrate_batch_norm(model, calibration_batches(images, config.seed))
