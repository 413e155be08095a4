"""Distilling the teacher's ImageNet class distribution (distill_kind = logits) instead of its features."""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from shitu.errors import ShituError  # noqa: E402
from shitu.nn.losses import logit_distillation  # noqa: E402
from shitu.nn.teacher import LiteEmbeddingNet, Teacher  # noqa: E402
from shitu.train.augment import normalize  # noqa: E402
from tests.test_from_onnx import trainer  # noqa: E402


def test_logit_distillation_is_the_kl_divergence_and_zero_only_at_the_teacher():
    teacher = torch.tensor([[2.0, 0.0]])
    p = torch.softmax(teacher, 1)[0]
    q = torch.softmax(torch.tensor([0.0, 0.0]), 0)
    expected = float((p * (p / q).log()).sum())
    assert logit_distillation(torch.zeros(1, 2), teacher).item() == pytest.approx(expected, rel=1e-5)
    assert logit_distillation(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    # T^2 scaling: at a high temperature the loss keeps the size of T^2 * KL of the softened distributions
    soft = logit_distillation(torch.zeros(1, 2), teacher, temperature=4.0).item()
    p4 = torch.softmax(teacher / 4.0, 1)[0]
    assert soft == pytest.approx(16.0 * float((p4 * (p4 / q).log()).sum()), rel=1e-5)
    assert not math.isnan(soft)


@pytest.mark.slow
def test_the_logits_teacher_classifies_as_the_imagenet_network_does(tmp_path):
    run = trainer(tmp_path, teacher="efficientnet_lite0", distill_weight=1.0, distill_kind="logits")
    assert run.teacher.feature_size == 1000 and run.projection.out_features == 1000
    images = normalize(run.cache(run.items, 64, "calibration")[:4])
    lite = run.teacher.network.network
    unit = images * run.teacher.network.std + run.teacher.network.mean
    with torch.no_grad():
        assert torch.allclose(run.teacher(images), lite(unit * 2.0 - 1.0), atol=1e-4)
    assert run.fit()["distill"] > 0


@pytest.mark.slow
def test_a_feature_projection_is_not_loaded_into_a_logits_run(tmp_path):
    (tmp_path / "features").mkdir()
    features = trainer(tmp_path / "features", teacher="efficientnet_lite0", distill_weight=1.0)
    features.save(features.checkpoint(0, {}), "last.pt")  # its projection maps onto 1280-d features
    logits = trainer(tmp_path, teacher="efficientnet_lite0", distill_weight=1.0, distill_kind="logits",
                     init_from=str(features.run_dir / "last.pt"))
    assert logits.projection.out_features == 1000  # fitted afresh to the logits, not a shape error


def test_a_fine_tuned_teacher_has_no_logits_to_distill():
    with pytest.raises(ShituError, match="needs an ImageNet teacher"):
        Teacher(LiteEmbeddingNet("efficientnet_lite0"), logits=True)
