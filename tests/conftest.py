"""Shared fixtures: a hand-built ONNX model with predictable embeddings, image makers, real data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shitu.embed import set_shitu_metadata
from shitu.progress import Reporter

REPO = Path(__file__).resolve().parents[1]
GROCERY = REPO.parent / "shared" / "data" / "grocery"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def write_mean_colour_model(path: Path, input_size: int = 32) -> Path:
    """An ONNX model whose embedding is the L2-normalised mean of each normalised channel.

    A solid-colour image therefore embeds to a vector anyone can compute by hand, which lets tests
    check search, thresholds and metrics against plain arithmetic.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("LpNormalization", ["flat"], ["embeddings"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes, "mean_colour",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, input_size, input_size])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = {"shitu.model_name": "mean-colour", "shitu.model_version": "test",
                "shitu.embedding_size": "3", "shitu.input_size": str(input_size),
                "shitu.mean": json.dumps(MEAN), "shitu.std": json.dumps(STD)}
    set_shitu_metadata(model, metadata)
    onnx.save(model, str(path))
    return path


def colour_embedding(rgb) -> np.ndarray:
    """What the mean-colour model returns for a solid image of colour ``rgb`` (0-255)."""
    v = (np.array(rgb, dtype=np.float64) / 255.0 - MEAN) / STD
    return v / np.linalg.norm(v)


def solid(path: Path, rgb, size=(40, 30), mode: str = "RGB", fmt: str | None = None) -> Path:
    """Write a solid-colour image (any Pillow mode) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(rgb)).convert(mode).save(path, format=fmt)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return write_mean_colour_model(tmp_path_factory.mktemp("model") / "mean_colour.onnx")


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> Path:
    """The same network at another input size: a different model as far as an index is concerned."""
    return write_mean_colour_model(tmp_path_factory.mktemp("model2") / "mean_colour_24.onnx", 24)


@pytest.fixture(scope="session")
def grocery() -> Path:
    if not (GROCERY / "train.txt").is_file():
        pytest.skip(f"shared grocery photos not found at {GROCERY} (see shared/data/grocery/README.md)")
    return GROCERY


# Colours far apart in embedding space, two shades each: a gallery with a known answer.
PALETTE = {
    "red apple": [(220, 30, 30), (200, 40, 20)],
    "Crème Fraîche": [(240, 240, 235), (230, 235, 240)],
    "blue can": [(20, 40, 220), (30, 60, 200)],
}


@pytest.fixture
def colour_gallery(tmp_path) -> Path:
    """A gallery folder of solid-colour photos: labels with spaces and accents, a nested folder."""
    root = tmp_path / "gallery"
    for label, shades in PALETTE.items():
        for n, rgb in enumerate(shades):
            sub = root / label / ("deeper" if n else "")
            solid(sub / f"shot {n}.jpg", rgb, fmt="PNG")
    return root


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """A training test may set PyTorch's thread count (``threads`` in its config); the next test gets
    the count back."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None
    yield
    if threads is not None:
        torch.set_num_threads(threads)


class Recorder(Reporter):
    """A reporter that keeps what a library call warned about, for a test to look at."""

    def __init__(self):
        self.warnings = []

    def warn(self, message: str):
        self.warnings.append(message)


@pytest.fixture(params=["folder", "milvus-lite"])
def place(request, tmp_path) -> list[str]:
    """Where a behaviour test keeps its index, as CLI arguments: an index folder (FAISS + SQLite) or a
    Milvus Lite gallery (``--store milvus-lite:...``), so the same test runs on both stores."""
    if request.param == "folder":
        return ["--index", str(tmp_path / "index")]
    import importlib.util

    if importlib.util.find_spec("milvus_lite") is None or importlib.util.find_spec("pymilvus") is None:
        pytest.skip("milvus-lite and pymilvus are not installed (no milvus-lite wheel for this platform?): "
                    "pip install 'shitu[milvus]'")
    return ["--store", f"milvus-lite:{tmp_path / 'gallery.db'}"]


def stored_rows(place: list[str]) -> dict:
    """{path: (id, label, sha256)} of an index at ``place``, read through the Index facade."""
    from shitu.index import Index

    return {r.path: (r.id, r.label, r.sha256) for r in Index(store=place[1]).images(limit=10**9)}
