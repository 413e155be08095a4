"""add, remove, info and check with the mean-colour model: results checked against numpy and SQLite."""

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from shitu.errors import ShituError
from shitu.index.database import Database
from shitu.index.files import DB_NAME, write_lock
from shitu.index.findings import MODEL_NOT_CHECKED
from shitu.index.folder import FolderStorage
from shitu.index.vectors import load_faiss, write_faiss_file
from shitu.embed import set_shitu_metadata
from tests.conftest import colour_embedding, solid, stored_rows, write_mean_colour_model

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
    return {r.path: (r.id, r.label, r.sha256) for r in Database(index).all_rows()}


def snapshot(index):
    """Every byte a change could touch."""
    return {p.name: p.read_bytes() for p in sorted(index.iterdir())}


def set_manifest(index, key, value):
    with sqlite3.connect(index / DB_NAME) as conn:
        conn.execute("update manifest set value = ? where key = ?", (json.dumps(value), key))
    conn.close()


def point_manifest_at(index, faiss_index):
    """Install ``faiss_index`` as a new generation, the way a buggy writer would."""
    generation = Database(index).manifest().generation + 1
    set_manifest(index, "faiss_file", write_faiss_file(index, faiss_index, generation))
    set_manifest(index, "generation", generation)


def check(index, *args):
    result = shitu("check", "--index", index, "--json", *args)
    return result.exit_code, json.loads(result.stdout)


# -- add ---------------------------------------------------------------------------------------------
@pytest.fixture
def built_at(colour_gallery, tiny_model, place):
    """The colour gallery built at ``place`` (an index folder, then a Milvus Lite gallery)."""
    result = shitu("build-index", colour_gallery, *place, "--model", tiny_model, "--quiet")
    assert result.exit_code == 0, result.output
    return place


def test_add_files_and_folders(built_at, colour_gallery, tiny_model):
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    result = shitu("add", new, "--label", "green tea", *built_at, "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output
    assert "1 new images added" in result.stderr and "7 images of 4 labels" in result.stderr

    solid(colour_gallery / "yellow box" / "deep" / "b.png", EXTRA["yellow box"])
    solid(colour_gallery / "yellow box" / "c.png", (225, 215, 30))
    solid(colour_gallery / "loose.png", (1, 2, 3))  # not in a label folder: build-index ignores it too
    result = shitu("add", colour_gallery, *built_at, "--model", tiny_model, "-q")
    assert "2 new images added" in result.stderr and "7 unchanged" in result.stderr
    stored = stored_rows(built_at)
    assert stored["yellow box/deep/b.png"][1] == stored["yellow box/c.png"][1] == "yellow box"
    assert "loose.png" not in stored

    solid(colour_gallery / "misc" / "sub" / "x.png", EXTRA["purple jar"])
    result = shitu("add", colour_gallery / "misc", "--label", "purple jar", *built_at, "--model", tiny_model, "-q")
    assert result.exit_code == 0 and stored_rows(built_at)["misc/sub/x.png"][1] == "purple jar"

    photo = solid(colour_gallery.parent / "q.png", (25, 195, 35))
    answer = json.loads(shitu("query", photo, *built_at, "--model", tiny_model, "--json").stdout)[0]
    assert answer["label"] == "green tea" and answer["results"][0]["path"] == "green tea/a.png"
    result = shitu("check", *built_at, "--model", tiny_model, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["problems"] == []


def test_replace_relabel_remove_on_both_stores(built_at, colour_gallery, tiny_model):
    before = stored_rows(built_at)
    target = colour_gallery / "blue can" / "shot 0.jpg"
    solid(target, (0, 0, 250), fmt="PNG")
    result = shitu("add", target, "--label", "blue can", *built_at, "--model", tiny_model, "-q")
    assert "1 changed ones replaced" in result.stderr
    after = stored_rows(built_at)
    new_id = after["blue can/shot 0.jpg"][0]
    assert new_id > max(i for i, _, _ in before.values()) and len(after) == 6
    assert all(after[p] == before[p] for p in before if p != "blue can/shot 0.jpg")  # ids stable
    result = shitu("add", target, "--label", "navy can", *built_at, "--model", tiny_model, "-q")
    assert "1 relabelled" in result.stderr and stored_rows(built_at)["blue can/shot 0.jpg"][1] == "navy can"
    result = shitu("remove", "--label", "red apple", "--path", "Crème Fraîche/shot 0.jpg", *built_at)
    assert result.exit_code == 0 and "it now holds 3 images of 3 labels" in result.stderr, result.output
    assert set(stored_rows(built_at)) == {"blue can/shot 0.jpg", "blue can/deeper/shot 1.jpg",
                                          "Crème Fraîche/deeper/shot 1.jpg"}
    result = shitu("remove", "--label", "no such label", *built_at)
    assert result.exit_code == 1 and "nothing in index" in result.stderr
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    shitu("add", new, "--label", "green tea", *built_at, "--model", tiny_model, "-q")
    assert stored_rows(built_at)["green tea/a.png"][0] == new_id + 1  # removed ids are never reused
    result = shitu("check", *built_at, "--model", tiny_model, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["problems"] == []


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
    store = Database(built)
    ids, vectors = store.all_vectors()
    assert np.allclose(vectors[list(ids).index(new_id)], colour_embedding((0, 0, 250)), atol=2e-3)
    assert load_faiss(built, store.manifest()).ntotal == 6

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

    ids, vectors = Database(index).all_vectors()
    removed = {before[p][0] for p in gone} | {before["yellow box/p.png"][0]}
    queries = np.random.default_rng(7).normal(size=(20, 3)).astype(np.float32)
    queries = np.vstack([queries / np.linalg.norm(queries, axis=1, keepdims=True),
                         [colour_embedding(rgb) for rgb in [(20, 40, 220), (220, 30, 30), *EXTRA.values()]]])
    scores, found = FolderStorage(index).read().search(queries.astype(np.float32), 3)
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
    assert info["model"]["training_labels"] is None  # the test model does not record what it trained on
    assert "not recorded" in shitu("info", "--index", built).stdout


def test_info_says_how_many_products_the_model_was_trained_on(colour_gallery, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = write_mean_colour_model(tmp_path / "trained.onnx")
    graph = onnx.load(str(model))
    metadata = {entry.key: entry.value for entry in graph.metadata_props}
    set_shitu_metadata(graph, {**metadata, "shitu.training_labels": json.dumps(["Kiwi", "Oat Milk", "Café"])})
    onnx.save(graph, str(model))
    index = build(colour_gallery, tmp_path / "index", model)
    assert json.loads(shitu("info", "--index", index, "--json").stdout)["model"]["training_labels"] == 3
    assert "3 product labels" in shitu("info", "--index", index).stdout


def test_check_of_a_good_index(built, tiny_model):
    code, report = check(built, "--model", tiny_model)
    assert code == 0 and report["ok"] and report["problems"] == [] and report["repaired"] == []


def test_missing_faiss_file_found_and_repaired(built, tiny_model, tmp_path):
    (built / Database(built).manifest().faiss_file).unlink()
    code, report = check(built, "--model", tiny_model)
    assert code == 1 and any("is missing" in p for p in report["problems"])
    photo = solid(tmp_path / "q.png", (220, 30, 30))
    assert "check --repair" in shitu("query", photo, "--index", built, "--model", tiny_model).stderr
    code, report = check(built, "--model", tiny_model, "--repair")
    assert code == 0 and report["repaired"] and report["problems"] == []
    answer = json.loads(shitu("query", photo, "--index", built, "--model", tiny_model, "--json").stdout)
    assert answer[0]["label"] == "red apple"


def test_row_without_faiss_vector_found_and_repaired(built, colour_gallery, tiny_model):
    index = load_faiss(built, Database(built).manifest())
    index.remove_ids(np.array([3], dtype=np.int64))
    point_manifest_at(built, index)
    code, report = check(built, "--model", tiny_model)
    live = Database(built).manifest().faiss_file
    assert code == 1 and report["problems"] == [f"1 rows have no vector in {live} (ids 3)"]
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    result = shitu("add", new, "--label", "green tea", "--index", built, "--model", tiny_model, "-q")
    assert result.exit_code == 1 and "out of step" in result.stderr
    code, report = check(built, "--model", tiny_model, "--repair")
    assert code == 0 and load_faiss(built, Database(built).manifest()).ntotal == 6


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
    for args in (["remove", "--label", "blue can"], ["add", new, "--label", "x", "--model", tiny_model, "-q"],
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


def gallery_without_its_alias(gallery, model, tmp_path) -> tuple[str, str]:
    """A Milvus Lite gallery built from ``gallery`` whose alias was dropped: its URL and live generation."""
    pytest.importorskip("milvus_lite")
    from shitu.index.milvus import MilvusStore

    url = f"milvus-lite:{tmp_path / 'gallery.db'}"
    assert shitu("build-index", gallery, "--store", url, "--model", model, "-q").exit_code == 0
    with MilvusStore.open(url) as store:
        live = store.live()
        store.client.drop_alias(store.url.collection)
    return url, live


def test_a_gallery_without_its_alias_is_checked_against_the_right_model(colour_gallery, tiny_model,
                                                                        other_tiny_model, tmp_path):
    """Without the alias the live manifest cannot be found; the model is compared with the manifest of
    the generation the alias should name, so the right model is no mismatch, before or after --repair."""
    url, live = gallery_without_its_alias(colour_gallery, tiny_model, tmp_path)
    missing = f"alias gallery is missing; {live} is the newest complete generation"
    result = shitu("check", "--store", url, "--model", other_tiny_model, "--json")
    assert result.exit_code == 1 and "was built with model mean-colour" in json.loads(result.stdout)["problems"][1]
    result = shitu("check", "--store", url, "--model", tiny_model, "--json")
    assert (result.exit_code, json.loads(result.stdout)["problems"]) == (1, [missing]), result.output
    result = shitu("check", "--store", url, "--model", tiny_model, "--json", "--repair")
    report = json.loads(result.stdout)
    assert (result.exit_code, report["problems"]) == (0, []), result.output
    assert report["repaired"] == [f"pointed alias gallery at {live}"]
    result = shitu("check", "--store", url, "--model", tiny_model, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"]


def test_without_model_a_check_skips_a_model_file_that_is_gone_instead_of_blaming_the_index(
        colour_gallery, tiny_model, tmp_path):
    """Built with a model file that was deleted since: the shipped model is not what built it, so comparing
    with it would call a sound index broken; the check says what it could not check and passes."""
    model = tmp_path / "custom.onnx"
    model.write_bytes(Path(tiny_model).read_bytes())
    index = tmp_path / "index"
    assert shitu("build-index", colour_gallery, "--index", index, "--model", model, "-q").exit_code == 0
    model.unlink()
    result = shitu("check", "--index", index, "--json")
    report = json.loads(result.stdout)
    assert (result.exit_code, report["problems"]) == (0, []), result.output
    assert MODEL_NOT_CHECKED in report["notes"]


def test_without_model_a_gallery_missing_its_alias_reports_only_the_alias(colour_gallery, tiny_model, tmp_path):
    url, live = gallery_without_its_alias(colour_gallery, tiny_model, tmp_path)
    report = json.loads(shitu("check", "--store", url, "--json").stdout)
    assert report["problems"] == [f"alias gallery is missing; {live} is the newest complete generation"]
    assert MODEL_NOT_CHECKED in report["notes"]


def test_leftover_files_are_noted_and_repair_removes_them(built, tiny_model):
    live = Database(built).manifest().faiss_file
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
    (built / Database(built).manifest().faiss_file).write_bytes(b"garbage" * 100)
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
    assert result.exit_code == 0 and load_faiss(built, Database(built).manifest()).ntotal == 7


def test_reader_keeps_its_generation_while_a_writer_commits(built, colour_gallery, tiny_model):
    reader = Database(built)  # has read the manifest, not yet the FAISS file
    manifest = reader.manifest()
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    assert shitu("add", new, "--label", "green tea", "--index", built, "--model", tiny_model).exit_code == 0
    assert load_faiss(built, manifest).ntotal == 6 and len(reader.rows(range(1, 7))) == 6
    assert shitu("remove", "--label", "green tea", "--index", built).exit_code == 0
    names = sorted(p.name for p in built.glob("vectors.*.faiss"))
    assert names == ["vectors.2.faiss", "vectors.3.faiss"]  # older than the previous generation: deleted


def test_reader_stops_when_the_database_was_rebuilt_under_it(built, colour_gallery, tiny_model):
    reader = Database(built)
    build(colour_gallery, built, tiny_model)  # renames a new gallery.db over the one the reader has open
    with pytest.raises(ShituError, match="rebuilt while this command was reading"):
        reader.rows([1])


# -- damage found on open (issue #21) ----------------------------------------------------------------
def raw_sql(index, sql, params=()):
    with sqlite3.connect(index / DB_NAME) as conn:
        conn.execute(sql, params)
    conn.close()


def assert_one_error_line(result, *needles):
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


MANIFEST_DAMAGE = {
    "value not JSON": ("update manifest set value = 'not json' where key = 'count'", "'count' is not JSON"),
    "no model_sha256": ("delete from manifest where key = 'model_sha256'", "'model_sha256' is missing"),
    "no faiss_file": ("delete from manifest where key = 'faiss_file'", "'faiss_file' is missing"),
    "generation a string": ("update manifest set value = '\"x\"' where key = 'generation'", "'generation' is 'x'"),
    "faiss_file a path": ("update manifest set value = '\"../../x.faiss\"' where key = 'faiss_file'",
                          "not a vectors.N.faiss name"),
}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_damaged_manifest_is_one_error_everywhere_and_a_problem_for_check(built, colour_gallery, tiny_model,
                                                                          tmp_path, damage):
    sql, message = MANIFEST_DAMAGE[damage]
    raw_sql(built, sql)
    files = snapshot(built)
    code, report = check(built, "--model", tiny_model)
    assert code == 1 and any(message in p and "manifest" in p for p in report["problems"]), report
    photo = solid(tmp_path / "q.png", (220, 30, 30))
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    for args in (["query", photo, "--model", tiny_model], ["eval", "--model", tiny_model], ["info"],
                 ["add", new, "--label", "green tea", "--model", tiny_model], ["remove", "--label", "blue can"],
                 ["check", "--repair", "--model", tiny_model]):
        result = shitu(*args, "--index", built)
        if args[0] == "check":
            assert result.exit_code == 1 and "Traceback" not in result.output and message in result.stdout
        else:
            assert_one_error_line(result, message)
    assert snapshot(built) == files
    assert build(colour_gallery, built, tiny_model)  # a rebuild replaces the damaged index
    assert check(built, "--model", tiny_model)[0] == 0


def write_live_faiss(index, faiss_index):
    """Overwrite the live FAISS file in place, as damage or a careless tool would."""
    import faiss

    faiss.write_index(faiss_index, str(index / Database(index).manifest().faiss_file))


def test_faiss_file_of_the_wrong_dimension_is_refused_before_anything_is_written(built, tiny_model, tmp_path):
    import faiss

    wrong = faiss.IndexIDMap2(faiss.IndexFlatIP(4))
    wrong.add_with_ids(np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]], np.arange(1, 7))
    write_live_faiss(built, wrong)
    files = snapshot(built)
    photo = solid(tmp_path / "q.png", (220, 30, 30))
    for args in (["query", photo, "--model", tiny_model], ["eval", "--model", tiny_model],
                 ["remove", "--label", "blue can"]):
        assert_one_error_line(shitu(*args, "--index", built), "holds 4-d vectors", "check --repair")
    assert snapshot(built) == files  # remove refused before committing on top of it
    code, report = check(built, "--model", tiny_model, "--repair")
    assert code == 0 and report["repaired"]
    answer = json.loads(shitu("query", photo, "--index", built, "--model", tiny_model, "--json").stdout)
    assert answer[0]["label"] == "red apple"


def test_faiss_file_without_its_id_map_never_answers(built, tiny_model, tmp_path):
    import faiss

    ids, vectors = Database(built).all_vectors()
    plain = faiss.IndexFlatIP(3)
    plain.add(vectors)  # the same vectors, but FAISS would answer with positions, not ids
    write_live_faiss(built, plain)
    photo = solid(tmp_path / "q.png", (20, 40, 220))
    result = shitu("query", photo, "--index", built, "--model", tiny_model, "--json")
    assert_one_error_line(result, "is not an id-mapped index")
    assert result.stdout == ""
    assert check(built, "--model", tiny_model)[0] == 1


def test_faiss_file_out_of_step_with_the_rows_is_refused_by_readers(built, tiny_model, tmp_path):
    index = load_faiss(built, Database(built).manifest())
    index.remove_ids(np.array([2], dtype=np.int64))
    write_live_faiss(built, index)
    photo = solid(tmp_path / "q.png", (220, 30, 30))
    assert_one_error_line(shitu("query", photo, "--index", built, "--model", tiny_model), "out of step")


def test_stored_vector_of_the_wrong_size_is_one_error_in_eval(built, colour_gallery, tiny_model):
    raw_sql(built, "update images set vector = x'00000000' where id = 3")
    assert_one_error_line(shitu("eval", "--index", built, "--model", tiny_model, "-q"),
                          "1 stored vectors have the wrong size (ids 3)")
    build(colour_gallery, built, tiny_model)  # the rebuild re-embeds the damaged row
    result = shitu("eval", "--index", built, "--model", tiny_model, "-q", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["recall@1"] == 1.0


# -- eval --metric map@r -----------------------------------------------------------------------------
def test_map_at_r_works_on_an_ivf_index_that_returns_fewer_than_r_neighbours(colour_gallery, tiny_model,
                                                                              tmp_path):
    for n in range(6):
        solid(colour_gallery / "green tea" / f"{n}.png", (20, 150 + 10 * n, 30 + 5 * n))
    index = build(colour_gallery, tmp_path / "ivf", tiny_model, "IVF4,Flat")
    set_manifest(index, "nprobe", 1)  # one list of four searched: fewer than R neighbours come back
    _, ids = FolderStorage(index).read().search(np.float32([colour_embedding((220, 30, 30))]), 12)
    assert (ids == -1).any()
    for extra in ([], ["--queries", colour_gallery]):
        result = shitu("eval", "--index", index, "--model", tiny_model, "--metric", "map@r", "--metric",
                       "recall@1", "--json", "-q", *extra)
        assert result.exit_code == 0, result.output
        value = json.loads(result.stdout)["map@r"]
        assert 0.0 < value <= 1.0


def test_map_at_r_on_an_empty_index_is_one_error(built, colour_gallery, tiny_model):
    result = shitu("remove", "--label", "red apple", "--label", "blue can", "--label", "Crème Fraîche",
                   "--index", built)
    assert result.exit_code == 0 and "0 images of 0 labels" in result.stderr
    for extra in ([], ["--queries", colour_gallery]):
        result = shitu("eval", "--index", built, "--model", tiny_model, "--metric", "map@r", "-q", *extra)
        assert_one_error_line(result, "holds no images")


# -- the writer lock -----------------------------------------------------------------------------------
HOLDER = """
import sys, time
from pathlib import Path
from shitu.index.files import write_lock
with write_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_deleting_the_lock_file_does_not_let_a_second_writer_in(built, colour_gallery, tiny_model):
    import subprocess
    import sys

    from tests.conftest import REPO

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(built)], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for path in built.iterdir():  # whatever looks like a lock file goes: the lock must not be one
            if path.name.startswith(".") or "lock" in path.name:
                path.unlink()
        files = snapshot(built)
        new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
        for args in (["add", new, "--label", "green tea", "--model", tiny_model],
                     ["remove", "--label", "blue can"], ["check", "--repair"],
                     ["build-index", colour_gallery, "--model", tiny_model, "-q"]):
            assert_one_error_line(shitu(*args, "--index", built), "another shitu process is changing")
        assert snapshot(built) == files
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    assert shitu("remove", "--label", "blue can", "--index", built).exit_code == 0  # free again


def test_a_folder_where_the_old_lock_file_was_is_harmless(built, colour_gallery, tiny_model):
    (built / ".write.lock").mkdir()
    assert check(built, "--model", tiny_model)[0] == 0
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    result = shitu("add", new, "--label", "green tea", "--index", built, "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output


def test_index_path_that_is_a_file_or_below_a_file_is_one_error(colour_gallery, tiny_model, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("hello\n")
    for index, message in ((afile, "is a file, not an index folder"), (afile / "sub", "Not a directory")):
        result = shitu("build-index", colour_gallery, "--index", index, "--model", tiny_model, "-q")
        assert_one_error_line(result, message)
        for args in (["check"], ["info"], ["remove", "--label", "x"]):
            assert_one_error_line(shitu(*args, "--index", index), "no index at")
    assert afile.read_text() == "hello\n"


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
AS_NOBODY = """
import json, sys
from typer.testing import CliRunner
from cli import app
runs = [CliRunner().invoke(app, args) for args in json.loads(sys.argv[1])]
print(json.dumps([[r.exit_code, r.stdout, r.stderr] for r in runs]))
"""


@pytest.fixture
def world_readable(tmp_path):
    """A scratch folder another user can read (pytest's own are private to root)."""
    import os
    import shutil
    import tempfile

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("permission cases need root and setpriv to run as the user nobody")
    folder = Path(tempfile.mkdtemp(prefix="shitu-perm-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_index_folder_the_user_cannot_write_reads_fine_and_refuses_writes(built, colour_gallery, tiny_model,
                                                                          world_readable):
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO

    index, gallery, model = world_readable / "index", world_readable / "gallery", world_readable / "m.onnx"
    shutil.copytree(built, index)
    shutil.copytree(colour_gallery, gallery)
    shutil.copy(tiny_model, model)
    files = snapshot(index)
    photo = gallery / "red apple" / "shot 0.jpg"
    commands = [["check", "--index", index, "--model", model],
                ["query", photo, "--index", index, "--model", model, "--json"],
                ["eval", "--index", index, "--model", model, "-q"],
                ["add", photo, "--label", "x", "--index", index, "--model", model, "-q"],
                ["check", "--repair", "--index", index, "--model", model],
                ["build-index", gallery, "--index", "/", "--model", model, "-q"]]
    child = subprocess.run([*NOBODY, sys.executable, "-c", AS_NOBODY,
                            json.dumps([[str(a) for a in c] for c in commands])],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    runs = json.loads(child.stdout)
    for (code, out, err), command in zip(runs[:3], commands):
        assert code == 0 and "Traceback" not in out + err, (command, out, err)
    assert json.loads(runs[1][1])[0]["label"] == "red apple"
    for code, out, err in runs[3:]:
        assert code == 1 and err.startswith("error: cannot write to index folder") and "Traceback" not in out
    assert snapshot(index) == files


# -- full disk and other refused writes ----------------------------------------------------------------
def enospc(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device", args[0] if args else None)


def faiss_write_error(*args, **kwargs):
    raise RuntimeError("Error in void faiss::write_index(...) at impl/index_write.cpp:100: write error")


def sqlite_full(*args, **kwargs):
    raise sqlite3.OperationalError("database or disk is full")


def damage_ways(monkeypatch):
    """Ways a write fails on a full disk, each installed by a function of its own."""
    import faiss

    import shitu.index.database
    import shitu.index.vectors

    return {"faiss write error": lambda: monkeypatch.setattr(faiss, "write_index", faiss_write_error),
            "ENOSPC on fsync": lambda: monkeypatch.setattr(shitu.index.vectors, "fsync_path", enospc),
            "ENOSPC on rename": lambda: monkeypatch.setattr(shitu.index.vectors.os, "replace", enospc),
            "sqlite full in a rebuild": lambda: monkeypatch.setattr(shitu.index.database, "vector_blob", sqlite_full),
            "sqlite full in place": lambda: monkeypatch.setattr(shitu.index.database, "apply_change", sqlite_full)}


FAILING = {  # the commands each way of failing reaches
    "faiss write error": {"build-index", "repair", "add", "remove"},
    "ENOSPC on fsync": {"build-index", "repair", "add", "remove"},
    "ENOSPC on rename": {"build-index", "repair", "add", "remove"},
    "sqlite full in a rebuild": {"build-index"},
    "sqlite full in place": {"repair", "add", "remove"},
}


@pytest.mark.parametrize("way", sorted(FAILING))
def test_full_disk_in_build_add_remove_and_repair_is_one_error_and_keeps_the_index(
        built, colour_gallery, tiny_model, monkeypatch, way):
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    commands = {"build-index": ["build-index", colour_gallery, "--model", tiny_model, "-q"],
                "add": ["add", new, "--label", "green tea", "--model", tiny_model, "-q"],
                "remove": ["remove", "--label", "blue can"], "repair": ["check", "--repair"]}
    for name in ("build-index", "add", "remove", "repair"):
        if name not in FAILING[way]:
            continue
        if name == "repair":  # give it something to repair
            (built / Database(built).manifest().faiss_file).unlink()
        files = snapshot(built)
        with monkeypatch.context() as patched:
            damage_ways(patched)[way]()
            result = shitu(*commands[name], "--index", built)
        if name == "repair":
            assert result.exit_code == 1 and "Traceback" not in result.output, result.output
            assert "problem: cannot repair: index " in result.stdout, result.stdout
        else:
            assert_one_error_line(result, "error: index ")
        assert snapshot(built) == files, name  # no temp file left, nothing committed
    assert check(built, "--model", tiny_model, "--repair")[0] == 0


def test_faiss_ids_that_name_no_row_are_refused_not_looked_up(built, colour_gallery, tiny_model, tmp_path):
    import faiss

    ids, vectors = Database(built).all_vectors()
    shifted = faiss.IndexIDMap2(faiss.IndexFlatIP(3))
    shifted.add_with_ids(vectors, ids + 1000)  # as many vectors as rows, under ids no row has
    write_live_faiss(built, shifted)
    files = snapshot(built)
    photo = solid(tmp_path / "q.png", (220, 30, 30))
    new = solid(colour_gallery / "green tea" / "a.png", EXTRA["green tea"])
    for args in (["query", photo, "--model", tiny_model], ["eval", "--model", tiny_model, "-q"],
                 ["add", new, "--label", "green tea", "--model", tiny_model, "-q"]):
        assert_one_error_line(shitu(*args, "--index", built), "out of step", "check --repair")
    assert snapshot(built) == files
