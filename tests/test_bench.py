"""Every bench script runs at its tiniest setting (``--quick``), prints a table and writes its JSON.

These prove the scripts work, not how fast anything is: the figures come from running them for real.
"""

import importlib.util
import json
import subprocess
import sys
from dataclasses import asdict

import pytest

from tests.conftest import REPO


def bench(script: str, tmp_path, *args) -> tuple[str, dict]:
    """Run ``bench/<script>.py --quick``; returns its stdout and the JSON it wrote."""
    out = tmp_path / f"{script}.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / f"{script}.py"), "--quick", "--json", str(out),
                             *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "|---|" in result.stdout  # a Markdown table
    data = json.loads(out.read_text())
    assert data["bench"] == script and data["machine"]["cores"] >= 1
    return result.stdout, data


@pytest.fixture(scope="module")
def random_lcnet(tmp_path_factory):
    """A random PP-LCNet-2.5x exported at 64 px: a shitu model whose MACs the latency bench can count."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from shitu.train.export import export_onnx
    from shitu.train.config import TrainConfig
    from shitu.train.checkpoint import build_model

    torch.manual_seed(0)
    config = TrainConfig(data="unused", export_size=64)
    folder = tmp_path_factory.mktemp("lcnet")
    torch.save({"config": asdict(config), "model": build_model(config).eval().state_dict(), "ema": None,
                "epoch": 0}, folder / "last.pt")
    return export_onnx(folder / "last.pt", folder / "model.onnx")


@pytest.mark.slow
def test_latency(random_lcnet, tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    stdout, data = bench("latency", tmp_path, "--model", random_lcnet, "--int8", random_lcnet,
                         "--cache", tmp_path / "cache")
    models = {r["model"] for r in data["results"]}
    assert models == {"PPLCNet_x2_5_shitu fp32", "PPLCNet_x2_5_shitu int8", "EfficientNet-Lite0", "ResNet50-512"}
    assert {(r["batch"], r["threads"]) for r in data["results"]} == {(1, 1), (2, 1), (1, 2), (2, 2)}
    # quick: 2 timed calls at batch 1 and 1 at batch 2, every peer in child processes
    assert all(r["seconds_per_call"]["n"] == (2 if r["batch"] == 1 else 1) for r in data["results"])
    assert all(r["macs"] > 0 and r["gflops"] > 0 for r in data["results"])
    assert "% of peak" in stdout


def test_build_throughput(tiny_model, tmp_path):
    _, data = bench("build_throughput", tmp_path, "--model", tiny_model)
    results = data["results"]
    assert "model only (batch 32)" in results and "build: phone JPEGs 640x480" in results
    assert all(r["images_per_s"]["median"] > 0 for r in results.values())


@pytest.mark.slow
def test_query_startup(tiny_model, tmp_path):
    _, data = bench("query_startup", tmp_path, "--model", tiny_model)
    assert data["index_type"] == "Flat"
    assert set(data["new_process_seconds"]) == {"python -c pass", "python -c 'import libraries'",
                                                "python cli.py query"}
    assert data["loaded_seconds"]["Recognizer.query([photo])"]["median"] > 0


def test_search(tmp_path):
    _, data = bench("search", tmp_path)
    rows = {(r["factory"], r["search"]): r for r in data["results"]}
    assert rows[("Flat", "exact")]["recall_at_1"] == 1.0
    faiss = {factory for factory, _ in rows if not factory.startswith("Milvus")}
    assert faiss == {"Flat", "HNSW32", "IVF126,Flat", "IVF126,PQ8x4"}
    assert all(0 <= r["recall_at_1"] <= 1 and r["bytes"] > 0 for r in rows.values())
    if importlib.util.find_spec("milvus_lite") and importlib.util.find_spec("pymilvus"):
        lite = {factory for factory, _ in rows} - faiss
        assert lite == {"Milvus Lite FLAT", "Milvus Lite HNSW(M=8,efConstruction=40)"}
        assert rows[("Milvus Lite FLAT", "exact")]["recall_at_1"] == 1.0
        assert all(r["rows_per_second"] > 0 and r["disk_bytes"] > r["size"] * 2048 for r in rows.values()
                   if r["peer"] == "Milvus Lite")


@pytest.mark.slow
def test_train_speed(tmp_path):
    pytest.importorskip("torch")
    _, data = bench("train_speed", tmp_path)
    results = data["results"]
    assert results[0]["peer"] == "glibc malloc"  # jemalloc and tcmalloc come next where they are installed
    allocators = [r for r in results if not r["teacher_views"] and not r["distill"]]
    assert all(r["library"] for r in allocators[1:])
    cached, recipe = results[-2], results[-1]  # quick: the last allocator with 2 cached views, then the recipe
    assert cached["teacher_views"] == 2 and cached["library"] == allocators[-1]["library"]
    assert recipe["distill"] and recipe["size"] == 40 and recipe["batch"] == 16  # 8 products + 8 photos
    # quick: one worker per peer, 2 timed steps of 2 classes x 4 photos
    assert all(len(r["seconds_per_step"]) == 2 for r in results)
    assert all(r["batch"] == 8 for r in results[:-1])
    assert all(r["images_per_second"]["median"] > 0 and r["minor_faults_per_step"] > 0 for r in results)
    assert all(r["flops_per_image"] > 0 for r in results)
    assert all(r["share_of_peak"] is None or 0 < r["share_of_peak"] < 1 for r in results)


@pytest.mark.slow
def test_recipe_ablation(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    _, data = bench("recipe_ablation", tmp_path)
    results = {r["variant"]: r for r in data["results"]}
    reference = "efficientnet_lite0 ImageNet features, untrained, 48 px"
    # quick: the demo gallery, 4 of its 12 classes held out, two variants and the untrained reference
    assert list(results) == ["recipe", "no distillation", reference]
    assert len(data["held_out_classes"]) == 4
    assert results["no distillation"]["changes"] == {"teacher": "", "metric_start_epoch": 0}
    assert all(0 <= r["seen"] <= 1 and 0 <= r["held out"] <= 1 for r in results.values())
    # leave-one-out excludes each photo itself (else every figure is 1.0); ImageNet features separate
    # the demo products far above chance (2 of 23 neighbours share a photo's label)
    assert results["recipe"]["seen"] < 1 and results[reference]["seen"] > 0.5
    assert results["recipe"]["train_seconds"] > 0


def test_open_set(tmp_path):
    _, data = bench("open_set", tmp_path)
    # quick: the demo gallery without its last 3 products, which are the unknowns; the shipped model
    (row,) = data["results"]
    assert row["model"] == "fp32" and row["unknowns"] == "held-out groceries"
    assert data["photos"] == {"gallery": 21, "known": 21, "held-out groceries": 9}
    assert row["known_right"] + row["known_wrong"] + row["known_rejected"] == pytest.approx(1)
    assert 0 <= row["unknown_rejected"] <= 1 and 0 < row["auc"] <= row["recall@1"] + 1e-9


def test_serve_load(tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'shitu[serve]'")
    stdout, data = bench("serve_load", tmp_path)
    load, after = data["load"], data["after"]
    # quick: 2 clients, 16 queries and a write after every 3 (adds, and removes of what they added)
    assert (load["clients"], load["queries"], load["writes"]) == (2, 16, 5)
    assert load["errors"] == 0 and load["adds_acknowledged"] >= 1 and load["removes_acknowledged"] >= 1
    assert after["check_ok"] and after["lost"] == after["unexpected"] == after["changed"] == []
    assert after["stored_rows"] == 30 + load["adds_acknowledged"] - load["removes_acknowledged"]
    assert set(data["one_at_a_time"]) == {"HTTP POST /v1/query (1 client)", "Index.query in process"}
    assert "acknowledged writes lost" in stdout


@pytest.mark.slow
def test_student_fit(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    from tests.test_from_onnx import trainer
    from tests.test_train import DEMO

    distilled = trainer(tmp_path, teacher="efficientnet_lite0", distill_weight=1.0)
    distilled.save(distilled.checkpoint(0, {}), "last.pt")
    _, data = bench("student_fit", tmp_path, distilled.run_dir / "last.pt", "--products", DEMO, "--natural", DEMO)
    [result] = data["results"]
    assert result["epoch"] == 1 and result["distill_kind"] == "cosine"
    assert -1 <= result["fit products"] <= 1 and -1 <= result["fit natural"] <= 1
    # quick: 32 photos; centred features of 32 photos span at most 31 directions, and at least one
    assert all(1 <= result[f"rank {part}"] <= 31 for part in ("embedding", "projection", "teacher"))
    # a student trained without a teacher has nothing to compare: one clear message, no traceback
    (tmp_path / "alone").mkdir()
    alone = trainer(tmp_path / "alone", teacher="", distill_weight=0.0)
    alone.save(alone.checkpoint(0, {}), "last.pt")
    failed = subprocess.run([sys.executable, str(REPO / "bench" / "student_fit.py"), "--quick", "--json",
                             str(tmp_path / "x.json"), str(alone.run_dir / "last.pt"), "--products", str(DEMO),
                             "--natural", str(DEMO)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0 and "trained without a teacher" in failed.stderr
    assert "Traceback" not in failed.stderr
