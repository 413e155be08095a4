"""A teacher fine-tuned on the products: trained with --backbone efficientnet_lite0, then used by --teacher."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from shitu.errors import ShituError  # noqa: E402
from shitu.train.checkpoint import load_checkpoint_model
from shitu.train.export import export_onnx  # noqa: E402
from shitu.train.augment import normalize  # noqa: E402
from tests.test_from_onnx import trainer  # noqa: E402

FROZEN = 3


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """Two epochs of an EfficientNet-Lite0 teacher on the demo photos, with its first blocks frozen,
    and its weights before training."""
    folder = tmp_path_factory.mktemp("teacher")
    run = trainer(folder, backbone="efficientnet_lite0", frozen_blocks=FROZEN, epochs=2)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.fit()
    return run, before


@pytest.mark.slow
def test_frozen_blocks_keep_imagenet_weights_and_statistics(teacher_run):
    run, before = teacher_run
    after = run.model.state_dict()
    frozen = [k for k in after if k.startswith(("backbone.network._conv_stem", "backbone.network._bn0"))
              or any(k.startswith(f"backbone.network._blocks.{i}.") for i in range(FROZEN))]
    trained = [k for k in after if k.startswith(f"backbone.network._blocks.{FROZEN}.") and "weight" in k]
    assert any("running_mean" in k for k in frozen) and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # weights and batch-norm statistics
    assert all(not torch.equal(before[k], after[k]) for k in trained)


@pytest.mark.slow
def test_a_teacher_run_exports_and_runs_in_onnxruntime(tmp_path, teacher_run):
    import onnxruntime as ort

    checkpoint = teacher_run[0].run_dir / "last.pt"
    out = export_onnx(checkpoint, tmp_path / "teacher.onnx", input_size=64)
    session = ort.InferenceSession(str(out))
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["shitu.model_name"] == "efficientnet_lite0_shitu" and "shitu.scale" not in meta
    images = normalize(teacher_run[0].cache(teacher_run[0].items, 64, "calibration")[:8])
    model, _, _ = load_checkpoint_model(checkpoint)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(images)).numpy()
    got = session.run(None, {"images": images.numpy()})[0]
    assert (expected * got).sum(axis=1).min() > 0.9999


@pytest.mark.slow
def test_a_student_distills_from_the_fine_tuned_teacher(tmp_path, teacher_run):
    checkpoint = teacher_run[0].run_dir / "last.pt"
    (tmp_path / "earlier").mkdir()
    earlier = trainer(tmp_path / "earlier", teacher="efficientnet_lite0", distill_weight=1.0)
    earlier.save(earlier.checkpoint(0, {}), "last.pt")  # its projection maps onto 1280-d ImageNet features
    student = trainer(tmp_path, teacher=str(checkpoint), distill_weight=1.0,
                      init_from=str(earlier.run_dir / "last.pt"))
    assert student.teacher.feature_size == 512 and student.projection.out_features == 512
    images = normalize(student.cache(student.items, 64, "calibration")[:8])
    fine_tuned, _, _ = load_checkpoint_model(checkpoint)
    with torch.no_grad():
        assert torch.allclose(student.teacher(images), fine_tuned(images), atol=1e-5)
    assert student.fit()["distill"] > 0


def test_bad_teachers_and_backbones_are_refused(tmp_path):
    plain = trainer(tmp_path)  # a PP-LCNet run cannot teach
    plain.save(plain.checkpoint(0, {}), "last.pt")
    with pytest.raises(ShituError, match="a teacher must be one of"):
        trainer(tmp_path, teacher=str(plain.run_dir / "last.pt"), distill_weight=1.0)
    with pytest.raises(ShituError, match="unknown teacher"):
        trainer(tmp_path, teacher="resnet50", distill_weight=1.0)
    with pytest.raises(ShituError, match="backbone must be one of"):
        trainer(tmp_path, backbone="resnet50")
    with pytest.raises(ShituError, match="frozen_blocks needs an efficientnet backbone"):
        trainer(tmp_path, frozen_blocks=2)
    with pytest.raises(ShituError, match="init_from an ONNX model needs backbone = pplcnet"):
        trainer(tmp_path, backbone="efficientnet_lite0", init_from="fp32")
