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
    """Read the ``shitu.*`` metadata the exporter writes; refuse ONNX files without it."""
    meta = session.get_modelmeta().custom_metadata_map
    try:
        return ModelInfo(
            name=meta["shitu.model_name"], version=meta["shitu.model_version"], sha256=file_sha256(path),
            embedding_size=int(meta["shitu.embedding_size"]), input_size=int(meta["shitu.input_size"]),
            mean=tuple(json.loads(meta["shitu.mean"])), std=tuple(json.loads(meta["shitu.std"])),
        )
    except (KeyError, ValueError) as exc:
        raise ShituError(f"{path} is not a shitu model (missing metadata {exc}); export one with "
                         f"'shitu export'") from None


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
        import onnxruntime as ort

        self.path = resolve_model(model_path)
        if not self.path.is_file():
            raise ShituError(f"model not found: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ShituError(f"cannot load model {self.path}: {str(exc).splitlines()[0]}") from None
        self.info = read_model_info(self.session, self.path)
        self.input_name = self.session.get_inputs()[0].name
        self.mean = np.array(self.info.mean, dtype=np.float32).reshape(1, 1, 3) * 255.0
        self.std = np.array(self.info.std, dtype=np.float32).reshape(1, 1, 3) * 255.0

    def preprocess(self, path: str | Path) -> np.ndarray:
        """One image file -> CHW float32 input; raises ``BadImage``."""
        side = self.info.input_size
        pixels = resize_square(load_rgb(path, side), side).astype(np.float32)
        return ((pixels - self.mean) / self.std).transpose(2, 0, 1)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """NCHW inputs -> N x D unit vectors (the model normalises; we re-normalise for safety)."""
        vectors = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)

    def embed_files(self, paths: Iterable[Path], batch_size: int = 32, workers: int = 2,
                    on_bad: Callable[[int, str], None] | None = None,
                    on_done: Callable[[int], None] | None = None) -> Iterator[tuple[list[int], np.ndarray]]:
        """Stream ``(positions, vectors)`` batches; decoding runs in threads ahead of inference.

        At most two batches are decoded ahead, so memory stays flat however large the gallery.
        Unreadable files are reported through ``on_bad(position, reason)`` and skipped.
        """
        paths = list(paths)

        def decode(position):
            try:
                return position, self.preprocess(paths[position]), None
            except BadImage as exc:
                return position, None, str(exc)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            pending = deque(pool.submit(decode, p) for p in range(min(len(paths), 2 * batch_size)))
            submitted = len(pending)
            positions, inputs = [], []
            while pending:
                position, array, error = pending.popleft().result()
                if submitted < len(paths):
                    pending.append(pool.submit(decode, submitted))
                    submitted += 1
                if error is not None and on_bad:
                    on_bad(position, error)
                elif error is None:
                    positions.append(position)
                    inputs.append(array)
                if on_done:
                    on_done(1)
                if len(inputs) == batch_size or (not pending and inputs):
                    yield positions, self.embed_arrays(np.stack(inputs))
                    positions, inputs = [], []
