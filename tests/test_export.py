"""The exported ONNX model computes what PyTorch computes, with the preprocessing of training."""

from dataclasses import asdict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from shitu.embed import Embedder  # noqa: E402
from shitu.gallery import read_gallery  # noqa: E402
from shitu.imageio import load_rgb, resize_square  # noqa: E402
from shitu.train.export import export_onnx  # noqa: E402
from shitu.train.augment import normalize  # noqa: E402
from shitu.train.config import TrainConfig  # noqa: E402
from shitu.train.batchnorm import recalibrate_batch_norm
from shitu.train.checkpoint import build_model  # noqa: E402
from tests.conftest import GROCERY, REPO  # noqa: E402


def real_photos(count: int = 6):
    """Demo gallery photos, plus shared grocery photos when they are present."""
    photos = [item.path for item in read_gallery(REPO / "tests" / "synthetic" / "demo")][:count]
    if (GROCERY / "train").is_dir():
        photos += sorted((GROCERY / "train").rglob("*.jpg"))[:count]
    return photos


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A randomly initialised network, batch norm calibrated on real photos, exported to ONNX.

    Calibration matters: with default statistics every photo maps to the same direction and a parity
    check would compare constants.
    """
    torch.manual_seed(0)
    config = TrainConfig(data="unused", export_size=224)
    model = build_model(config)
    photos = np.stack([resize_square(load_rgb(p, 224), 224) for p in real_photos(12)])
    recalibrate_batch_norm(model, [normalize(torch.from_numpy(photos))])
    folder = tmp_path_factory.mktemp("export")
    checkpoint = folder / "last.pt"
    torch.save({"config": asdict(config), "model": model.state_dict(), "ema": None, "epoch": 4}, checkpoint)
    return model, export_onnx(checkpoint, folder / "model.onnx")


@pytest.mark.slow
def test_onnxruntime_agrees_with_pytorch_on_real_photos(exported):
    model, path = exported
    embedder = Embedder(path)
    inputs = np.stack([embedder.preprocess(p) for p in real_photos()])
    onnx_vectors = embedder.embed_arrays(inputs)
    with torch.no_grad():
        torch_vectors = torch.nn.functional.normalize(model(torch.from_numpy(inputs))).numpy()
    cosine = (onnx_vectors * torch_vectors).sum(axis=1)
    assert cosine.min() >= 0.9999
    pairwise = onnx_vectors @ onnx_vectors.T
    assert pairwise[~np.eye(len(pairwise), dtype=bool)].mean() < 0.9  # distinct photos, distinct vectors


@pytest.mark.slow
def test_metadata_and_dynamic_batch(exported):
    _, path = exported
    embedder = Embedder(path)
    assert (embedder.info.embedding_size, embedder.info.input_size) == (512, 224)
    assert embedder.info.version == "epoch5"
    for batch in (1, 3):
        vectors = embedder.embed_arrays(np.zeros((batch, 3, 224, 224), np.float32))
        assert vectors.shape == (batch, 512)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_training_and_inference_preprocess_identically(exported):
    _, path = exported
    embedder = Embedder(path)
    photo = real_photos(1)[0]
    inference = embedder.preprocess(photo)
    training = normalize(torch.from_numpy(resize_square(load_rgb(photo, 224), 224)[None]))[0].numpy()
    assert np.abs(inference - training).max() < 1e-4


def test_export_refuses_a_non_checkpoint(tmp_path):
    from shitu.errors import ShituError

    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(ShituError, match="not a shitu training checkpoint"):
        export_onnx(bogus, tmp_path / "m.onnx")


@pytest.mark.slow
def test_teacher_exports_as_the_off_the_shelf_baseline(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    from typer.testing import CliRunner

    from cli import app
    from shitu.nn.teacher import Teacher

    runner = CliRunner()
    neither = runner.invoke(app, ["export", "--out", str(tmp_path / "x.onnx")])
    assert neither.exit_code == 1 and "either a CHECKPOINT or --teacher" in neither.stderr
    out = tmp_path / "lite0.onnx"
    done = runner.invoke(app, ["export", "--teacher", "efficientnet_lite0", "--input-size", "96", "--out", str(out)])
    assert done.exit_code == 0, done.output
    embedder = Embedder(out)
    assert (embedder.info.embedding_size, embedder.info.input_size) == (1280, 96)
    photos = real_photos(4)
    onnx_vectors = np.concatenate([v for _, v in embedder.embed_files(photos)])
    pixels = np.stack([resize_square(load_rgb(p, 96), 96) for p in photos])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(Teacher("efficientnet_lite0")(normalize(torch.from_numpy(pixels))))
    assert np.min(np.sum(onnx_vectors * expected.numpy(), axis=1)) > 0.999
