"""The Milvus store against a real engine: Milvus Lite from pip (in-process, offline).

Searches are compared with a brute-force inner product written here; crash points are produced by
killing a child process (SIGKILL) or by failing a call at a chosen step.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from shitu.errors import ShituError
from shitu.index import milvus, milvus_check, milvus_url
from shitu.index.findings import MODEL_NOT_CHECKED
from shitu.index.milvus import Change, MilvusStore
from shitu.index.milvus_url import parse_url

try:
    import milvus_lite  # noqa: F401
    import pymilvus  # noqa: F401
except ImportError:  # pragma: no cover - only where pip has no milvus-lite wheel for the platform
    pytest.skip("milvus-lite/pymilvus are not installed (no wheel for this platform?): pip install "
                "'shitu[milvus]'", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
DIM = 16


@dataclass
class FakeModel:
    sha256: str = "a" * 64
    embedding_size: int = DIM

    def describe(self) -> str:
        return f"test model (sha256 {self.sha256[:12]}, {self.embedding_size}-d)"


def unit(rng, n, dim=DIM):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def manifest(count, labels, dim=DIM, next_id=None, index_type="FLAT"):
    return {"format_version": 1, "model_name": "test", "model_version": "1", "model_sha256": "a" * 64,
            "embedding_size": dim, "index_type": index_type, "generation": 0, "count": count,
            "labels": labels, "next_id": next_id if next_id is not None else count + 1, "gallery_root": "/g"}


def gallery_rows(vectors, labels=("milk", "bread", "it's \"quoted\"")):
    return [{"id": i + 1, "path": f"{labels[i % len(labels)]}/{i}.jpg", "label": labels[i % len(labels)],
             "sha256": f"{i:064x}", "vector": v} for i, v in enumerate(vectors)]


@pytest.fixture
def url(tmp_path):
    return f"milvus-lite:{tmp_path / 'shop.db'}/gallery"


@pytest.fixture
def built(url):
    """A store with one finished generation of 60 rows; yields (store, vectors)."""
    vectors = unit(np.random.default_rng(0), 60)
    store = MilvusStore.open(url, create=True)
    rows = gallery_rows(vectors)
    store.write_generation(rows, manifest(len(rows), 3))
    yield store, vectors
    store.close()


# -- URLs -------------------------------------------------------------------------------------------
def test_server_url_parts():
    u = parse_url("milvus://user:p%40ss@db.example.com:19531/shop_1")
    assert (u.host, u.port, u.collection, u.token, u.uri) == ("db.example.com", 19531, "shop_1", "user:p@ss",
                                                              "http://db.example.com:19531")
    assert "p@ss" not in str(u) and not u.lite
    assert parse_url("milvus://10.0.0.5/shop").port == 19530


def test_lite_url_parts(tmp_path):
    u = parse_url(f"milvus-lite:{tmp_path}/a.db")
    assert u.lite and u.lite_path == tmp_path / "a.db" and u.collection == "gallery"
    u = parse_url(f"milvus-lite:{tmp_path}/x.db/sub.db/shop")
    assert u.lite_path == tmp_path / "x.db" / "sub.db" and u.collection == "shop"


@pytest.mark.parametrize("text, says", [
    ("milvus://host:99999/c", "port"), ("milvus://host:abc/c", "port"), ("milvus:///c", "no host"),
    ("milvus://host:19530", "no collection"), ("milvus://host:19530/", "no collection"),
    ("milvus://host/bad-name", "collection name"), ("milvus://host/1abc", "collection name"),
    ("milvus://host/shop__g3", "collection name"), ("milvus://host/c?x=1", "query"),
    ("milvus-lite:shop", "ending in .db"), ("milvus-lite:", "ending in .db"),
    ("milvus-lite:shop.db/bad name", "collection name"), ("faiss://x", "expected milvus://"),
])
def test_bad_urls_are_one_clear_error(text, says):
    with pytest.raises(ShituError, match=says):
        parse_url(text)


def test_is_milvus_url():
    assert milvus_url.is_milvus_url("milvus://h/c") and milvus_url.is_milvus_url("milvus-lite:a.db")
    assert not milvus_url.is_milvus_url("index") and not milvus_url.is_milvus_url(Path("milvus://h/c"))


# -- opening ----------------------------------------------------------------------------------------
def test_reading_a_missing_lite_folder_creates_nothing(tmp_path):
    with pytest.raises(ShituError, match="no gallery at .*build-index"):
        MilvusStore.open(f"milvus-lite:{tmp_path / 'none.db'}")
    assert not (tmp_path / "none.db").exists()


def test_lite_path_that_is_a_file(tmp_path):
    (tmp_path / "f.db").write_text("x")
    with pytest.raises(ShituError, match="is a file"):
        MilvusStore.open(f"milvus-lite:{tmp_path / 'f.db'}", create=True)


def test_empty_folder_has_no_gallery(url):
    with MilvusStore.open(url, create=True) as store, pytest.raises(ShituError, match="no gallery"):
        store.snapshot()


def test_unreachable_server_is_one_line():
    with pytest.raises(ShituError, match="cannot reach the Milvus server at 127.0.0.1:1"):
        MilvusStore.open("milvus://127.0.0.1:1/shop")


def test_a_collection_shitu_did_not_make_is_refused(url):
    with MilvusStore.open(url, create=True) as store:
        store.client.create_collection("gallery", dimension=DIM)
        with pytest.raises(ShituError, match="did not make"):
            store.snapshot()


def test_folder_open_in_another_process_is_refused(built, url):
    code = f"from shitu.index.milvus import MilvusStore\nMilvusStore.open({url!r}).snapshot()"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "open in another process" in result.stderr and "one process per" in result.stderr


# -- build, search, manifest --------------------------------------------------------------------------
def test_search_matches_brute_force_and_returns_scalar_fields(built):
    store, vectors = built
    snapshot = store.snapshot(FakeModel())
    queries = unit(np.random.default_rng(1), 12)
    found = snapshot.search(queries, 5)
    expected = np.argsort(-(queries @ vectors.T), axis=1)[:, :5] + 1
    assert [[row.id for _, row in hits] for hits in found] == expected.tolist()
    score, row = found[0][0]
    assert score == pytest.approx(float(queries[0] @ vectors[row.id - 1]), abs=1e-5)
    assert row.path == f"{row.label}/{row.id - 1}.jpg" and row.sha256 == f"{row.id - 1:064x}"


def test_counts_labels_rows_and_id_order(built):
    store, _ = built
    snapshot = store.snapshot()
    assert snapshot.count() == 60 and snapshot.row_ids() == list(range(1, 61))
    assert snapshot.label_counts() == {"bread": 20, "it's \"quoted\"": 20, "milk": 20}
    assert [r.id for r in snapshot.images("bread", offset=2, limit=3)] == [8, 11, 14]
    assert snapshot.images("nope") == [] and snapshot.rows([3, 999]).keys() == {3}
    ids, matrix = snapshot.all_vectors()
    assert ids.tolist() == list(range(1, 61)) and matrix.shape == (60, DIM)


def test_model_mismatch_is_refused(built):
    store, _ = built
    with pytest.raises(ShituError, match="was built with model test 1 .*not with test model"):
        store.snapshot(FakeModel(sha256="b" * 64))
    with pytest.raises(ShituError, match="16-d"):
        store.snapshot(FakeModel(embedding_size=32))


def test_manifest_damage_and_other_versions_are_refused(built):
    store, _ = built
    live = store.live()
    store.client.alter_collection_properties(live, properties={milvus.MANIFEST_KEY: "{not json"})
    with pytest.raises(ShituError, match="manifest is not JSON"):
        store.snapshot()
    store.write_manifest(live, {**manifest(60, 3), "format_version": 99})
    with pytest.raises(ShituError, match="format version 99"):
        store.snapshot()
    store.write_manifest(live, {**manifest(60, 3), "count": "sixty"})
    with pytest.raises(ShituError, match="'count' is 'sixty'"):
        store.snapshot()
    store.write_manifest(live, {**manifest(60, 3), "pending": {"delete": ["1"]}})
    with pytest.raises(ShituError, match="record of an interrupted change"):
        store.snapshot()


def test_rebuild_switches_the_alias_and_keeps_one_previous_generation(built):
    store, vectors = built
    first = store.live()
    for n in range(2):
        rows = gallery_rows(vectors[:10 + n])
        store.write_generation(rows, manifest(len(rows), 3))
    assert store.live() == "gallery__g3" and sorted(store.generations()) == [2, 3]
    assert first not in store.generations().values()
    assert store.snapshot().count() == 11


def test_rebuild_generation_numbers_never_repeat(built):
    store, vectors = built
    store.write_generation(gallery_rows(vectors[:5]), manifest(5, 3))
    assert store.snapshot().manifest.generation == 2


def test_too_long_label_is_refused_before_anything_is_written(built):
    store, vectors = built
    rows = gallery_rows(vectors[:2])
    rows[1]["label"] = "é" * (milvus.LABEL_BYTES // 2 + 1)  # fewer characters than bytes
    with pytest.raises(ShituError, match="longer than 4096 bytes"):
        store.write_generation(rows, manifest(2, 2))
    assert sorted(store.generations()) == [1]


@pytest.mark.parametrize("kind, says", [("DISKANN", "needs a Milvus server"), ("IVF_PQ", "needs a Milvus server"),
                                        ("bogus", "bad --index-type")])
def test_index_types_lite_lacks_are_refused(kind, says):
    with pytest.raises(ShituError, match=says):
        milvus.resolve_index_type(kind, 10, lite=True)


def test_auto_index_type_by_size():
    assert milvus.resolve_index_type("auto", milvus.AUTO_FLAT_LIMIT - 1, lite=True) == "FLAT"
    assert milvus.resolve_index_type("auto", milvus.AUTO_FLAT_LIMIT, lite=True) == "HNSW"
    assert milvus.resolve_index_type("diskann", 10, lite=False) == "DISKANN"


@pytest.mark.parametrize("kind", ["HNSW", "IVF_FLAT"])
def test_approximate_types_find_the_exact_first_hit_on_a_small_gallery(url, kind):
    vectors = unit(np.random.default_rng(2), 300)
    with MilvusStore.open(url, create=True) as store:
        store.write_generation(gallery_rows(vectors), manifest(300, 3, index_type=kind))
        snapshot = store.snapshot()
        queries = vectors[:20] + 0.05 * unit(np.random.default_rng(3), 20)
        found = [hits[0][1].id for hits in snapshot.search(queries, 1)]
        assert found == (np.argmax(queries @ vectors.T, axis=1) + 1).tolist()


# -- changes in place --------------------------------------------------------------------------------
def test_add_remove_relabel_keep_counts_and_never_reuse_ids(built):
    store, vectors = built
    snapshot = store.snapshot()
    new = [{"id": 61, "path": "tea/a.jpg", "label": "tea", "sha256": "f" * 64, "vector": vectors[0]}]
    snapshot.apply(Change(delete_ids=[1, 2, 3], new_rows=new, relabel={4: "milk"}))
    again = store.snapshot()
    assert (again.manifest.count, again.manifest.labels, again.manifest.next_id) == (58, 4, 62)
    assert again.count() == 58 and again.rows([4])[4].label == "milk" and 1 not in again.rows([1])
    assert again.search(vectors[:1], 1)[0][0][1].id == 61
    with pytest.raises(ShituError, match="ids are never reused"):
        again.apply(Change(new_rows=[{**new[0], "id": 5}]))
    again.apply(Change(delete_ids=[r.id for r in again.images("tea")]))
    assert store.snapshot().manifest.labels == 3


def test_repeating_a_change_is_harmless(built):
    store, vectors = built
    snapshot = store.snapshot()
    snapshot.apply(Change(delete_ids=[5, 6]))
    snapshot.apply(Change(delete_ids=[5, 6]))
    snapshot.replay({"delete": [5, 6], "relabel": {"7": "bread"}})
    snapshot.replay({"delete": [5, 6], "relabel": {"7": "bread"}})
    snapshot.store.insert_rows(snapshot.collection, gallery_rows(vectors)[10:12], method="upsert")
    assert snapshot.count() == 58 and snapshot.rows([7])[7].label == "bread"


def test_large_removal_is_committed_in_parts(built, monkeypatch):
    store, _ = built
    monkeypatch.setattr(milvus, "PENDING_LIMIT", 7)
    snapshot = store.snapshot()
    snapshot.apply(Change(delete_ids=list(range(1, 31))))
    assert snapshot.manifest.generation == 1 + 5 and store.snapshot().count() == 30
    assert store.snapshot().manifest.pending is None


def test_a_second_writer_is_refused_at_commit(built):
    store, _ = built
    first, second = store.snapshot(), store.snapshot()
    first.apply(Change(delete_ids=[1]))
    with pytest.raises(ShituError, match="changed by another process"):
        second.apply(Change(delete_ids=[2]))
    assert 2 in store.snapshot().rows([2])


def test_odd_labels_are_selected_exactly(built):
    store, vectors = built
    snapshot = store.snapshot()
    odd = ["back\\slash", "new\nline", "bell\x07", 'q"uote']
    rows = [{"id": 61 + n, "path": f"odd/{n}.jpg", "label": label, "sha256": "", "vector": vectors[n]}
            for n, label in enumerate(odd)]
    snapshot.apply(Change(new_rows=rows))
    for n, label in enumerate(odd):
        assert [r.id for r in snapshot.images(label)] == [61 + n]
        assert [r.id for r in snapshot.matching("label", [label])] == [61 + n]
    assert snapshot.manifest.labels == 7


# -- interruptions, check and repair -------------------------------------------------------------------
KILLED_BUILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from shitu.index import milvus
    store = milvus.MilvusStore.open(sys.argv[1])
    real = store.call
    def call(method, *args, **kwargs):
        if method == sys.argv[2]:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(method, *args, **kwargs)
    store.call = call
    v = np.random.default_rng(5).standard_normal((40, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = [{"id": 100 + i, "path": f"new/{i}.jpg", "label": "new", "sha256": "", "vector": x}
            for i, x in enumerate(v)]
    store.write_generation(rows, dict(format_version=1, model_name="test", model_version="1",
        model_sha256="a" * 64, embedding_size=16, index_type="FLAT", generation=0, count=40, labels=1,
        next_id=140))
""")


@pytest.mark.parametrize("step", ["flush", "alter_collection_properties", "alter_alias"])
def test_an_interrupted_build_leaves_the_old_generation_serving(built, url, step):
    store, vectors = built
    store.close()
    result = subprocess.run([sys.executable, "-c", KILLED_BUILD, url, step], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    with MilvusStore.open(url) as again:
        snapshot = again.snapshot(FakeModel())
        assert snapshot.collection == "gallery__g1" and snapshot.count() == 60
        assert snapshot.search(vectors[:1], 1)[0][0][1].id == 1
        findings = milvus_check.inspect(again, FakeModel())
        assert findings.problems == [] and findings.leftovers == ["gallery__g2"]
        assert milvus_check.repair(again, findings) == ["dropped leftover collection gallery__g2"]
        assert sorted(again.generations()) == [1]


class Stop(Exception):
    pass


def interrupt(monkeypatch, snapshot, at: str):
    """Make the snapshot's change stop at ``at``: "replay" (after the pending record) or "commit"."""
    def stop(*args, **kwargs):
        raise Stop
    monkeypatch.setattr(snapshot, at, stop)


def test_an_add_cut_short_before_its_record_is_rolled_back(built, monkeypatch):
    store, vectors = built
    snapshot = store.snapshot()
    interrupt(monkeypatch, snapshot, "commit")
    new = [{"id": 61 + n, "path": f"milk/{n}.jpg", "label": "milk", "sha256": "", "vector": vectors[n]}
           for n in range(3)]
    with pytest.raises(Stop):
        snapshot.apply(Change(new_rows=new, delete_ids=[1]))
    findings = milvus_check.inspect(store, FakeModel())
    assert any("3 rows above next_id 61" in message and fixable for message, fixable in findings.problems)
    done = milvus_check.repair(store, findings)
    assert done[0].startswith("deleted 3 rows an interrupted add left")
    again = store.snapshot()
    assert again.count() == 60 and 1 in again.rows([1]) and milvus_check.inspect(store, FakeModel()).problems == []


def test_a_change_cut_short_after_its_record_is_finished(built, monkeypatch):
    store, vectors = built
    snapshot = store.snapshot()
    interrupt(monkeypatch, snapshot, "replay")
    new = [{"id": 61, "path": "bread/0.jpg", "label": "bread", "sha256": "", "vector": vectors[0]}]
    with pytest.raises(Stop):
        snapshot.apply(Change(new_rows=new, delete_ids=[2], relabel={3: "tea"}))
    problems = milvus_check.inspect(store, FakeModel()).problems
    assert any("interrupted change is pending (1 deletes, 1 relabels)" in message for message, _ in problems)
    assert store.snapshot().recover() == ["finished an interrupted change (1 deletes, 1 relabels)"]
    with pytest.raises(ShituError, match="changed by another process"):
        snapshot.commit({})  # the stopped writer's view is stale once another one has recovered
    again = store.snapshot()
    assert again.count() == 60 and 2 not in again.rows([2]) and again.rows([3])[3].label == "tea"
    assert (again.manifest.count, again.manifest.labels, again.manifest.pending) == (60, 4, None)
    assert milvus_check.inspect(store, FakeModel()).problems == []


def test_check_finds_duplicate_paths_bad_vectors_and_wrong_counts(built):
    store, vectors = built
    snapshot = store.snapshot()
    twin = {"id": 70, "path": "milk/0.jpg", "label": "milk", "sha256": "", "vector": vectors[5]}
    nan = {"id": 71, "path": "odd/nan.jpg", "label": "odd", "sha256": "", "vector": np.full(DIM, np.nan)}
    store.insert_rows(snapshot.collection, [twin, nan], method="upsert")
    snapshot.commit({"next_id": 72})
    problems = [message for message, _ in milvus_check.inspect(store, FakeModel()).problems]
    assert any("manifest says 60 images of 3 labels, the collection holds 62 of 4" in p for p in problems)
    assert any("1 paths are stored more than once (ids 1, 70)" in p for p in problems)
    assert any("1 stored vectors are not unit length (ids 71)" in p for p in problems)
    done = milvus_check.repair(store, milvus_check.inspect(store, FakeModel()))
    assert any("deleted 1 older rows of paths stored twice (ids 1)" in d for d in done)
    problems = [message for message, _ in milvus_check.inspect(store, FakeModel()).problems]
    assert problems == ["1 stored vectors are not unit length (ids 71); remove those files and add them "
                        "again, or rebuild with 'shitu build-index'"]


def test_a_missing_alias_is_repaired_to_the_newest_complete_generation(built):
    store, _ = built
    store.client.drop_alias("gallery")
    with pytest.raises(ShituError, match="no gallery"):
        store.snapshot()
    findings = milvus_check.inspect(store)
    assert findings.orphan == "gallery__g1"
    assert milvus_check.repair(store, findings)[0] == "pointed alias gallery at gallery__g1"
    assert store.snapshot().count() == 60


def test_check_notes_an_unchecked_model(built):
    store, _ = built
    assert milvus_check.inspect(store).notes == [MODEL_NOT_CHECKED]


def test_check_finds_an_index_with_another_metric(built):
    store, _ = built
    live = store.live()
    store.client.release_collection(live)
    store.client.drop_index(live, "vector")
    params = store.client.prepare_index_params()
    params.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
    store.client.create_index(live, params, sync=False)
    problems = [message for message, _ in milvus_check.inspect(store, FakeModel()).problems]
    assert problems == ["gallery__g1's vector index uses metric 'L2', not inner product; rebuild it with "
                        "'shitu build-index'"]


def test_ids_below_a_folder_and_the_highest_id(url):
    paths = ["a/1.jpg", "a/b/2.jpg", "a", "ab/3.jpg", "a_/4.jpg", "a0/5.jpg", "a./6.jpg"]
    vectors = unit(np.random.default_rng(4), len(paths))
    rows = [{"id": 10 + n, "path": p, "label": "x", "sha256": "", "vector": v}
            for n, (p, v) in enumerate(zip(paths, vectors))]
    with MilvusStore.open(url, create=True) as store:
        store.write_generation(rows, manifest(len(rows), 1, next_id=17))
        snapshot = store.snapshot()
        assert snapshot.ids_below("a") == {10, 11, 12} and snapshot.ids_below("a/b") == {11}
        assert snapshot.ids_below("a_") == {14} and snapshot.ids_below("zz") == set()
        assert snapshot.highest_id() == 16


def test_a_rebuild_after_changes_in_place_has_a_higher_generation(built):
    store, vectors = built
    old = store.snapshot()
    old.apply(Change(delete_ids=[1]))
    old.apply(Change(delete_ids=[2]))
    assert old.manifest.generation == 3 and old.is_current()
    store.write_generation(gallery_rows(vectors[:5]), manifest(5, 3))
    new = store.snapshot()
    assert new.manifest.generation == 4 and new.collection == "gallery__g4" and not old.is_current()
