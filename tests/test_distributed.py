"""Training on two processes (torchrun, DDP over gloo), mixed precision, and starting from a checkpoint."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from shitu.errors import ShituError  # noqa: E402
from shitu.train.config import load_config  # noqa: E402
from shitu.train.distributed import World, check_batch, shard  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.test_train import DEMO, TINY  # noqa: E402


def test_each_rank_gets_whole_distinct_classes():
    batch = np.array([10, 11, 12, 20, 21, 22, 30, 31, 32, 40, 41, 42])  # 4 classes x 3 images
    first, second = shard(batch, 3, World(0, 2)), shard(batch, 3, World(1, 2))
    assert first.tolist() == [10, 11, 12, 30, 31, 32]
    assert second.tolist() == [20, 21, 22, 40, 41, 42]
    assert shard(batch, 3, World()).tolist() == batch.tolist()


def test_too_few_classes_per_rank_is_refused():
    check_batch(4, World(0, 2))
    with pytest.raises(ShituError, match="at least 2 classes"):
        check_batch(3, World(0, 2))


@pytest.mark.slow
def test_torchrun_two_processes_train_in_step(tmp_path):
    """Two gloo ranks train 2 epochs: one log, one checkpoint, and weights that stayed identical."""
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(REPO / "cli.py"), "train", str(DEMO), "--out", str(run), "--config", str(config),
         "--epochs", "2", "-q"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2]  # rank 0 alone writes
    assert all(row["processes"] == 2 and math.isfinite(row["loss"]) for row in log)
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 1
    assert "weights differ" not in result.stderr


def trainer(tmp_path, name, **overrides):
    from shitu.train.loop import Trainer

    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    return Trainer(load_config(config, {"data": str(DEMO), "epochs": 1, **overrides}), tmp_path / name,
                   device="cpu")


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_a_gpu(tmp_path):
    run = trainer(tmp_path, "bf16", amp="bf16")
    metrics = run.fit()
    assert math.isfinite(metrics["loss"])
    weights = torch.load(tmp_path / "bf16" / "last.pt", weights_only=False)["model"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in weights.values())  # stored in full precision
    with pytest.raises(ShituError, match="fp16.*needs a GPU"):
        trainer(tmp_path, "fp16", amp="fp16")


def test_init_from_starts_from_another_runs_weights(tmp_path):
    first = trainer(tmp_path, "first")
    first.save(first.checkpoint(0, {}), "last.pt")
    checkpoint = tmp_path / "first" / "last.pt"
    second = trainer(tmp_path, "second", init_from=str(checkpoint), seed=7)
    expected = torch.load(checkpoint, weights_only=False)["model"]
    assert all(torch.equal(second.model.state_dict()[k], v) for k, v in expected.items())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ShituError, match="cannot start from"):
        trainer(tmp_path, "third", init_from=str(tmp_path / "junk.pt"))
