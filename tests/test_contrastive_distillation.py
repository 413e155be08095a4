"""Contrastive distillation (distill_kind = contrastive): each image must pick out its own teacher features."""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from shitu.nn.losses import contrastive_distillation, cosine_distillation  # noqa: E402
from shitu.train.config import TrainConfig  # noqa: E402
from tests.test_from_onnx import trainer  # noqa: E402


def test_a_collapsed_student_scores_chance_however_well_it_matches_the_main_direction():
    torch.manual_seed(0)
    teacher = torch.randn(16, 32) * torch.linspace(0.1, 1.0, 32)  # variance spread over many directions
    teacher[:, 0] += torch.linspace(-20.0, 20.0, 16)  # plus one direction far stronger than the rest
    collapsed = torch.zeros(16, 32)
    collapsed[:, 0] = teacher[:, 0]  # only the strong direction: what run 12's student had learnt
    # The cosine term is already content with it; telling the 16 images apart needs the other directions.
    assert cosine_distillation(collapsed - collapsed.mean(0), teacher - teacher.mean(0)).item() < 0.2
    assert contrastive_distillation(collapsed, teacher).item() > contrastive_distillation(teacher, teacher).item() + 1.0
    # A student that maps every image to one point cannot tell any apart: exactly log(batch).
    assert contrastive_distillation(torch.ones(16, 32), teacher).item() == pytest.approx(math.log(16), rel=1e-5)


def test_the_student_that_is_the_teacher_scores_lowest():
    torch.manual_seed(1)
    teacher = torch.randn(12, 20)
    best = contrastive_distillation(teacher.clone(), teacher).item()
    assert best < 0.05
    assert contrastive_distillation(teacher[torch.randperm(12)], teacher).item() > best + 1.0


def test_each_kind_has_its_own_default_temperature():
    assert TrainConfig(data="d", distill_kind="contrastive").temperature() == 0.1
    assert TrainConfig(data="d", distill_kind="logits").temperature() == 1.0
    assert TrainConfig(data="d", distill_kind="contrastive", distill_temperature=0.05).temperature() == 0.05


@pytest.mark.slow
def test_a_cosine_runs_projection_starts_a_contrastive_run(tmp_path):
    (tmp_path / "cosine").mkdir()
    cosine = trainer(tmp_path / "cosine", teacher="efficientnet_lite0", distill_weight=1.0)
    cosine.save(cosine.checkpoint(0, {}), "last.pt")
    run = trainer(tmp_path, teacher="efficientnet_lite0", distill_weight=1.0, distill_kind="contrastive",
                  init_from=str(cosine.run_dir / "last.pt"))
    # both project onto the teacher's features, so the fitted projection carries over instead of a fresh fit
    assert torch.equal(run.projection.weight, cosine.projection.weight)
    assert run.fit()["distill"] > 0
