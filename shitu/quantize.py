"""Static int8 quantization of a shitu ONNX model, calibrated on gallery-like photos.

Why these settings (issue #4, "Fast on a CPU"). Figures are mean cosines to fp32 over the demo
photos, for EfficientNet-Lite0 with ImageNet weights at 96 px, measured on AMD Zen 3 (see
tests/test_quantize.py):

* QDQ format, every operator onnxruntime can quantize: its CPU kernels fuse QuantizeLinear /
  DequantizeLinear pairs into int8 Conv, Gemm, Add, Mul and pooling. Quantizing only Conv/Gemm was
  worse (0.89 against 0.97): a float Clip/ReLU left after an int8 Conv makes the Conv's output range
  cover the negative values the activation then throws away.
* uint8 activations, int8 per-channel weights: u8s8 is onnxruntime's fast path on x86, and one scale
  per output channel keeps depthwise convolutions accurate (per-tensor scales: 0.71).
* ``reduce_range`` (7-bit weights) by default: CPUs with AVX2 but without VNNI (our AMD Zen 3, and
  Intel cores before Cascade Lake / Ice Lake) multiply u8 by s8 with VPMADDUBSW, which adds two
  products into a saturating int16: 255 * 127 * 2 = 64770 overflows 32767, 255 * 63 * 2 = 32130 does
  not. 8-bit weights gave 0.88 (0.28 on the test's random PP-LCNet, against 0.81), and the loss is
  the kernels': with graph optimisations off, which runs the QDQ graph in float, 8-bit weights were as
  good as 7-bit ones on a random PP-LCNet. Pass ``reduce_range=False`` only for a VNNI or ARM target.
* h-swish in integers: onnxruntime has no int8 HardSigmoid, so the quantized graph computed every
  h-swish gate as dequantize, float HardSigmoid, quantize (1.6 ms of a 6.1 ms int8 PP-LCNet at 128
  px, 1 thread, AMD Zen 3). ``integer_hard_sigmoid`` turns each gate into an int8 Add (QLinearAdd),
  whose saturation does the clipping: 6.07 -> 5.05 ms, cosine to fp32 unchanged (0.9774 -> 0.9777).
* Percentile calibration (each activation's range cut at the 99.99th percentile of its histogram)
  over photos that go through ``Embedder.preprocess``, the exact preprocessing of build and query.
  MinMax let a few outlier activations stretch the ranges: on the 160 px model ``e125`` (validation
  photos against the train gallery) recall@1 fell from 0.561 (fp32) to 0.507 and MAP@R from 0.405 to
  0.362 with MinMax on 200 photos (500 photos: 0.514, 0.372; leaving the stem or the tail in fp32 did
  not help), against 0.554 and 0.393 with the percentile on 64 photos. onnxruntime keeps every
  calibration output in memory for the histograms (3.1 GB peak for 64 photos at 160 px, 5.9 GB for
  128), hence 64 photos by default (``shitu quantize --images``).

The int8 file keeps the ``shitu.*`` metadata with a new version (``<fp32 version>-int8``) and
``shitu.quantized = int8``; being another file it has another sha256, so an index built with the fp32
model is refused for it (and the other way round) instead of mixing embeddings of two models.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import tempfile
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from shitu.embed import Embedder, set_shitu_metadata
from shitu.errors import BadImage, ShituError
from shitu.gallery import GalleryItem
from shitu.progress import SILENT, Reporter

CALIBRATION_BATCH = 1  # the percentile calibrator stacks outputs: every batch must be the same size
PERCENTILE = 99.99


@dataclass
class QuantizeReport:
    """What a quantization did, for the summary line and the tests."""

    path: Path
    version: str
    images: int = 0
    fp32_bytes: int = 0
    int8_bytes: int = 0
    bad: list[str] = field(default_factory=list)


def pick_calibration(items: list[GalleryItem], count: int) -> list[GalleryItem]:
    """Up to ``count`` items, labels taken in turn, each label's photos in a fixed shuffled order.

    Every label shapes the ranges, and a label folder sorted by sub-folder (``Apple/Golden/...``)
    does not give only its first sub-folder.
    """
    by_label: dict[str, list[GalleryItem]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    shuffler = random.Random(0)
    for group in by_label.values():
        shuffler.shuffle(group)
    interleaved = (item for group in zip_longest(*by_label.values()) for item in group if item is not None)
    return [item for _, item in zip(range(count), interleaved)]


class GalleryCalibration(CalibrationDataReader):
    """Feeds calibration photos to onnxruntime's calibrator, ``CALIBRATION_BATCH`` at a time.

    The first batch is read up front so a folder without one readable photo fails before calibrating.
    """

    def __init__(self, embedder: Embedder, paths: list[Path], on_bad: Callable[[str], None],
                 on_done: Callable[[], None] | None = None):
        self.embedder, self.paths, self.used = embedder, paths, 0
        self.on_bad, self.on_done = on_bad, on_done or (lambda: None)
        self.batches = self.read()
        self.pending = next(self.batches, None)

    def read(self) -> Iterator[dict[str, np.ndarray]]:
        inputs = []
        for path in self.paths:
            try:
                inputs.append(self.embedder.preprocess(path))
            except BadImage as exc:
                self.on_bad(str(exc))
            self.on_done()
            if len(inputs) == CALIBRATION_BATCH:
                yield self.batch(inputs)
                inputs = []
        if inputs:
            yield self.batch(inputs)

    def batch(self, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        self.used += len(inputs)
        return {self.embedder.input_name: np.stack(inputs).astype(np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = self.pending
        if batch is not None:
            self.pending = next(self.batches, None)
        return batch


def quantize_model(model: str | Path, out: str | Path, calibration: list[GalleryItem],
                   reduce_range: bool = True, reporter: Reporter = SILENT) -> QuantizeReport:
    """Write an int8 copy of ``model`` to ``out`` (atomically), calibrated on ``calibration``."""
    out = Path(out)
    embedder = Embedder(model, threads=1)
    model = embedder.path  # 'fp32' names the shipped model
    if out.is_dir():
        raise ShituError(f"--out {out} is a folder; name the int8 .onnx file to write")
    metadata = embedder.session.get_modelmeta().custom_metadata_map
    if "shitu.quantized" in metadata:
        raise ShituError(f"{model} is already quantized ({metadata['shitu.quantized']}); "
                         f"quantize the fp32 model it was made from")
    if out.resolve() == model.resolve():
        raise ShituError("--out must name a new file, not the fp32 model itself")
    report = QuantizeReport(out, f"{embedder.info.version}-int8", fp32_bytes=model.stat().st_size)

    def bad(reason: str):
        report.bad.append(reason)
        reporter.warn(f"skipped {reason}")

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ShituError(f"cannot write {out}: {exc.strerror or exc}") from None
    with tempfile.TemporaryDirectory(prefix="shitu-quantize-") as tmp, \
            reporter.progress(len(calibration), "calibrating") as bar:
        reader = GalleryCalibration(embedder, [item.path for item in calibration], bad, bar.advance)
        if reader.pending is None:
            raise ShituError(f"none of the {len(calibration)} calibration images could be read")
        prepared = Path(tmp, "prepared.onnx")
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)  # CNN: ONNX shapes suffice
        quantized = Path(tmp, "int8.onnx")
        # onnxruntime warns on the root logger about 1-d BN-neck weights, and prints its histogram steps
        with quiet_root_logger(), contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(prepared), str(quantized), reader, quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.Percentile,
                            extra_options={"CalibPercentile": PERCENTILE})
        report.images = reader.used
        graph = onnx.load(str(quantized))
        gates = integer_hard_sigmoid(graph)
        settings = {"format": "QDQ", "activations": "uint8", "weights": "int8 per-channel",
                    "reduce_range": reduce_range, "calibration": f"percentile {PERCENTILE}",
                    "images": reader.used, "integer_hard_sigmoid": gates}
        write_with_metadata(graph, out, int8_metadata(metadata, report.version, settings))
    report.int8_bytes = out.stat().st_size
    return report


@contextlib.contextmanager
def quiet_root_logger():
    """Hide library warnings logged on the root logger for the duration (restored afterwards)."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def int8_metadata(fp32: dict[str, str], version: str, settings: dict) -> dict[str, str]:
    """The fp32 model's ``shitu.*`` keys, with the int8 version and how it was quantized."""
    metadata = {key: value for key, value in fp32.items() if key.startswith("shitu.")}
    metadata.update({"shitu.model_version": version, "shitu.quantized": "int8",
                     "shitu.quantization": json.dumps(settings)})
    return metadata


def integer_hard_sigmoid(model: onnx.ModelProto) -> int:
    """Rewrite each quantized ``HardSigmoid`` as an Add that onnxruntime runs in int8; returns how many.

    HardSigmoid is ``clip(alpha * x + beta, 0, 1)`` = ``alpha * clip(x + beta / alpha, 0, 1 / alpha)``.
    The node becomes ``x + beta / alpha`` (the constant as a dequantized uint8), and the QuantizeLinear
    after it gets its scale divided by ``alpha``: its uint8 codes are then those of the gate under the
    old scale (to one unit of rounding), which the DequantizeLinear nodes reading it still use, and
    uint8 saturation clips to [0, 1]: the gate's calibrated range starts at 0, so its zero point is 0
    (checked).
    onnxruntime fuses DequantizeLinear -> Add -> QuantizeLinear into one QLinearAdd. A gate that is
    not followed by a single QuantizeLinear alone is left as it is.
    """
    graph = model.graph
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    rewritten = 0
    for position, node in reversed(list(enumerate(graph.node))):
        after = readers.get(node.output[0], []) if node.op_type == "HardSigmoid" else []
        if len(after) != 1 or not unsigned_from_zero(after[0], initializers):
            continue
        attributes = {a.name: a.f for a in node.attribute}
        alpha, beta = attributes.get("alpha", 0.2), attributes.get("beta", 0.5)
        prefix = f"{node.name or node.output[0]}_int8"
        quantize = after[0]
        old_scale = float(numpy_helper.to_array(initializers[quantize.input[1]]))
        constants = {f"{prefix}_shift_q": np.array(255, np.uint8),  # 255 * scale = beta / alpha
                     f"{prefix}_shift_scale": np.array(beta / alpha / 255, np.float32),
                     f"{prefix}_shift_zero_point": np.array(0, np.uint8),
                     f"{prefix}_gate_scale": np.array(old_scale / alpha, np.float32)}
        graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
        quantize.input[1] = f"{prefix}_gate_scale"
        shift_inputs = list(constants)[:3]
        shift = helper.make_node("DequantizeLinear", shift_inputs, [f"{prefix}_shift"],
                                 name=f"{prefix}_shift")
        add = helper.make_node("Add", [node.input[0], f"{prefix}_shift"], [node.output[0]],
                               name=f"{prefix}_add")
        del graph.node[position]
        graph.node.insert(position, add)
        graph.node.insert(position, shift)
        rewritten += 1
    return rewritten


def unsigned_from_zero(node, initializers: dict) -> bool:
    """Whether ``node`` quantizes to uint8 codes with zero point 0 and a stored scale (the gates do)."""
    if node.op_type != "QuantizeLinear" or node.input[1] not in initializers:
        return False
    if len(node.input) < 3 or not node.input[2]:
        return True  # no zero point: uint8, 0
    zero_point = initializers.get(node.input[2])
    return zero_point is not None and zero_point.data_type == onnx.TensorProto.UINT8 \
        and int(numpy_helper.to_array(zero_point)) == 0


def write_with_metadata(graph: onnx.ModelProto, out: Path, metadata: dict[str, str]):
    """Save ``graph`` as ``out`` with ``metadata`` replacing its ``shitu.*`` keys; temp file, then rename."""
    set_shitu_metadata(graph, metadata)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        onnx.save(graph, str(tmp))
        tmp.replace(out)
    except OSError as exc:  # a full disk, no permission, --out turned into a folder meanwhile
        tmp.unlink(missing_ok=True)
        raise ShituError(f"cannot write {out}: {exc.strerror or exc}") from None
