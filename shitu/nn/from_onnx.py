"""Load an exported shitu ONNX model back into the PyTorch network, to train on from there.

Why: a user fine-tuning on their own catalogue should start from the shipped model, and the shipped
model is an ONNX file, not a checkpoint. The export folds every batch norm into the convolution
before it, so each such pair comes back as the folded convolution followed by a batch norm that adds
the folded bias. To keep that batch norm sensible in training mode (where it normalises by the batch's
own statistics), its scale and shift are set from the statistics the folded convolution's outputs
have on calibration images: in training mode it then passes those outputs through nearly unchanged,
and in eval mode exactly unchanged, so the loaded network computes what the ONNX model computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from shitu.errors import ShituError
from shitu.nn.lcnet import ConvBNAct, EmbeddingNet


def read_onnx_weights(path: Path) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], dict]:
    """The ONNX graph's convolutions, in graph order, as (weight, bias), and its neck.

    The neck is ``{"linear": (weight [out, in], bias), "norm": (scale, shift, mean, var, eps) or None}``.
    """
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except FileNotFoundError:
        raise ShituError(f"model not found: {path}") from None
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not ONNX
        raise ShituError(f"{path} is not an ONNX model ({type(exc).__name__})") from None
    tensors = {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            tensors[node.output[0]] = numpy_helper.to_array(node.attribute[0].t).copy()
    ops = {node.op_type for node in graph.node}
    if ops & {"QLinearConv", "QuantizeLinear", "ConvInteger"}:
        raise ShituError(f"{path} is a quantized (int8) model; start from its fp32 original instead")

    def value(name: str) -> np.ndarray:
        if name not in tensors:
            raise ShituError(f"{path}: weight {name!r} is computed, not stored; not an exported shitu model")
        return tensors[name]

    convs, neck = [], {"linear": None, "norm": None}
    for node in graph.node:
        if node.op_type == "Conv":
            convs.append((value(node.input[1]), value(node.input[2]) if len(node.input) > 2 else None))
        elif node.op_type == "Gemm":
            weight = value(node.input[1])
            transposed = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            neck["linear"] = (weight if transposed else weight.T, value(node.input[2]))
        elif node.op_type == "BatchNormalization":
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            neck["norm"] = (*(value(name) for name in node.input[1:5]), eps)
    return convs, neck


def conv_pairs(model: EmbeddingNet) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
    """Every convolution of the network in forward order, with the batch norm that follows it, if any."""
    pairs, inside_unit = [], set()
    for module in model.modules():
        if isinstance(module, ConvBNAct):
            pairs.append((module[0], module[1]))
            inside_unit.add(id(module[0]))
        elif isinstance(module, nn.Conv2d) and id(module) not in inside_unit:
            pairs.append((module, None))
    return pairs


@torch.no_grad()
def load_onnx_into(model: EmbeddingNet, path: Path, calibration: list[torch.Tensor]):
    """Copy an exported model's weights into ``model``; ``calibration``: normalised image batches."""
    convs, neck = read_onnx_weights(Path(path))
    pairs = conv_pairs(model)
    mismatch = ShituError(f"cannot start from {path}: its network differs from this config's "
                          "(scale, embedding_size or bn_neck)")
    if len(convs) != len(pairs) or neck["linear"] is None:
        raise mismatch
    if (neck["norm"] is None) != isinstance(model.bn_neck, nn.Identity):
        raise mismatch
    for (weight, bias), (conv, norm) in zip(convs, pairs):
        if tuple(weight.shape) != tuple(conv.weight.shape):
            raise mismatch
        conv.weight.copy_(torch.from_numpy(weight))
        bias = torch.from_numpy(bias) if bias is not None else torch.zeros(weight.shape[0])
        if norm is None:
            conv.bias.copy_(bias)
        else:  # for now: eval-mode batch norm that adds the folded bias; re-scaled below
            norm.weight.fill_(1.0)
            norm.bias.copy_(bias)
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
    weight, bias = neck["linear"]
    if tuple(weight.shape) != tuple(model.neck.weight.shape):
        raise mismatch
    model.neck.weight.copy_(torch.from_numpy(weight))
    model.neck.bias.copy_(torch.from_numpy(bias))
    if neck["norm"] is not None:
        scale, shift, mean, var, eps = neck["norm"]
        for parameter, array in zip((model.bn_neck.weight, model.bn_neck.bias, model.bn_neck.running_mean,
                                     model.bn_neck.running_var), (scale, shift, mean, var)):
            parameter.copy_(torch.from_numpy(array))
        model.bn_neck.eps = eps
    rescale_unfolded_norms(model, [norm for _, norm in pairs if norm is not None], calibration)


@torch.no_grad()
def rescale_unfolded_norms(model: nn.Module, norms: list[nn.BatchNorm2d], calibration: list[torch.Tensor]):
    """Give each identity-plus-bias batch norm the mean and spread of its input on ``calibration``.

    With running statistics (mean m, variance v), scale sqrt(v + eps) and shift m + bias, the norm is
    still exactly "input + bias" in eval mode, and close to it in training mode.
    """
    sums = {id(n): [0.0, 0.0, 0] for n in norms}

    def measure(norm, inputs, _output):
        x = inputs[0].double()
        entry = sums[id(norm)]
        entry[0] = entry[0] + x.sum(dim=(0, 2, 3))
        entry[1] = entry[1] + (x * x).sum(dim=(0, 2, 3))
        entry[2] += x.numel() // x.shape[1]

    hooks = [norm.register_forward_hook(measure) for norm in norms]
    was_training = model.training
    model.eval()
    for batch in calibration:
        model(batch)
    for hook in hooks:
        hook.remove()
    model.train(was_training)
    for norm in norms:
        total, squares, count = sums[id(norm)]
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0.0)
        norm.running_mean.copy_(mean.float())
        norm.running_var.copy_(var.float())
        norm.weight.copy_(torch.sqrt(var + norm.eps).float())
        norm.bias.add_(mean.float())
