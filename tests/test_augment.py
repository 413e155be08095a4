"""The natural photos' crop range (distill_crop_scale_min) is their own; the products keep crop_scale_min."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from shitu.errors import ShituError  # noqa: E402
from shitu.train.augment import augment  # noqa: E402
from shitu.train.config import TrainConfig  # noqa: E402


def widths(views: torch.Tensor) -> torch.Tensor:
    """The share of a left-to-right ramp each view spans: the crop's width."""
    row = views[:, 0].mean(dim=1)
    return (row.amax(dim=1) - row.amin(dim=1)) / (row.amax() - row.amin()).clamp(min=1e-6)


def test_scale_min_overrides_the_configs_crop_range():
    config = TrainConfig(data="unused", crop_scale_min=1.0, rotation=0.0, color_jitter=0.0, erase_prob=0.0)
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (64, 1, 3))
    images = torch.from_numpy(np.stack([ramp] * 32))
    generator = torch.Generator().manual_seed(0)
    product_views = widths(augment(images, 32, config, generator))
    natural_views = widths(augment(images, 32, config, generator, scale_min=0.05))
    assert product_views.min() > 0.8  # the whole area, at an aspect between 3:4 and 4:3
    assert natural_views.min() < 0.4 and natural_views.mean() < product_views.mean() - 0.1


def test_a_crop_range_below_five_percent_is_refused():
    with pytest.raises(ShituError, match="distill_crop_scale_min must be 0"):
        TrainConfig(data="unused", distill_crop_scale_min=0.01).validate()
    assert TrainConfig(data="unused", distill_crop_scale_min=0.08).validate().natural_crop_scale_min() == 0.08
    assert TrainConfig(data="unused", crop_scale_min=0.5).validate().natural_crop_scale_min() == 0.5
