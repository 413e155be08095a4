"""ArcMargin (ArcFace, Deng et al. 2019): the classification head PP-ShiTu trains embeddings with."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ArcMarginHead(nn.Module):
    """Cosine logits with an additive angular margin on the true class, scaled by ``scale``."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 30.0, margin: float = 0.2):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.xavier_uniform_(self.weight)
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1.0, 1.0)
        sine = torch.sqrt((1.0 - cosine * cosine).clamp_min(1e-9))
        with_margin = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        # Past pi - m the angle cannot grow further; fall back to a linear penalty (ArcFace's trick).
        threshold = math.cos(math.pi - self.margin)
        with_margin = torch.where(cosine > threshold, with_margin,
                                  cosine - math.sin(math.pi - self.margin) * self.margin)
        target = F.one_hot(labels, cosine.shape[1]).bool()
        return self.scale * torch.where(target, with_margin, cosine)
