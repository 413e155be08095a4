"""Training can start from an exported ONNX model: the shipped one, or any `shitu export` output."""

import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import torch.nn.functional as F  # noqa: E402

from shitu.errors import ShituError  # noqa: E402
from shitu.train.export import Normalized, write_onnx  # noqa: E402
from shitu.nn.losses import cosine_distillation  # noqa: E402
from shitu.train.augment import normalize  # noqa: E402
from shitu.train.config import TrainConfig, load_config  # noqa: E402
from shitu.train.batchnorm import recalibrate_batch_norm
from shitu.train.checkpoint import build_model
from shitu.train.loop import Trainer  # noqa: E402
from tests.conftest import write_mean_colour_model  # noqa: E402
from tests.test_train import DEMO, TINY  # noqa: E402


def trainer(tmp_path, **overrides) -> Trainer:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    return Trainer(load_config(config, {"data": str(DEMO), "epochs": 1, **overrides}), tmp_path / "run",
                   device="cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> str:
    """A random network with batch norm calibrated on the demo photos (so photos map apart), as ONNX."""
    folder = tmp_path_factory.mktemp("from_onnx")
    reference = trainer(folder)  # only for its decoded demo photos
    torch.manual_seed(1)
    model = build_model(TrainConfig(data="unused"))
    recalibrate_batch_norm(model, [normalize(reference.cache(reference.items, 64, "calibration"))])
    return str(write_onnx(Normalized(model).eval(), folder / "model.onnx", 64, {"shitu.input_size": "64"}))


@pytest.mark.slow
def test_the_loaded_network_computes_what_the_onnx_model_computes(tmp_path, exported):
    run = trainer(tmp_path, init_from=exported)
    images = normalize(run.cache(run.items, 64, "calibration"))
    with torch.no_grad():
        torch_vectors = F.normalize(run.model.eval()(images)).numpy()
    onnx_vectors = ort.InferenceSession(exported).run(None, {"images": images.numpy()})[0]
    assert (torch_vectors * onnx_vectors).sum(axis=1).min() > 0.9999
    # In training mode (batch statistics, dropout off) it stays close: batch norms were re-scaled.
    run.model.train()
    run.model.backbone.dropout.p = 0.0
    with torch.no_grad():
        train_vectors = F.normalize(run.model(images)).numpy()
    assert (train_vectors * onnx_vectors).sum(axis=1).mean() > 0.95


@pytest.mark.slow
def test_head_and_projection_are_fitted_to_the_loaded_network(tmp_path, exported):
    run = trainer(tmp_path, init_from=exported, teacher="efficientnet_lite0")
    images = normalize(run.cache(run.items, 64, "calibration"))
    with torch.no_grad():
        embeddings = run.model.eval()(images)
        labels = torch.from_numpy(run.labels)
        means = torch.stack([F.normalize(embeddings[labels == c]).mean(0) for c in range(len(run.label_names))])
        assert torch.allclose(run.head.weight, F.normalize(means), atol=1e-5)  # imprinted, not random
        target = run.teacher(images)
        fitted = run.projection(embeddings)
        random = torch.nn.Linear(*run.projection.weight.shape[::-1])(embeddings)
        fitted_loss = cosine_distillation(fitted - fitted.mean(0), target - target.mean(0))
        random_loss = cosine_distillation(random - random.mean(0), target - target.mean(0))
    assert fitted_loss < random_loss - 0.2


def test_models_that_cannot_be_trained_from_are_refused(tmp_path):
    with pytest.raises(ShituError, match="quantized"):
        trainer(tmp_path, init_from="int8")
    with pytest.raises(ShituError, match="network differs"):
        trainer(tmp_path, init_from=str(write_mean_colour_model(tmp_path / "colour.onnx")))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ShituError, match="not an ONNX model"):
        trainer(tmp_path, init_from=str(tmp_path / "junk.onnx"))
    with pytest.raises(ShituError, match="model not found"):
        trainer(tmp_path, init_from=str(tmp_path / "missing.onnx"))
