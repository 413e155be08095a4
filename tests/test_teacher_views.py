"""Teacher features of fixed views: each (image, view) goes through the teacher once, then comes from the cache."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from shitu.train.augment import fixed_views  # noqa: E402
from shitu.train.config import TrainConfig  # noqa: E402
from shitu.train.loop import Trainer  # noqa: E402
from tests.conftest import REPO  # noqa: E402

DEMO = REPO / "tests" / "synthetic" / "demo"


def test_a_fixed_view_depends_only_on_its_key():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 60, 60, 3), dtype=np.uint8))
    config = TrainConfig(data="unused")
    first = fixed_views(images, [7, 8, 9], 48, config)
    assert torch.equal(first, fixed_views(images, [7, 8, 9], 48, config))
    assert not torch.equal(first[0], fixed_views(images, [10, 8, 9], 48, config)[0])


def test_teacher_runs_once_per_image_and_view(tmp_path):
    config = TrainConfig(data=str(DEMO), batch_classes=4, batch_per_class=3, resolutions=[[0, 48]],
                         teacher="efficientnet_lite0", teacher_views=2, ema_decay=0.0).validate()
    trainer = Trainer(config, tmp_path / "run", device="cpu")
    seen = []
    trainer.teacher.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    images = trainer.cache(trainer.items, 60, "train")
    batch = np.arange(12)
    for step in range(6):
        trainer.train_step(images[batch], torch.from_numpy(trainer.labels[batch]), 48, 0, 1e-3, batch)
    assert 12 <= sum(seen) <= 24  # 6 steps x 12 images would be 72 without the cache
    features, filled = trainer.teacher_cache[48]
    view = int(np.flatnonzero(filled[5])[0])
    fresh = trainer.teacher(fixed_views(images[5:6], [trainer.view_key(5, view)], 48, config))
    assert torch.allclose(features[5, view], fresh[0], atol=1e-4)
