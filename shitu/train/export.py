"""Export a training checkpoint to the ONNX model the inference side loads.

The graph includes L2 normalisation, has a dynamic batch axis, and carries ``shitu.*`` metadata:
embedding size, input size, mean/std, model name and version, and the product labels it trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shitu.embed import set_shitu_metadata
from shitu.model_input import MEAN, STD
from shitu.train.batchnorm import calibrate_on_training_data
from shitu.train.checkpoint import load_teacher, network_of, read_checkpoint


class Normalized(nn.Module):
    """The embedding network followed by L2 normalisation."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.network(images), dim=1)


def export_onnx(checkpoint: Path, out: Path, name: str | None = None, version: str | None = None,
                input_size: int | None = None, recalibrate: bool = False) -> Path:
    """Write ``out`` (atomically) from ``checkpoint``; returns the path.

    The input side defaults to the run's ``export_size``, else its last training resolution, where its
    batch-norm statistics were measured. ``recalibrate`` re-measures them at the export side on the
    run's training images (needed when exporting at another resolution than the one trained at).
    """
    state = read_checkpoint(Path(checkpoint))
    model, config, epochs = network_of(state, Path(checkpoint))
    size = input_size or config.export_size or config.resolution_at(config.epochs - 1)
    if recalibrate:
        calibrate_on_training_data(model, config, size)
    lcnet = config.backbone == "pplcnet"
    metadata = {
        "shitu.model_name": name or ("PPLCNet_x2_5_shitu" if lcnet else f"{config.backbone}_shitu"),
        "shitu.model_version": version or f"epoch{epochs}",
        "shitu.embedding_size": str(config.embedding_size),
        "shitu.input_size": str(size),
        **({"shitu.scale": str(config.scale)} if lcnet else {}),
        # what it was trained on, so anyone can check that held-out products were not among them
        "shitu.training_labels": json.dumps(state.get("labels", []), ensure_ascii=False),
    }
    return write_onnx(Normalized(model).eval(), Path(out), size, metadata)


def export_teacher(teacher: str, out: Path, input_size: int = 224) -> Path:
    """An ImageNet EfficientNet-Lite's pooled features as a shitu model: the off-the-shelf baseline.

    With it, ``shitu build-index --model`` and ``shitu eval`` measure what a trained model must beat,
    on the same photos and through the same code.
    """
    network = load_teacher(teacher)
    metadata = {"shitu.model_name": f"{teacher}_imagenet", "shitu.model_version": "imagenet",
                "shitu.embedding_size": str(network.feature_size), "shitu.input_size": str(input_size)}
    return write_onnx(Normalized(network).eval(), Path(out), input_size, metadata)


def write_onnx(network: nn.Module, out: Path, size: int, metadata: dict[str, str]) -> Path:
    """Export ``network`` with a dynamic batch axis and the ``shitu.*`` metadata, atomically."""
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.onnx.export(network, (torch.zeros(2, 3, size, size),), str(tmp), input_names=["images"],
                      output_names=["embeddings"], dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
                      opset_version=17, dynamo=False)
    graph = onnx.load(str(tmp))
    set_shitu_metadata(graph, {
        **metadata,
        "shitu.mean": json.dumps([round(v, 4) for v in MEAN]),
        "shitu.std": json.dumps([round(v, 4) for v in STD]),
    })
    onnx.save(graph, str(tmp))
    tmp.replace(out)
    return out
