"""Mixup and CutMix for function matching: the teacher and the student see the same mixed image.

Only the distillation term uses the mixed rows, so no label arithmetic is needed: the target is the
teacher's output on exactly the image the student sees (Beyer et al. 2022, "a good teacher is patient
and consistent").
"""

from __future__ import annotations

import torch


def mix_rows(x: torch.Tensor, first: int, kind: str, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Rows ``first:`` of NCHW batch ``x`` mixed each with a random partner drawn from the whole batch.

    ``both`` picks mixup or CutMix per row. Rows before ``first`` (the labelled products that feed
    the metric losses) stay clean, but they can be drawn as partners.
    """
    count = x.shape[0] - first
    if kind == "off" or count <= 0:
        return x
    partners = torch.randint(x.shape[0], (count,), generator=generator)
    lam = torch.distributions.Beta(alpha, alpha).sample((count,)) if alpha > 0 else torch.full((count,), 0.5)
    use_cutmix = torch.rand(count, generator=generator) < 0.5 if kind == "both" else \
        torch.full((count,), kind == "cutmix")
    base, other = x[first:], x[partners.to(x.device)]
    mixed = mixup(base, other, lam.to(x.device))
    cut = cutmix(base, other, lam, generator)
    chosen = torch.where(use_cutmix.to(x.device).view(-1, 1, 1, 1), cut, mixed)
    return torch.cat([x[:first], chosen])


def mixup(base: torch.Tensor, other: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Per row: ``lam * base + (1 - lam) * other``."""
    weight = lam.view(-1, 1, 1, 1)
    return base * weight + other * (1 - weight)


def cutmix(base: torch.Tensor, other: torch.Tensor, lam: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per row: ``base`` with a random box covering about ``1 - lam`` of it pasted from ``other``."""
    n, _, h, w = base.shape
    side = (1 - lam).clamp(0, 1).sqrt()
    box_h, box_w = (side * h).round().long(), (side * w).round().long()
    top = (torch.rand(n, generator=generator) * (h - box_h + 1)).long()
    left = (torch.rand(n, generator=generator) * (w - box_w + 1)).long()
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1)))
    return torch.where(inside.unsqueeze(1).to(base.device), other, base)
