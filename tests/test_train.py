"""Training end to end on a tiny set: train, resume, export, and the embeddings got better."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from cli import app  # noqa: E402
from shitu.embed import Embedder  # noqa: E402
from shitu.gallery import read_gallery  # noqa: E402
from shitu.train.config import load_config  # noqa: E402
from tests.conftest import REPO  # noqa: E402

DEMO = REPO / "tests" / "synthetic" / "demo"
TINY = """
batch_classes = 4
batch_per_class = 3
resolutions = [[0, 64]]
teacher = ""
lr = 0.003
warmup_epochs = 0
ema_decay = 0.0
crop_scale_min = 0.6
bn_neck = true
threads = 1
"""  # one thread: the summation order changes what 8 tiny epochs learn (2 threads failed)


def separation(model_path) -> float:
    """Mean cosine to same-label images minus mean cosine to other labels, over the demo gallery."""
    embedder = Embedder(model_path)
    items = read_gallery(DEMO)
    vectors = np.concatenate([v for _, v in embedder.embed_files([i.path for i in items])])
    labels = np.array([i.label for i in items])
    similarity = vectors @ vectors.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    other = labels[:, None] != labels[None, :]
    return float(similarity[same].mean() - similarity[other].mean())


@pytest.mark.slow
def test_train_resume_export_and_improve(tmp_path):
    runner = CliRunner()
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    run = tmp_path / "run"
    first = runner.invoke(app, ["train", str(DEMO), "--out", str(run), "--config", str(config),
                                "--epochs", "0", "-q"])
    assert first.exit_code == 1 and "epochs must be >= 1" in first.stderr
    runner.invoke(app, ["train", str(DEMO), "--out", str(run), "--config", str(config), "--epochs", "1", "-q"])
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["epoch"] == 0 and (run / "config.toml").is_file()
    first_loss = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    resumed = runner.invoke(app, ["train", str(DEMO), "--out", str(run), "--config", str(config),
                                  "--epochs", "8", "--resume", "-q"])
    assert resumed.exit_code == 0, resumed.output
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == list(range(1, 9))
    assert log[-1]["loss"] < first_loss
    assert (run / "curves.png").stat().st_size > 0

    trained = tmp_path / "trained.onnx"
    exported = runner.invoke(app, ["export", str(run / "last.pt"), "--out", str(trained), "--input-size", "64"])
    assert exported.exit_code == 0, exported.output
    from shitu.train.export import export_onnx
    from shitu.train.loop import Trainer

    untrained = tmp_path / "untrained.onnx"  # the same seed's initialisation, before any step
    fresh = Trainer(load_config(config, {"data": str(DEMO), "epochs": 1}), tmp_path / "fresh")
    fresh.eval_model(64)  # the untrained network at its best: batch norm calibrated like the trained one
    fresh.save(fresh.checkpoint(-1, {}), "init.pt")
    export_onnx(tmp_path / "fresh" / "init.pt", untrained, input_size=64)
    assert separation(trained) > separation(untrained) + 0.05


@pytest.mark.slow
def test_val_every_skips_validation_but_still_checkpoints(tmp_path):
    val = tmp_path / "val.txt"  # leave-one-out recall@1 within the demo gallery
    val.write_text("".join(f"{item.path.relative_to(DEMO)}\t{item.label}\n" for item in read_gallery(DEMO)))
    config = tmp_path / "tiny.toml"
    config.write_text(TINY + f'val_list = "{val}"\nval_every = 2\n')
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(DEMO), "--out", str(run), "--config", str(config),
                                      "--epochs", "3", "-q"])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert ["val_recall@1" in row for row in log] == [False, True, True]  # epoch 2, then the last
    assert torch.load(run / "best.pt", weights_only=False)["epoch"] in (1, 2)
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 2


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["train", str(DEMO), "--out", str(tmp_path / "r"), "--teacher", "",
                                      "--resume"])
    assert result.exit_code == 1 and "nothing to resume" in result.stderr


def test_config_rejects_unknown_settings(tmp_path):
    from shitu.errors import ShituError

    config = tmp_path / "c.toml"
    config.write_text("epochz = 3\n")
    with pytest.raises(ShituError, match="unknown training setting"):
        load_config(config, {"data": "x"})


@pytest.mark.parametrize("path", sorted((REPO / "docs" / "configs").rglob("*.toml")), ids=lambda p: p.stem)
def test_documented_configs_still_load(path):
    """The configs docs/training.md reproduces runs with: a renamed or retyped setting breaks them."""
    config = load_config(path, {"data": "x"})
    assert config.epochs > 0 and config.lists


@pytest.mark.slow
def test_size_flag_sets_the_training_resolution(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.replace("[[0, 64]]", "[[0, 64], [1, 96]]"))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(DEMO), "--out", str(run), "--config", str(config),
                                      "--epochs", "2", "--size", "48", "-q"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["size"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [48, 48]
    assert "resolutions = [[0, 48]]" in (run / "config.toml").read_text()


@pytest.mark.parametrize("text, message", [
    ('epochs = "ten"\n', "epochs must be a whole number, got 'ten'"),
    ("lr = nan\n", "lr must be a finite number, got nan"),
    ("bn_neck = 1\n", "bn_neck must be true or false, got 1"),
    ('resolutions = [[0, "big"]]\n', "resolutions must be a list of [epoch, size] pairs, got [[0, 'big']]"),
])
def test_config_values_of_the_wrong_type_are_named(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = CliRunner().invoke(app, ["train", str(DEMO), "--out", str(tmp_path / "r"), "--config", str(config)])
    assert result.exit_code == 1 and result.stderr.splitlines() == [f"error: bad training config: {message}"]
    assert not (tmp_path / "r").exists()


def test_train_out_that_is_a_file_or_a_nan_rate_is_one_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a run folder")
    result = CliRunner().invoke(app, ["train", str(DEMO), "--out", str(blocker), "--teacher", "", "-q"])
    assert result.exit_code == 1 and result.stderr.startswith(f"error: --out {blocker} is a file") and "Traceback" not in result.output
    assert blocker.read_text() == "not a run folder"
    result = CliRunner().invoke(app, ["train", str(DEMO), "--out", str(tmp_path / "r"), "--lr", "nan"])
    assert result.exit_code == 1 and result.stderr.splitlines() == ["error: --lr must be a finite number, got nan"]
