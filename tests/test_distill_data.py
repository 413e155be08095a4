"""Training with distillation-only photos: the split, the mixed batches, validation and what export records."""

import json

import numpy as np
import pytest
from PIL import Image

from shitu.distillset import main as distillset_main
from shitu.gallery import read_gallery
from tests.conftest import REPO

DEMO = REPO / "tests" / "synthetic" / "demo"


def photo_tree(root, folders: dict[str, int]):
    """``count`` noise photos in each named folder (nested names allowed)."""
    rng = np.random.default_rng(0)
    for folder, count in folders.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / folder / f"{i}.jpg")
    return root


def read_pairs(path):
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()]


def test_split_keeps_validation_out_of_training_and_small_folders_out_of_validation(tmp_path):
    root = photo_tree(tmp_path / "photos", {"a/cats": 5, "a/dogs": 5, "b/tiny": 2})
    distillset_main([str(root), str(tmp_path / "lists"), "--val-per-folder", "2", "--min-folder", "4"])
    train, val = read_pairs(tmp_path / "lists" / "train.txt"), read_pairs(tmp_path / "lists" / "val.txt")
    assert len(train) + len(val) == 12 and not {p for p, _ in train} & {p for p, _ in val}
    assert sorted(label for _, label in val) == ["a/cats", "a/cats", "a/dogs", "a/dogs"]
    assert {label for _, label in train} == {"a/cats", "a/dogs", "b/tiny"}
    assert len(read_gallery(root, tmp_path / "lists" / "val.txt")) == 4  # a list the gallery reader takes


torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("efficientnet_lite_pytorch")

from shitu.errors import ShituError  # noqa: E402
from shitu.train.config import TrainConfig  # noqa: E402
from shitu.train.loop import Trainer  # noqa: E402


@pytest.fixture
def photos(tmp_path):
    root = photo_tree(tmp_path / "photos", {"x/one": 6, "x/two": 6})
    distillset_main([str(root), str(tmp_path / "lists"), "--val-per-folder", "2", "--min-folder", "4"])
    return root, tmp_path / "lists"


def distill_config(root, lists, **changes) -> TrainConfig:
    values = dict(data=str(DEMO), batch_classes=4, batch_per_class=3, resolutions=[[0, 48]],
                  teacher="efficientnet_lite0", ema_decay=0.0, distill_data=str(root),
                  distill_lists=[str(lists / "train.txt")], distill_val_list=str(lists / "val.txt"),
                  distill_batch=5, mix="both", epochs=1)
    return TrainConfig(**{**values, **changes}).validate()


def one_training_step(trainer, cache_side: int):
    """One 48 px step on 12 products + 5 natural photos: (loss, parts, student input, teacher input)."""
    student_inputs, teacher_inputs = [], []
    trainer.model.register_forward_hook(lambda m, inputs, out: student_inputs.append(inputs[0].clone()))
    trainer.teacher.register_forward_hook(lambda m, inputs, out: teacher_inputs.append(inputs[0].clone()))
    images = trainer.cache(trainer.items, cache_side, "train")
    distill = trainer.cache(trainer.distill_items, cache_side, "distill")
    batch = np.arange(12)
    loss, parts = trainer.train_step(images[batch], torch.from_numpy(trainer.labels[batch]), 48, 0, 1e-3,
                                     batch, distill[:5])
    return loss, parts, student_inputs[0], teacher_inputs[0]


def test_teacher_sees_exactly_the_mixed_batch_the_student_sees(photos, tmp_path):
    trainer = Trainer(distill_config(*photos), tmp_path / "run", device="cpu")
    loss, parts, student, teacher = one_training_step(trainer, 60)
    assert student.shape[0] == 17 and torch.equal(student, teacher)
    assert {"arc", "triplet", "distill"} <= parts.keys() and torch.isfinite(loss)


def test_with_teacher_size_the_student_sees_the_teachers_view_downscaled(photos, tmp_path):
    import torch.nn.functional as F

    trainer = Trainer(distill_config(*photos, teacher_size=64), tmp_path / "run", device="cpu")
    _, _, student, teacher = one_training_step(trainer, 80)
    assert student.shape == (17, 3, 48, 48) and teacher.shape == (17, 3, 64, 64)
    expected = F.interpolate(teacher, size=(48, 48), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(student, expected, atol=1e-5)


def test_a_run_validates_on_natural_photos_and_export_records_its_labels(photos, tmp_path):
    import onnx

    from shitu.train.export import export_onnx

    trainer = Trainer(distill_config(*photos), tmp_path / "run", device="cpu")
    trainer.fit()
    log = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= log["distill_val_recall@1"] <= 1.0
    assert log["images_per_second"] > 0 and (tmp_path / "run" / "best.pt").is_file()
    model = export_onnx(tmp_path / "run" / "last.pt", tmp_path / "model.onnx")
    metadata = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert json.loads(metadata["shitu.training_labels"]) == sorted({item.label for item in read_gallery(DEMO)})


def test_validation_photos_that_are_also_trained_on_are_refused(photos, tmp_path):
    root, lists = photos
    with pytest.raises(ShituError, match="shares photos"):
        Trainer(distill_config(root, lists, distill_lists=[]), tmp_path / "run", device="cpu")


@pytest.mark.parametrize("changes, message", [
    ({"distill_data": ""}, "need distill_data"),
    ({"teacher": ""}, "needs a teacher"),
    ({"distill_batch": 0, "distill_val_list": ""}, "mix mixes the distillation photos"),
    ({"mix": "blend"}, "mix must be one of"),
    ({"teacher_size": 16}, "teacher_size must be 0 or >= 32"),
    ({"teacher_size": 160, "teacher": "", "distill_batch": 0, "mix": "off"}, "teacher_size needs a teacher"),
])
def test_distillation_settings_that_cannot_work_are_refused(photos, changes, message):
    with pytest.raises(ShituError, match=message):
        distill_config(*photos, **changes)
