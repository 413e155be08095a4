"""Exponential moving average of a network's weights: the weights a run evaluates and exports."""

from __future__ import annotations

import torch
from torch import nn


class ModelEMA:
    """EMA of all weights and buffers, warmed up over the first steps (the decay ramps towards ``decay``)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module):
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.state[key].mul_(decay).add_(value.detach(), alpha=1 - decay)
            else:
                self.state[key].copy_(value)
