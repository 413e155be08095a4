"""add, remove, info and check with the mean-colour model: results checked against numpy and SQLite."""

import json
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from shitu.errors import ShituError
from shitu.store import DB_NAME, IndexStore, read_snapshot, write_faiss_file, write_lock
from tests.conftest import colour_embedding, solid

runner = CliRunner()
EXTRA = {"green tea": (20, 200, 30), "yellow box": (230, 220, 20), "purple jar": (120, 20, 140),
         "black tin": (15, 15, 15)}


def shitu(*args):
    return runner.invoke(app, [str(a) for a in args])


def build(gallery, index, model, index_type="Flat"):
    result = shitu("build-index", gallery, "--index", index, "--model", model, "--index-type", index_type,
                   "-q")
    assert result.exit_code == 0, result.output
    return index


@pytest.fixture
def built(colour_gallery, tiny_model, tmp_path):
    return build(colour_gallery, tmp_path / "index", tiny_model)


def rows(index):
    """{path: (id, label, sha256)} as stored."""
    store = IndexStore.open(index)
    return {r.path: (r.id, r.label, r.sha256) for r in store.all_rows()}


def snapshot(index):
    """Every byte a change could touch."""
    return {p.name: p.read_bytes() for p in sorted(index.iterdir())}


def set_manifest(index, key, value):
    with sqlite3.connect(index / DB_NAME) as conn:
        conn.execute("update manifest set value = ? where key = ?", (json.dumps(value), key))
    conn.close()


def point_manifest_at(index, faiss_index):
    """Install ``faiss_index`` as a new generation, the way a buggy writer would."""
    generation = IndexStore.open(index).manifest["generation"] + 1
    set_manifest(index, "faiss_file", write_faiss_file(index, faiss_index, generation))
    set_manifest(index, "generation", generation)


def check(index, *args):
    result = shitu("check", "--index", index, "--json", *args)
    return result.exit_code, json.loads(result.stdout)


# -- add ---------------------------------------------------------------------------------------------
def test_add_files_and_folders(built, colour_gallery, tiny_model):
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    result = shitu("add", new, "--label", "green tea", "--index", built, "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output
    assert "1 new images added" in result.stderr and "7 images of 4 labels" in result.stderr

    solid(colour_gallery / "yellow box" / "deep" / "b.png", EXTRA["yellow box"])
    solid(colour_gallery / "yellow box" / "c.png", (225, 215, 30))
    solid(colour_gallery / "loose.png", (1, 2, 3))  # not in a label folder: build-index ignores it too
    result = shitu("add", colour_gallery, "--index", built, "--model", tiny_model, "-q")
    assert "2 new images added" in result.stderr and "7 unchanged" in result.stderr
    stored = rows(built)
    assert stored["yellow box/deep/b.png"][1] == stored["yellow box/c.png"][1] == "yellow box"
    assert "loose.png" not in stored

    solid(colour_gallery / "misc" / "sub" / "x.png", EXTRA["purple jar"])
    result = shitu("add", colour_gallery / "misc", "--label", "purple jar", "--index", built,
                   "--model", tiny_model, "-q")
    assert result.exit_code == 0 and rows(built)["misc/sub/x.png"][1] == "purple jar"

    photo = solid(colour_gallery.parent / "q.png", (25, 195, 35))
    answer = json.loads(shitu("query", photo, "--index", built, "--model", tiny_model, "--json").stdout)[0]
    assert answer["label"] == "green tea" and answer["results"][0]["path"] == "green tea/a.png"
    assert check(built, "--model", tiny_model)[0] == 0


def test_changed_file_is_replaced_unchanged_is_a_no_op(built, colour_gallery, tiny_model):
    before = rows(built)
    target = colour_gallery / "blue can" / "shot 0.jpg"
    solid(target, (0, 0, 250), fmt="PNG")
    result = shitu("add", target, "--label", "blue can", "--index", built, "--model", tiny_model, "-q")
    assert "1 changed ones replaced" in result.stderr
    after = rows(built)
    new_id, _, new_sha = after["blue can/shot 0.jpg"]
    assert new_sha != before["blue can/shot 0.jpg"][2] and new_id > max(i for i, _, _ in before.values())
    assert all(after[p] == before[p] for p in before if p != "blue can/shot 0.jpg")  # ids stable
    store = IndexStore.open(built)
    ids, vectors = store.all_vectors()
    assert np.allclose(vectors[list(ids).index(new_id)], colour_embedding((0, 0, 250)), atol=2e-3)
    assert store.load_faiss().ntotal == 6

    files = snapshot(built)
    result = shitu("add", target, "--label", "blue can", "--index", built, "--model", tiny_model, "-q")
    assert result.exit_code == 0 and "1 unchanged" in result.stderr
    assert snapshot(built) == files  # nothing written at all

    result = shitu("add", target, "--label", "navy can", "--index", built, "--model", tiny_model, "-q")
    assert "1 relabelled" in result.stderr
    assert rows(built)["blue can/shot 0.jpg"] == (new_id, "navy can", new_sha)


def test_removed_ids_are_never_reused(built, colour_gallery, tiny_model):
    top_path, (top_id, _, _) = max(rows(built).items(), key=lambda item: item[1][0])
    assert shitu("remove", "--path", top_path, "--index", built).exit_code == 0
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    shitu("add", new, "--label", "green tea", "--index", built, "--model", tiny_model, "-q")
    assert rows(built)["green tea/a.png"][0] == top_id + 1


def test_add_mistakes(built, colour_gallery, tiny_model, other_tiny_model, tmp_path):
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    files = snapshot(built)
    result = shitu("add", new, "--index", built, "--model", tiny_model)
    assert result.exit_code == 2 and "--label" in result.output
    result = shitu("add", tmp_path / "nope.png", "--label", "x", "--index", built, "--model", tiny_model)
    assert result.exit_code == 1 and "no such image file or folder" in result.stderr
    result = shitu("add", new, "--label", "x", "--index", built, "--model", other_tiny_model)
    assert result.exit_code == 1 and "was built with model" in result.stderr
    outside = solid(tmp_path / "elsewhere" / "x.png", (9, 9, 9))
    result = shitu("add", new, outside, "--label", "x", "--index", built, "--model", tiny_model)
    assert result.exit_code == 1 and "outside the gallery folder" in result.stderr
    assert "Traceback" not in result.output and snapshot(built) == files


# -- remove ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index_type", ["Flat", "HNSW32", "IVF2,Flat"])
def test_remove_by_label_and_path(colour_gallery, tiny_model, tmp_path, index_type):
    for label, rgb in EXTRA.items():
        solid(colour_gallery / label / "p.png", rgb)
    index = build(colour_gallery, tmp_path / "idx", tiny_model, index_type)
    before = rows(index)
    result = shitu("remove", "--label", "blue can", "--path", "red apple/shot 0.jpg", "--path",
                   colour_gallery / "green tea", "--index", index)
    assert result.exit_code == 0, result.output
    assert (f"rebuilt the {index_type} FAISS index" in result.stderr) == (index_type != "Flat")
    gone = {p for p in before if p.startswith(("blue can/", "red apple/shot 0", "green tea/"))}
    assert len(gone) == 4 and set(rows(index)) == set(before) - gone
    assert all(rows(index)[p] == before[p] for p in rows(index))
    changed = solid(colour_gallery / "yellow box" / "p.png", (250, 250, 0))  # a replace deletes as well
    result = shitu("add", changed, "--label", "yellow box", "--index", index, "--model", tiny_model, "-q")
    assert result.exit_code == 0 and "1 changed ones replaced" in result.stderr

    store = IndexStore.open(index)
    ids, vectors = store.all_vectors()
    removed = {before[p][0] for p in gone} | {before["yellow box/p.png"][0]}
    queries = np.random.default_rng(7).normal(size=(20, 3)).astype(np.float32)
    queries = np.vstack([queries / np.linalg.norm(queries, axis=1, keepdims=True),
                         [colour_embedding(rgb) for rgb in [(20, 40, 220), (220, 30, 30), *EXTRA.values()]]])
    scores, found = read_snapshot(index).search(queries.astype(np.float32), 3)
    exact = queries @ vectors.T
    order = np.argsort(-exact, axis=1)[:, :3]
    assert not removed & set(found.ravel().tolist())
    assert np.allclose(scores, np.take_along_axis(exact, order, axis=1), atol=1e-5)
    assert (found[:, 0] == ids[order[:, 0]]).all()
    assert check(index, "--model", tiny_model)[0] == 0


def test_remove_mistakes_change_nothing(built):
    files = snapshot(built)
    result = shitu("remove", "--index", built)
    assert result.exit_code == 2
    result = shitu("remove", "--label", "red apple", "--label", "no such label", "--index", built)
    assert result.exit_code == 1 and "matches --label 'no such label'" in result.stderr
    result = shitu("remove", "--path", "nowhere/x.jpg", "--index", built)
    assert result.exit_code == 1 and "the index was not changed" in result.stderr
    assert snapshot(built) == files


# -- info and check ----------------------------------------------------------------------------------
def test_info_json(built):
    result = shitu("info", "--index", built, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["model"]["name"] == "mean-colour" and len(info["model"]["sha256"]) == 64
    assert (info["count"], info["labels"], info["embedding_size"], info["index_type"]) == (6, 3, 3, "Flat")
    assert info["label_counts"] == {"Crème Fraîche": 2, "blue can": 2, "red apple": 2}
    assert 0 < info["bytes"]["faiss"] < info["bytes"]["total"] and info["bytes"]["database"] > 0
    assert shitu("info", "--index", built).exit_code == 0


def test_check_of_a_good_index(built, tiny_model):
    code, report = check(built, "--model", tiny_model)
    assert code == 0 and report["ok"] and report["problems"] == [] and report["repaired"] == []


def test_missing_faiss_file_found_and_repaired(built, tiny_model, tmp_path):
    (built / IndexStore.open(built).manifest["faiss_file"]).unlink()
    code, report = check(built, "--model", tiny_model)
    assert code == 1 and any("is missing" in p for p in report["problems"])
    photo = solid(tmp_path / "q.png", (220, 30, 30))
    assert "check --repair" in shitu("query", photo, "--index", built, "--model", tiny_model).stderr
    code, report = check(built, "--model", tiny_model, "--repair")
    assert code == 0 and report["repaired"] and report["problems"] == []
    answer = json.loads(shitu("query", photo, "--index", built, "--model", tiny_model, "--json").stdout)
    assert answer[0]["label"] == "red apple"


def test_row_without_faiss_vector_found_and_repaired(built, colour_gallery, tiny_model):
    store = IndexStore.open(built)
    index = store.load_faiss()
    index.remove_ids(np.array([3], dtype=np.int64))
    point_manifest_at(built, index)
    code, report = check(built, "--model", tiny_model)
    live = IndexStore.open(built).manifest["faiss_file"]
    assert code == 1 and report["problems"] == [f"1 rows have no vector in {live} (ids 3)"]
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    result = shitu("add", new, "--label", "green tea", "--index", built, "--model", tiny_model, "-q")
    assert result.exit_code == 1 and "out of step" in result.stderr
    code, report = check(built, "--model", tiny_model, "--repair")
    assert code == 0 and IndexStore.open(built).load_faiss().ntotal == 6


def test_bad_stored_vectors_and_manifest_counts(built, tiny_model):
    with sqlite3.connect(built / DB_NAME) as conn:
        conn.execute("update images set vector = ? where id = 1", (np.float32([2, 0, 0]).tobytes(),))
        conn.execute("update images set vector = ? where id = 2", (b"\0" * 5,))
    conn.close()
    set_manifest(built, "count", 99)
    code, report = check(built, "--model", tiny_model)
    problems = " | ".join(report["problems"])
    assert code == 1 and "not unit length (ids 1)" in problems and "not 3 float32 values (ids 2)" in problems
    assert "manifest says 99 images" in problems
    code, report = check(built, "--model", tiny_model, "--repair")  # wrong-size vectors block the rebuild
    assert code == 1 and report["repaired"] == [] and "cannot repair" in report["problems"][-1]


def test_damaged_database_page_is_reported_without_traceback(built, colour_gallery, tiny_model):
    with sqlite3.connect(built / DB_NAME) as conn:
        page = conn.execute("select rootpage from sqlite_master where name = 'images'").fetchone()[0]
    conn.close()
    data = bytearray((built / DB_NAME).read_bytes())
    start = (page - 1) * 4096
    data[start + 8:start + 200] = b"\xff" * 192  # the table's cell pointers
    (built / DB_NAME).write_bytes(bytes(data))
    code, report = check(built, "--model", tiny_model)
    assert code == 1 and "gallery.db is damaged" in report["problems"][0]
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    codes = []
    for args in (["remove", "--label", "blue can"], ["add", new, "--label", "x", "--model", tiny_model],
                 ["info"]):
        result = shitu(*args, "--index", built)  # whether SQLite notices depends on the pages touched
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == 0 or result.stderr.startswith("error: index ")
        codes.append(result.exit_code)
    assert 1 in codes


def test_model_mismatch_is_found_but_not_repairable(built, other_tiny_model):
    files = snapshot(built)
    code, report = check(built, "--model", other_tiny_model)
    assert code == 1 and "was built with model mean-colour" in report["problems"][0]
    code, report = check(built, "--model", other_tiny_model, "--repair")
    assert code == 1 and report["repaired"] == [] and snapshot(built) == files


def test_leftover_files_are_noted_and_repair_removes_them(built, tiny_model):
    live = IndexStore.open(built).manifest["faiss_file"]
    leftovers = ["vectors.99.faiss", ".vectors.100.faiss.tmp", ".gallery.db.tmp"]
    for name in leftovers:
        (built / name).write_bytes((built / live).read_bytes())
    code, report = check(built, "--model", tiny_model)
    assert code == 0 and all(any(name in note for note in report["notes"]) for name in leftovers)
    code, report = check(built, "--model", tiny_model, "--repair")
    assert code == 0 and len(report["repaired"]) == 3
    assert not any((built / name).exists() for name in leftovers) and (built / live).exists()


# -- refusals and concurrency ------------------------------------------------------------------------
def test_second_writer_is_refused_at_once(built, colour_gallery, tiny_model):
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    files = snapshot(built)
    with write_lock(built):
        for args in (["add", new, "--label", "x", "--model", tiny_model], ["remove", "--label", "blue can"],
                     ["check", "--repair"]):
            result = shitu(*args, "--index", built)
            assert result.exit_code == 1 and "another shitu process is changing" in result.stderr
        result = shitu("check", "--index", built, "--model", tiny_model)  # a plain check still runs
        assert result.exit_code == 0 and "leftover files were not checked" in result.stdout
    assert snapshot(built) == files


def test_unknown_format_version_is_refused(built, colour_gallery, tiny_model):
    set_manifest(built, "format_version", 99)
    files = snapshot(built)
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    for args in (["add", new, "--label", "x", "--model", tiny_model], ["remove", "--label", "blue can"],
                 ["info"], ["check"], ["check", "--repair"]):
        result = shitu(*args, "--index", built)
        assert result.exit_code == 1 and "format version 99" in result.output, args
        assert "Traceback" not in result.output
    assert snapshot(built) == files


def test_damaged_faiss_file_is_refused_until_repaired(built, colour_gallery, tiny_model):
    (built / IndexStore.open(built).manifest["faiss_file"]).write_bytes(b"garbage" * 100)
    files = snapshot(built)
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    for args in (["add", new, "--label", "green tea", "--model", tiny_model],
                 ["remove", "--label", "blue can"]):
        result = shitu(*args, "--index", built)
        assert result.exit_code == 1 and "cannot be read" in result.stderr
        assert "check --repair" in result.stderr
    assert snapshot(built) == files
    assert check(built, "--model", tiny_model, "--repair")[0] == 0
    result = shitu("add", new, "--label", "green tea", "--index", built, "--model", tiny_model, "-q")
    assert result.exit_code == 0 and IndexStore.open(built).load_faiss().ntotal == 7


def test_reader_keeps_its_generation_while_a_writer_commits(built, colour_gallery, tiny_model):
    reader = IndexStore.open(built)  # has read the manifest, not yet the FAISS file
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    assert shitu("add", new, "--label", "green tea", "--index", built, "--model", tiny_model).exit_code == 0
    assert reader.load_faiss().ntotal == 6 and len(reader.rows(range(1, 7))) == 6
    assert shitu("remove", "--label", "green tea", "--index", built).exit_code == 0
    names = sorted(p.name for p in built.glob("vectors.*.faiss"))
    assert names == ["vectors.2.faiss", "vectors.3.faiss"]  # older than the previous generation: deleted


def test_reader_stops_when_the_database_was_rebuilt_under_it(built, colour_gallery, tiny_model):
    reader = IndexStore.open(built)
    build(colour_gallery, built, tiny_model)  # renames a new gallery.db over the one the reader has open
    with pytest.raises(ShituError, match="rebuilt while this command was reading"):
        reader.rows([1])
