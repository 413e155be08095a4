"""Starting a run from another run's weights or from an exported ONNX model.

The network's weights come from the source; a classification head only from a checkpoint with the same
labels, a distillation projection only from a checkpoint with the same teacher and target (the teacher's
features for cosine and contrastive, its class logits for logits). What is missing is fitted to the loaded
network, so a fine-tune starts from it instead of fighting random layers: the head's rows are each class's
mean embedding ("imprinting"), the projection is the ridge regression from centred embeddings to centred
teacher features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shitu.embed import resolve_model
from shitu.errors import ShituError
from shitu.train.augment import normalize
from shitu.train.batchnorm import calibration_batches
from shitu.train.checkpoint import best_weights, read_checkpoint
from shitu.train.config import FEATURE_KINDS, TrainConfig


@dataclass
class StudentParts:
    """What a warm start fills: the network, its head and projection, and the images to fit them on."""

    model: nn.Module
    head: nn.Module
    projection: nn.Module | None
    teacher: nn.Module | None
    images: torch.Tensor  # uint8 NHWC training images at the first training side
    labels: torch.Tensor  # their class indices
    label_names: list[str]
    device: torch.device


def start_from(source: str, parts: StudentParts, config: TrainConfig):
    """Load ``source`` (a checkpoint, an ONNX file, or ``fp32``) into ``parts`` and fit what it lacks."""
    path = resolve_model(source)
    if path.suffix == ".onnx":
        from shitu.nn.from_onnx import load_onnx_into

        if config.backbone != "pplcnet":
            raise ShituError(f"init_from an ONNX model needs backbone = pplcnet, not {config.backbone}")
        load_onnx_into(parts.model, path, calibration_batches(parts.images, config.seed, parts.device))
        fit_missing_parts(parts, head=True, projection=True)
        return
    try:
        state = read_checkpoint(path, parts.device)
    except ShituError as exc:
        raise ShituError(f"cannot start from a checkpoint: {exc}") from None
    try:
        parts.model.load_state_dict(best_weights(state))
    except RuntimeError:
        raise ShituError(f"cannot start from {path}: its network differs from this config's "
                         "(scale, embedding_size or bn_neck)") from None
    same_labels = state.get("labels") == parts.label_names
    if same_labels:
        parts.head.load_state_dict(state["head"])
    has_projection = (parts.projection is not None and state.get("projection") is not None
                      and state["config"].get("teacher") == config.teacher
                      and same_target(state["config"].get("distill_kind", "cosine"), config.distill_kind))
    if has_projection:
        parts.projection.load_state_dict(state["projection"])
    fit_missing_parts(parts, head=not same_labels, projection=not has_projection)


def same_target(saved_kind: str, kind: str) -> bool:
    """Whether a saved projection maps onto what this run distils: the same kind, or two feature kinds."""
    return saved_kind == kind or (saved_kind in FEATURE_KINDS and kind in FEATURE_KINDS)


@torch.no_grad()
def fit_missing_parts(parts: StudentParts, head: bool, projection: bool):
    """Imprint the head and fit the projection by ridge regression, each only when asked."""
    projection = projection and parts.projection is not None
    if not (head or projection):
        return
    parts.model.eval()
    raw = forward_in_batches(parts.model, parts.images, parts.device)
    parts.model.train()
    if head:
        labels = parts.labels.to(parts.device)
        means = torch.zeros(len(parts.label_names), raw.shape[1], device=parts.device)
        parts.head.weight.copy_(F.normalize(means.index_add_(0, labels, F.normalize(raw))))
    if projection:
        target = forward_in_batches(parts.teacher, parts.images, parts.device)
        x, y = raw - raw.mean(0), target - target.mean(0)
        gram = x.T @ x + 1e-3 * torch.trace(x.T @ x) / x.shape[1] * torch.eye(x.shape[1], device=x.device)
        parts.projection.weight.copy_(torch.linalg.solve(gram, x.T @ y).T)
        parts.projection.bias.zero_()


@torch.no_grad()
def forward_in_batches(module: nn.Module, images: torch.Tensor, device, batch: int = 128) -> torch.Tensor:
    """``module``'s float32 outputs for uint8 ``images``, normalised and run ``batch`` at a time."""
    return torch.cat([module(normalize(images[i:i + batch].to(device))).float()
                      for i in range(0, len(images), batch)])
