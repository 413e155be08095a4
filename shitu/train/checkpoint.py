"""The training checkpoint format, in one place: write, read, the network it describes, teachers.

A checkpoint is a ``torch.save``d dict with at least ``config`` (the run's TrainConfig as a dict),
``model`` and ``epoch`` (0-based, the last finished); runs also store ``labels``, ``head``,
``projection``, ``ema``, ``optimizer`` and the rest of what ``--resume`` needs (``Trainer.checkpoint``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from shitu.errors import ShituError
from shitu.nn.lcnet import EmbeddingNet
from shitu.train.config import TrainConfig


def save_checkpoint(state: dict, path: Path):
    """Write atomically, so an interrupted save never leaves a half checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def read_checkpoint(path: Path, device="cpu") -> dict:
    """A training checkpoint's state; a missing or foreign file becomes one clear error."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise ShituError(f"checkpoint not found: {path}") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, pickle.UnpicklingError) as exc:
        raise ShituError(f"{path} is not a shitu training checkpoint ({exc})") from None
    if not isinstance(state, dict) or not {"config", "model", "epoch"} <= state.keys():
        raise ShituError(f"{path} is not a shitu training checkpoint (no config, model and epoch)")
    return state


def best_weights(state: dict) -> dict:
    """The weights to evaluate, export or start from: the EMA when the run kept one."""
    return state["ema"] if state.get("ema") is not None else state["model"]


def build_model(config: TrainConfig) -> nn.Module:
    """The embedding network a config describes: PP-LCNet, or an EfficientNet-Lite teacher to fine-tune."""
    if config.backbone != "pplcnet":
        from shitu.nn.teacher import LiteEmbeddingNet

        return LiteEmbeddingNet(config.backbone, config.embedding_size, config.bn_neck, config.dropout,
                                config.frozen_blocks)
    return EmbeddingNet(config.scale, config.embedding_size, config.bn_neck, config.dropout)


def network_of(state: dict, checkpoint: Path) -> tuple[nn.Module, TrainConfig, int]:
    """The eval-mode network (best weights), config and number of finished epochs of a checkpoint."""
    try:
        config = TrainConfig(**state["config"])
    except TypeError as exc:
        raise ShituError(f"{checkpoint} is not a shitu training checkpoint ({exc})") from None
    model = build_model(config)
    model.load_state_dict(best_weights(state))
    return model.eval(), config, state["epoch"] + 1


def load_checkpoint_model(checkpoint: Path) -> tuple[nn.Module, TrainConfig, int]:
    """``network_of`` the checkpoint file."""
    return network_of(read_checkpoint(checkpoint), checkpoint)


def load_teacher(source: str, logits: bool = False) -> nn.Module:
    """A frozen teacher: an ImageNet EfficientNet-Lite by name (its class logits with ``logits``), or a
    fine-tuned one's checkpoint (.pt)."""
    from shitu.nn.teacher import TEACHERS, Teacher

    if source in TEACHERS:
        return Teacher(source, logits)
    if not source.endswith(".pt"):
        raise ShituError(f"unknown teacher {source!r}: name one of {', '.join(TEACHERS)} "
                         "or a checkpoint (.pt) of a run with backbone = efficientnet_lite0 or _lite2")
    model, config, _ = load_checkpoint_model(Path(source))
    if config.backbone not in TEACHERS:
        raise ShituError(f"teacher checkpoint {source} is a {config.backbone} run; a teacher must be "
                         f"one of {', '.join(TEACHERS)} (train it with --backbone)")
    return Teacher(model, logits)
