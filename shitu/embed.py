"""Images in, L2-normalised embeddings out, with onnxruntime on the CPU.

The model file carries its own preprocessing (input size, mean, std) in its ONNX metadata, so an index
can never be built with one preprocessing and queried with another.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from shitu.errors import BadImage, ShituError
from shitu.imageio import load_rgb, resize_square

DEFAULT_MODEL = "ppLCNet_x2_5_shitu.onnx"


def default_model_path(int8: bool = False) -> Path:
    """The model shipped inside the package, or its int8 variant."""
    name = DEFAULT_MODEL.replace(".onnx", ".int8.onnx") if int8 else DEFAULT_MODEL
    return Path(str(resources.files("shitu") / "models" / name))


SHIPPED = {"fp32": False, "int8": True}  # what --model takes for the shipped models


def resolve_model(model: str | Path | None) -> Path:
    """A model argument as a file: None or ``fp32`` is the shipped model, ``int8`` its int8 variant
    (unless a file of that name exists here)."""
    if model is None:
        return default_model_path()
    if str(model) in SHIPPED and not Path(model).exists():
        return default_model_path(int8=SHIPPED[str(model)])
    return Path(model)


@dataclass(frozen=True)
class ModelInfo:
    """What an index must agree on with the model that queries it."""

    name: str
    version: str
    sha256: str
    embedding_size: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def describe(self) -> str:
        return f"{self.name} {self.version} (sha256 {self.sha256[:12]})"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_model_info(session, path: Path) -> ModelInfo:
    """Read the ``shitu.*`` metadata the exporter writes; refuse ONNX files without it, with values no
    exporter writes, or whose graph disagrees with it."""
    meta = session.get_modelmeta().custom_metadata_map
    try:
        info = ModelInfo(
            name=meta["shitu.model_name"], version=meta["shitu.model_version"], sha256=file_sha256(path),
            embedding_size=int(meta["shitu.embedding_size"]), input_size=int(meta["shitu.input_size"]),
            mean=channel_values(meta["shitu.mean"], "mean"), std=channel_values(meta["shitu.std"], "std"),
        )
    except KeyError as exc:
        raise ShituError(f"{path} is not a shitu model (missing metadata {exc}); export one with "
                         f"'shitu export'") from None
    except ValueError as exc:
        raise ShituError(f"{path} is not a shitu model (bad metadata: {exc}); export one with "
                         f"'shitu export'") from None
    problem = metadata_problem(info, session)
    if problem:
        raise ShituError(f"{path} is not a shitu model ({problem}); export one with 'shitu export'")
    return info


def channel_values(text: str, what: str) -> tuple[float, float, float]:
    """Three finite per-channel numbers (JSON), as ``mean`` and ``std`` must be."""
    values = json.loads(text)
    if not (isinstance(values, list) and len(values) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)):
        raise ValueError(f"{what} is {text!r}, not three finite numbers")
    return tuple(float(v) for v in values)


def metadata_problem(info: ModelInfo, session) -> str | None:
    """What in the metadata cannot be right for this graph, or None; dimensions the graph leaves open
    are checked on the first batch (``Embedder.embed_arrays``)."""
    if info.embedding_size < 1 or info.input_size < 1:
        return f"embedding_size {info.embedding_size} and input_size {info.input_size} must be >= 1"
    if min(info.std) <= 0:
        return f"std {list(info.std)} must be positive"
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or not outputs:
        return f"the graph has {len(inputs)} inputs and {len(outputs)} outputs, not one image input"
    expected = {"input": (inputs[0].shape, [3, info.input_size, info.input_size]),
                "output": (outputs[0].shape, [info.embedding_size])}
    for what, (shape, wanted) in expected.items():
        fixed = list(shape[1:])
        if len(fixed) != len(wanted) or any(isinstance(have, int) and have != want
                                            for have, want in zip(fixed, wanted)):
            return f"its {what} has shape {list(shape)}, the metadata says [batch, {', '.join(map(str, wanted))}]"
    return None


def recorded_training_labels(path: Path) -> list[str] | None:
    """The product labels a model's training used (``shitu.training_labels``), so anyone can check that
    the products they measure it on were not among them; None when the model does not record them or
    cannot be read."""
    import onnxruntime as ort

    try:
        meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        labels = json.loads(meta.custom_metadata_map["shitu.training_labels"])
    except (KeyError, ValueError, OSError, RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail):
        return None
    return labels if isinstance(labels, list) and all(isinstance(x, str) for x in labels) else None


def set_shitu_metadata(model, metadata: dict[str, str]):
    """Replace the ``shitu.*`` entries of an ONNX ``ModelProto``'s metadata, keeping any others.

    The exporter, the quantizer and the tests' hand-built models all write what ``read_model_info`` reads.
    """
    kept = [(entry.key, entry.value) for entry in model.metadata_props if not entry.key.startswith("shitu.")]
    del model.metadata_props[:]
    for key, value in kept + list(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


class Embedder:
    """An onnxruntime session plus the preprocessing its metadata prescribes."""

    def __init__(self, model_path: str | Path | None = None, threads: int | None = None):
        self.path = resolve_model(model_path)
        if not self.path.is_file():
            raise ShituError(f"model not found: {self.path}")
        self.threads = threads or os.cpu_count() or 1
        self.session = self.open_session(self.threads)
        self.info = read_model_info(self.session, self.path)
        self.input_name = self.session.get_inputs()[0].name
        # (value - mean) / std for every uint8 value and channel: one gather per pixel instead of four
        # array passes (measured 125 -> 50 us per 128 px image), with the same float32 results.
        mean, std = (np.array(v, dtype=np.float32).reshape(3, 1) * 255.0 for v in (self.info.mean, self.info.std))
        self.lookup = (np.arange(256, dtype=np.float32)[None, :] - mean) / std
        self.stream_session = None  # single-threaded twin for embed_files, opened on first use

    def open_session(self, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ShituError(f"cannot load model {self.path}: {str(exc).splitlines()[0]}") from None

    def preprocess(self, path: str | Path, regular_only: bool = True) -> np.ndarray:
        """One image file -> CHW float32 input; raises ``BadImage`` (``regular_only``: see ``load_rgb``)."""
        side = self.info.input_size
        pixels = resize_square(load_rgb(path, side, regular_only), side)
        out = np.empty((3, side, side), dtype=np.float32)
        for channel in range(3):
            np.take(self.lookup[channel], pixels[:, :, channel], out=out[channel])
        return out

    def embed_arrays(self, batch: np.ndarray, session=None) -> np.ndarray:
        """NCHW inputs -> N x D unit vectors (the model normalises; we re-normalise for safety).

        A model whose output is not N x embedding_size finite, non-zero values is refused: its vectors
        would be indexed and then never match anything.
        """
        session = session or self.session
        try:
            vectors = session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        except Exception as exc:  # onnxruntime raises its own untyped errors for inputs it cannot take
            raise ShituError(f"model {self.path} cannot embed a {batch.shape[-1]} px image: "
                             f"{str(exc).splitlines()[0]}") from None
        if vectors.shape != (len(batch), self.info.embedding_size):
            raise ShituError(f"model {self.path} makes vectors of shape {list(vectors.shape[1:])}, its metadata "
                             f"says {self.info.embedding_size}: it is not a usable shitu model")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not (np.isfinite(vectors).all() and np.isfinite(norms).all() and (norms > 0).all()):
            raise ShituError(f"model {self.path} makes NaN, infinite or zero embeddings: it is not a usable "
                             f"shitu model")
        return (vectors / norms).astype(np.float32)

    def embed_files(self, paths: Iterable[Path], batch_size: int = 8,
                    on_bad: Callable[[int, str], None] | None = None,
                    on_done: Callable[[int], None] | None = None,
                    regular_only: bool = True) -> Iterator[tuple[list[int], np.ndarray]]:
        """Stream ``(positions, vectors)`` batches in order; unreadable files go to ``on_bad(position,
        reason)`` and are skipped (``regular_only``: see ``load_rgb``).

        One worker per core decodes a batch and runs it through a single-threaded session, so each core
        alternates decoding and inference on its own. Why: a multi-threaded session waits for its
        slowest thread at every layer, and a decoding thread beside it stalls the whole network
        (measured on 2 cores, interleaved: 0.76 of model-only throughput that way, 0.83 this way).
        At most two batches per worker are in flight, so memory stays flat however large the gallery.
        """
        paths = list(paths)
        workers = self.threads if len(paths) > batch_size else 1  # one batch: the threaded session
        if workers > 1 and self.stream_session is None:
            self.stream_session = self.open_session(1)
        session = self.stream_session if workers > 1 else self.session

        def work(start):
            positions, inputs, errors = [], [], []
            for position in range(start, min(start + batch_size, len(paths))):
                try:
                    inputs.append(self.preprocess(paths[position], regular_only))
                    positions.append(position)
                except BadImage as exc:
                    errors.append((position, str(exc)))
            vectors = self.embed_arrays(np.stack(inputs), session) if inputs else None
            return positions, vectors, errors, min(batch_size, len(paths) - start)

        starts = iter(range(0, len(paths), batch_size))
        with ThreadPoolExecutor(workers) as pool:
            pending = deque(pool.submit(work, start) for _, start in zip(range(2 * workers), starts))
            while pending:
                positions, vectors, errors, count = pending.popleft().result()
                start = next(starts, None)
                if start is not None:
                    pending.append(pool.submit(work, start))
                for position, reason in errors:
                    if on_bad:
                        on_bad(position, reason)
                if on_done:
                    for _ in range(count):
                        on_done(1)
                if vectors is not None:
                    yield positions, vectors
