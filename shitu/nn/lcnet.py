"""PP-LCNet (Cui et al., "PP-LCNet: A Lightweight CPU Convolutional Neural Network", arXiv 2109.15099).

The architecture is data: ``BLOCKS`` lists the 13 depthwise-separable blocks at scale 1.0, and
``PPLCNet`` builds any width from it. ``EmbeddingNet`` adds the PP-ShiTu embedding neck.
"""

from __future__ import annotations

import torch
from torch import nn

# (kernel, in_channels, out_channels, stride, squeeze_excite) at scale 1.0, as in the paper's Table 1.
BLOCKS = (
    (3, 16, 32, 1, False),
    (3, 32, 64, 2, False),
    (3, 64, 64, 1, False),
    (3, 64, 128, 2, False),
    (3, 128, 128, 1, False),
    (3, 128, 256, 2, False),
    (5, 256, 256, 1, False),
    (5, 256, 256, 1, False),
    (5, 256, 256, 1, False),
    (5, 256, 256, 1, False),
    (5, 256, 256, 1, False),
    (5, 256, 512, 2, True),
    (5, 512, 512, 1, True),
)
STEM_CHANNELS = 16
HEAD_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNAct(nn.Sequential):
    """Convolution without bias, batch norm, hard-swish: the unit every block is made of."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.Hardswish(),
        )


class SqueezeExcite(nn.Module):
    """Channel attention with reduction 4, ReLU and hard-sigmoid, as PP-LCNet uses it."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(channels // reduction, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))


class DepthwiseSeparable(nn.Sequential):
    """Depthwise kxk conv, optional squeeze-excite, pointwise 1x1 conv; no residual."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, use_se: bool):
        layers = [ConvBNAct(cin, cin, kernel, stride, groups=cin)]
        if use_se:
            layers.append(SqueezeExcite(cin))
        layers.append(ConvBNAct(cin, cout, 1))
        super().__init__(*layers)


class PPLCNet(nn.Module):
    """PP-LCNet backbone up to the 1280-d pooled feature (classifier removed)."""

    def __init__(self, scale: float = 2.5, dropout: float = 0.2):
        super().__init__()
        self.stem = ConvBNAct(3, make_divisible(STEM_CHANNELS * scale), 3, stride=2)
        self.blocks = nn.Sequential(*(
            DepthwiseSeparable(make_divisible(cin * scale), make_divisible(cout * scale), k, s, se)
            for k, cin, cout, s, se in BLOCKS
        ))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.last_conv = nn.Conv2d(make_divisible(BLOCKS[-1][2] * scale), HEAD_CHANNELS, 1)
        self.last_act = nn.Hardswish()
        self.dropout = nn.Dropout(dropout)
        self.out_channels = HEAD_CHANNELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.dropout(self.last_act(self.last_conv(x))).flatten(1)


class EmbeddingNet(nn.Module):
    """PP-LCNet backbone + FC neck (optionally BN-neck): the network that gets exported.

    The output is the raw embedding; callers L2-normalise it (the ONNX export does it inside).
    """

    def __init__(self, scale: float = 2.5, embedding_size: int = 512, bn_neck: bool = False,
                 dropout: float = 0.2):
        super().__init__()
        self.backbone = PPLCNet(scale, dropout)
        self.neck = nn.Linear(self.backbone.out_channels, embedding_size)
        self.bn_neck = nn.BatchNorm1d(embedding_size) if bn_neck else nn.Identity()
        self.embedding_size = embedding_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_neck(self.neck(self.backbone(x)))


def count_macs(model: nn.Module, size: int = 224) -> int:
    """Multiply-accumulates of one forward pass at ``size`` x ``size`` (convolutions and linears)."""
    macs = 0

    def conv_hook(module, _inputs, output):
        nonlocal macs
        kernel_macs = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        macs += output.numel() // output.shape[0] * kernel_macs

    def linear_hook(module, _inputs, output):
        nonlocal macs
        macs += module.in_features * module.out_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return macs
