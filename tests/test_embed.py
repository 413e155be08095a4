"""The streaming embedder: every file once, in order, bad files reported, vectors as computed by hand."""

import numpy as np
import pytest

from shitu.embed import Embedder
from shitu.errors import ShituError
from tests.conftest import colour_embedding, solid


def test_stream_covers_every_file_in_order(tmp_path, tiny_model):
    colours = [(i * 3 % 256, 255 - i * 2, (i * 7) % 256) for i in range(70)]
    paths = [solid(tmp_path / f"{i:03d}.png", rgb) for i, rgb in enumerate(colours)]
    (tmp_path / "009.png").write_bytes(b"broken")
    bad, done = [], []
    batches = list(Embedder(tiny_model).embed_files(paths, batch_size=8, on_bad=lambda p, r: bad.append(p),
                                                    on_done=done.append))
    positions = [p for chunk, _ in batches for p in chunk]
    assert positions == [p for p in range(70) if p != 9] and bad == [9] and len(done) == 70
    assert all(len(chunk) <= 8 for chunk, _ in batches)
    vectors = np.concatenate([v for _, v in batches])
    expected = np.stack([colour_embedding(colours[p]) for p in positions])
    assert np.abs(vectors - expected).max() < 2e-2  # solid colours: only resampling noise


def test_model_without_shitu_metadata_is_refused(tmp_path, tiny_model):
    import onnx

    model = onnx.load(str(tiny_model))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ShituError, match="not a shitu model"):
        Embedder(bare)


def test_file_that_is_not_a_model(tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_text("no")
    with pytest.raises(ShituError, match="cannot load model"):
        Embedder(fake)
