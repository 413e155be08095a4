"""Metric-learning losses used next to ArcMargin: triplet on angles, and feature distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hardest_pairs(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor: cosine to its least similar positive and to its most similar negative."""
    unit = F.normalize(embeddings)
    similarity = unit @ unit.T
    same = labels[:, None] == labels[None, :]
    self_pair = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = similarity.masked_fill(~same | self_pair, 2.0).min(dim=1).values
    negative = similarity.masked_fill(same, -2.0).max(dim=1).values
    return positive, negative


def triplet_angular_margin(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.5,
                           positive_floor: float = 0.9, negative_ceiling: float = 0.5,
                           absolute_weight: float = 0.1) -> torch.Tensor:
    """PP-ShiTu's TripletAngularMarginLoss on cosine similarity, hardest pairs in the batch.

    Ranking term: positive similarity must beat negative similarity by ``margin``. Absolute terms:
    positives above ``positive_floor``, negatives below ``negative_ceiling``. Anchors without a
    positive or a negative in the batch are left out.
    """
    positive, negative = hardest_pairs(embeddings, labels)
    valid = (positive <= 1.5) & (negative >= -1.5)
    if not valid.any():
        return embeddings.sum() * 0.0
    positive, negative = positive[valid], negative[valid]
    ranking = F.relu(negative - positive + margin).mean()
    absolute = F.relu(positive_floor - positive).mean() + F.relu(negative - negative_ceiling).mean()
    return ranking + absolute_weight * absolute


def cosine_distillation(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine between the student's projected features and the teacher's, averaged."""
    return (1.0 - F.cosine_similarity(projected, teacher, dim=1)).mean()


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) over the teacher's classes, scaled by T^2 so gradients keep their size.

    The teacher's ImageNet class distribution names what a photo shows, so matching it teaches
    category-level features; matching raw pooled features spends most of the signal on a few directions.
    """
    target = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(F.log_softmax(student / temperature, dim=1), target, reduction="batchmean") * temperature ** 2


def contrastive_distillation(projected: torch.Tensor, teacher: torch.Tensor,
                             temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE both ways: each image's projection must pick out its own teacher features among the batch's.

    Matching cosines alone lets a student from random weights settle on the teacher's top few directions
    (run 12: its embedding of natural photos had an effective rank of 2 to 9, the teacher's 115); telling
    every image of a batch apart by the teacher's features needs all of them. Both sides are centred on
    the batch mean first, as the cosine term is.
    """
    s = F.normalize(projected - projected.mean(0), dim=1)
    t = F.normalize(teacher - teacher.mean(0), dim=1)
    logits = s @ t.T / temperature
    own = torch.arange(len(s), device=s.device)
    return (F.cross_entropy(logits, own) + F.cross_entropy(logits.T, own)) / 2


def relational_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Match the batch's pairwise cosine similarities (no projection needed)."""
    s, t = F.normalize(student), F.normalize(teacher)
    return F.smooth_l1_loss(s @ s.T, t @ t.T)
