"""The CLI end to end with the mean-colour model: answers checked against plain numpy arithmetic."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from shitu.index import database as build_module
from shitu.index.database import Database
from shitu.index.vectors import load_faiss
from shitu.index import milvus
from tests.conftest import PALETTE, REPO, colour_embedding, solid, stored_rows

runner = CliRunner()


def shitu(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def built_at(colour_gallery, tiny_model, place):
    """The colour gallery built at ``place`` (an index folder, then a Milvus Lite gallery)."""
    result = shitu("build-index", colour_gallery, *place, "--model", tiny_model, "--quiet")
    assert result.exit_code == 0, result.output
    return place


@pytest.fixture
def built(colour_gallery, tiny_model, tmp_path):
    index = tmp_path / "index"
    result = shitu("build-index", colour_gallery, "--index", index, "--model", tiny_model, "--quiet")
    assert result.exit_code == 0, result.output
    return index


def test_query_json_schema_and_scores(built_at, tiny_model, tmp_path):
    photo = solid(tmp_path / "q.png", (210, 35, 25))
    result = shitu("query", photo, *built_at, "--model", tiny_model, "--topk", 3, "--json")
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    assert [set(a) for a in answers] == [{"image", "label", "results"}]
    assert answers[0]["label"] == "red apple"
    first = answers[0]["results"][0]
    assert set(first) == {"rank", "label", "score", "path"} and first["rank"] == 1
    expected = max(colour_embedding((210, 35, 25)) @ colour_embedding(rgb) for rgb in PALETTE["red apple"])
    assert first["score"] == pytest.approx(expected, abs=2e-3)
    assert [r["rank"] for r in answers[0]["results"]] == [1, 2, 3]


def test_threshold_rejects_unknown_products(built, tiny_model, tmp_path):
    photo = solid(tmp_path / "green.png", (20, 200, 30))  # no green product in the gallery
    result = shitu("query", photo, "--index", built, "--model", tiny_model, "--threshold", 0.95, "--json")
    answer = json.loads(result.stdout)[0]
    assert answer["label"] is None and answer["results"][0]["score"] < 0.95


def test_leave_one_out_eval_matches_brute_force(colour_gallery, tiny_model, tmp_path):
    # A label whose two shades sit near other labels: leave-one-out must miss it.
    solid(colour_gallery / "pinkish" / "a.png", (215, 35, 28))
    solid(colour_gallery / "pinkish" / "b.png", (35, 55, 210))
    index = tmp_path / "idx"
    assert shitu("build-index", colour_gallery, "--index", index, "--model", tiny_model, "-q").exit_code == 0
    result = shitu("eval", "--index", index, "--model", tiny_model, "--metric", "recall@1", "--metric",
                   "recall@3", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert set(got) == {"recall@1", "recall@3", "queries", "gallery"}
    # Reference: plain numpy over the same colours, own image excluded.
    labelled = [(label, rgb) for label, shades in PALETTE.items() for rgb in shades]
    labelled += [("pinkish", (215, 35, 28)), ("pinkish", (35, 55, 210))]
    vectors = np.stack([colour_embedding(rgb) for _, rgb in labelled])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1)
    hits1 = [labelled[order[i, 0]][0] == labelled[i][0] for i in range(len(labelled))]
    hits3 = [labelled[i][0] in {labelled[j][0] for j in order[i, :3]} for i in range(len(labelled))]
    assert got["recall@1"] == pytest.approx(np.mean(hits1), abs=1e-4)
    assert got["recall@3"] == pytest.approx(np.mean(hits3), abs=1e-4)
    assert got["recall@1"] < 1.0 and got["queries"] == 8 and got["gallery"] == 8


def test_eval_with_query_folder(built, tiny_model, tmp_path):
    queries = tmp_path / "queries"
    solid(queries / "blue can" / "q.png", (25, 50, 215))
    solid(queries / "red apple" / "q.png", (10, 60, 200))  # blue-ish photo labelled red: a miss
    result = shitu("eval", "--index", built, "--model", tiny_model, "--queries", queries, "--json")
    assert json.loads(result.stdout) == {"recall@1": 0.5, "queries": 2, "gallery": 6}


def test_corrupt_files_are_skipped_and_counted(colour_gallery, tiny_model, tmp_path):
    (colour_gallery / "blue can" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (colour_gallery / "blue can" / "empty.png").write_bytes(b"")
    index = tmp_path / "idx"
    result = shitu("build-index", colour_gallery, "--index", index, "--model", tiny_model, "-q")
    assert result.exit_code == 0
    assert "broken.jpg" in result.stderr and "empty.png" in result.stderr
    assert "indexed 6 images" in result.stderr and "2 unreadable skipped" in result.stderr
    assert Database(index).count() == 6


def test_rebuild_reembeds_only_changes_and_keeps_ids(built_at, colour_gallery, tiny_model):
    before = {path: row[0] for path, row in stored_rows(built_at).items()}
    solid(colour_gallery / "blue can" / "shot 0.jpg", (0, 0, 250), fmt="PNG")  # changed content
    (colour_gallery / "red apple" / "deeper" / "shot 1.jpg").unlink()
    solid(colour_gallery / "new label" / "n.png", (120, 120, 0))
    result = shitu("build-index", colour_gallery, *built_at, "--model", tiny_model, "-q")
    assert "2 embedded, 4 reused, 2 removed" in result.stderr
    after = {path: row[0] for path, row in stored_rows(built_at).items()}
    unchanged = set(before) & set(after) - {"blue can/shot 0.jpg"}
    assert all(before[p] == after[p] for p in unchanged) and len(unchanged) == 4


def test_interrupted_rebuild_leaves_the_old_index(built_at, colour_gallery, tiny_model, monkeypatch, tmp_path):
    old_rows = sorted((path, row[1]) for path, row in stored_rows(built_at).items())
    solid(colour_gallery / "new label" / "n.png", (120, 120, 0))

    def crash(*_):
        raise KeyboardInterrupt  # the user hits Ctrl-C just before the swap (the alias switch in Milvus)

    if built_at[0] == "--index":
        monkeypatch.setattr(build_module, "fsync_path", crash)
    else:
        monkeypatch.setattr(milvus.MilvusStore, "publish_generation", crash)
    result = shitu("build-index", colour_gallery, *built_at, "--model", tiny_model, "-q")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    monkeypatch.undo()
    assert sorted((path, row[1]) for path, row in stored_rows(built_at).items()) == old_rows
    photo = solid(tmp_path / "q.png", (120, 120, 0))
    answer = json.loads(shitu("query", photo, *built_at, "--model", tiny_model, "--json").stdout)[0]
    assert answer["label"] != "new label" and len(answer["results"]) == 5
    assert shitu("check", *built_at, "--model", tiny_model).exit_code == 0
    if built_at[0] == "--index":
        store = Database(Path(built_at[1]))
        assert load_faiss(Path(built_at[1]), store.manifest()).ntotal == len(old_rows)


def test_index_of_another_model_is_refused(built_at, other_tiny_model, tmp_path):
    photo = solid(tmp_path / "q.png", (1, 2, 3))
    result = shitu("query", photo, *built_at, "--model", other_tiny_model)
    assert result.exit_code == 1 and "was built with model" in result.stderr
    assert "Traceback" not in result.output


def test_commands_without_model_use_the_one_the_index_was_built_with(built, tiny_model, tmp_path):
    photo = solid(tmp_path / "q.png", PALETTE["blue can"][0])
    answered = shitu("query", photo, "--index", built, "--json")  # no --model: the tiny model, remembered
    assert answered.exit_code == 0, answered.output
    assert json.loads(answered.stdout)[0]["label"] == "blue can"
    info = json.loads(shitu("info", "--index", built, "--json").stdout)
    assert info["model"]["path"] == str(tiny_model.resolve())
    moved = tiny_model.rename(tmp_path / "moved.onnx")  # gone from where the index remembers it
    try:
        refused = shitu("query", photo, "--index", built)
        assert refused.exit_code == 1 and "was built with model" in refused.stderr
    finally:
        moved.rename(tiny_model)


def test_fp32_and_int8_name_the_shipped_models(tmp_path, monkeypatch):
    from shitu.embed import default_model_path, resolve_model

    monkeypatch.chdir(tmp_path)
    assert resolve_model("int8") == default_model_path(int8=True)
    assert resolve_model("fp32") == default_model_path() == resolve_model(None)
    assert default_model_path(int8=True).name == "ppLCNet_x2_5_shitu.int8.onnx"
    (tmp_path / "int8").write_bytes(b"")  # a file of that name wins
    assert resolve_model("int8") == Path("int8")


@pytest.mark.parametrize("args,code,message", [
    (["query", "x.jpg", "--index", "{tmp}/none"], 1, "no index at"),
    (["build-index", "{tmp}/missing"], 1, "gallery folder not found"),
    (["eval", "--metric", "precision@1"], 1, "unknown metric"),
    (["query", "x.jpg", "--topk", "0"], 2, ""),
    (["build-index", "{gallery}", "--index-type", "Bogus", "--index", "{tmp}/i"], 1, "bad --index-type"),
    (["build-index", "{gallery}", "--model", "{tmp}/nope.onnx"], 1, "model not found"),
])
def test_mistakes_get_one_line_and_nonzero_exit(colour_gallery, tiny_model, tmp_path, args, code, message):
    args = [a.format(tmp=tmp_path, gallery=colour_gallery) for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny_model)]
    result = shitu(*args)
    assert result.exit_code == code, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_unreadable_query_image(built, tiny_model, tmp_path):
    good = solid(tmp_path / "good.png", (220, 30, 30))
    bad = tmp_path / "bad.jpg"
    bad.write_text("text")
    result = shitu("query", good, bad, "--index", built, "--model", tiny_model, "--json")
    assert result.exit_code == 1
    answers = json.loads(result.stdout)
    assert answers[0]["label"] == "red apple" and "not an image" in answers[1]["error"]
    assert "bad.jpg" in result.stderr


@pytest.mark.parametrize("index_type", ["Flat", "HNSW16", "IVF2,Flat"])
def test_index_types_agree_with_exact_search(colour_gallery, tiny_model, tmp_path, index_type):
    index = tmp_path / "idx"
    result = shitu("build-index", colour_gallery, "--index", index, "--model", tiny_model,
                   "--index-type", index_type, "-q")
    assert result.exit_code == 0, result.output
    got = json.loads(shitu("eval", "--index", index, "--model", tiny_model, "--json").stdout)
    assert got["recall@1"] == 1.0
    assert Database(index).manifest().index_type == index_type


def test_rebuild_never_reuses_removed_ids(built, colour_gallery, tiny_model):
    first = {r.id for r in Database(built).all_rows()}
    assert shitu("remove", "--label", "blue can", "--index", built).exit_code == 0
    solid(colour_gallery / "new label" / "n.png", (120, 120, 0))
    result = shitu("build-index", colour_gallery, "--index", built, "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output
    rows = Database(built).all_rows()
    fresh = {r.id for r in rows if r.label in ("new label", "blue can")}
    assert len(fresh) == 3 and min(fresh) > max(first)


def test_rebuild_keeps_the_file_old_readers_use(built, colour_gallery, tiny_model):
    old = Database(built).manifest().faiss_file
    (built / "vectors.7.faiss").write_bytes(b"stray file of a killed writer")
    assert shitu("build-index", colour_gallery, "--index", built, "--model", tiny_model, "-q").exit_code == 0
    new = Database(built).manifest().faiss_file
    assert new == "vectors.8.faiss" and sorted(p.name for p in built.glob("*.faiss")) == sorted({old, new})


def test_tables_print_labels_verbatim_never_as_markup(tmp_path, tiny_model):
    root = tmp_path / "g"
    solid(root / "k.png", (20, 200, 30))
    solid(root / "g.png", (240, 240, 235))
    solid(root / "c.png", (200, 20, 20))
    listing = tmp_path / "markup.list"
    listing.write_text("k.png\tKiwi [organic]\ng.png\t[bold]Garlic\nc.png\tCola [/can]\n", encoding="utf-8")
    index = tmp_path / "i"
    assert shitu("build-index", root, "--list", listing, "--index", index, "--model", tiny_model, "-q").exit_code == 0
    result = shitu("query", root / "c.png", "--index", index, "--model", tiny_model, "--topk", 3)
    assert result.exit_code == 0, result.output
    assert "c.png: Cola [/can]" in result.stdout
    for label in ("Kiwi [organic]", "[bold]Garlic", "Cola [/can]"):
        assert label in result.stdout
    result = shitu("info", "--index", index)
    assert result.exit_code == 0, result.output
    assert "Kiwi [organic]" in result.stdout and "[bold]Garlic" in result.stdout and "Cola [/can]" in result.stdout


STORE_HELP = ("Keep the index in Milvus instead of --index: milvus://[USER:PASSWORD@]HOST[:PORT]/COLLECTION (a "
              "server) or milvus-lite:PATH.db[/COLLECTION] (embedded Milvus Lite); needs pip install 'shitu[milvus]'.")


def as_read(output: str) -> str:
    """Help as one line of words: the panel borders and the wrapping gone."""
    return " ".join(output.replace("\u2502", " ").split())


def test_every_help_renders_its_brackets_as_written():
    """Typer renders help as rich markup: '[/COLLECTION]' in --store's help once crashed every --help that
    has the option, and '[milvus]' would vanish as an unknown style."""
    import typer

    commands = typer.main.get_command(app).commands
    assert shitu("--help").exit_code == 0
    with_store = set()
    for name, command in commands.items():
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (name, result.output, result.exception)
        shown = as_read(result.output)
        for text in [command.help] + [param.help for param in command.params]:
            if text:  # the command's and each option's help as its author wrote it, brackets included
                assert as_read(text.replace("\\[", "[")) in shown, (name, text)
        if any("--store" in param.opts for param in command.params):
            with_store.add(name)
            assert STORE_HELP in shown, name
    assert {"build-index", "add", "remove", "check", "info", "query", "eval", "calibrate", "serve"} <= with_store


def test_help_without_rich_shows_no_escapes():
    """TYPER_USE_RICH=0 prints help as plain text: the brackets must not come with backslashes."""
    import os

    result = subprocess.run([sys.executable, "-m", "shitu", "check", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "TYPER_USE_RICH": "0", "COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    assert STORE_HELP in as_read(result.stdout) and "\\" not in result.stdout


def test_eval_matches_nfd_query_labels_and_warns_about_dropped_queries(tmp_path, tiny_model):
    import unicodedata

    gallery, queries = tmp_path / "g", tmp_path / "q"
    for form, root in (("NFC", gallery), ("NFD", queries)):
        solid(root / unicodedata.normalize(form, "Crème Brûlée") / "a.png", (240, 230, 200))
        solid(root / unicodedata.normalize(form, "Kiwi Café") / "a.png", (20, 200, 30))
    solid(queries / "Durian" / "a.png", (200, 200, 20))  # a label the gallery does not hold
    index = tmp_path / "i"
    assert shitu("build-index", gallery, "--index", index, "--model", tiny_model, "-q").exit_code == 0
    result = shitu("eval", "--index", index, "--model", tiny_model, "--queries", queries, "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["queries"] == 2 and json.loads(result.stdout)["recall@1"] == 1.0
    assert "warning: left out 1 of 3 queries" in result.stderr and "'Durian'" in result.stderr


def test_add_label_is_stored_in_nfc(built, colour_gallery, tiny_model):
    import unicodedata

    photo = solid(colour_gallery / "new" / "p.png", (240, 241, 236))
    result = shitu("add", photo, "--label", unicodedata.normalize("NFD", "Crème Fraîche"), "--index", built,
                   "--model", tiny_model, "-q")
    assert result.exit_code == 0, result.output
    assert Database(built).label_counts()["Crème Fraîche"] == 3


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_float_flag_must_be_finite(built, tiny_model, tmp_path, value):
    photo = solid(tmp_path / "q.png", (210, 35, 25))
    result = shitu("query", photo, "--index", built, "--model", tiny_model, "--threshold", value, "--json")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: --threshold must be a finite number, got {float(value)}"]


def test_query_streams_many_photos_in_bounded_batches(built, tiny_model, tmp_path, monkeypatch):
    import threading

    from shitu.embed import Embedder

    photo = solid(tmp_path / "q.png", (210, 35, 25))
    waiting, peak, lock = [0], [0], threading.Lock()
    preprocess, embed_arrays = Embedder.preprocess, Embedder.embed_arrays

    def counted_preprocess(self, *args, **kwargs):
        out = preprocess(self, *args, **kwargs)
        with lock:
            waiting[0] += 1
            peak[0] = max(peak[0], waiting[0])
        return out

    def counted_embed(self, batch, *args, **kwargs):
        with lock:
            waiting[0] -= len(batch)
        return embed_arrays(self, batch, *args, **kwargs)

    monkeypatch.setattr(Embedder, "preprocess", counted_preprocess)
    monkeypatch.setattr(Embedder, "embed_arrays", counted_embed)
    result = shitu("query", *[photo] * 300, "--index", built, "--model", tiny_model, "--topk", 1, "--json")
    assert result.exit_code == 0, result.output
    assert [a["label"] for a in json.loads(result.stdout)] == ["red apple"] * 300
    import os
    assert peak[0] <= 2 * 8 * (os.cpu_count() or 1)  # two batches of 8 per worker in flight, never all 300


def test_the_command_is_installed_from_inside_the_package():
    """An install puts ``shitu`` and ``python -m shitu`` on the package, not a top-level module named
    ``cli`` that would collide with any other package doing the same."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"] == {"shitu": "shitu.cli:app"}
    assert "py-modules" not in project["tool"]["setuptools"]
    result = subprocess.run([sys.executable, "-m", "shitu", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "build-index" in result.stdout


def test_list_options_are_repeatable(colour_gallery, tiny_model, tmp_path):
    items = [f"{p.relative_to(colour_gallery).as_posix()}\t{p.relative_to(colour_gallery).parts[0]}"
             for p in sorted(colour_gallery.rglob("*.jpg"))]
    (tmp_path / "first.txt").write_text("\n".join(items[:3]) + "\n", encoding="utf-8")
    (tmp_path / "rest.txt").write_text("\n".join(items[2:]) + "\n", encoding="utf-8")  # one photo in both
    index = tmp_path / "index"
    built = shitu("build-index", colour_gallery, "--index", index, "--model", tiny_model, "-q",
                  "--list", tmp_path / "first.txt", "--list", tmp_path / "rest.txt")
    assert built.exit_code == 0, built.output
    assert json.loads(shitu("info", "--index", index, "--json").stdout)["count"] == 6
    evaluated = shitu("eval", "--index", index, "--queries", colour_gallery, "--json",
                      "--queries-list", tmp_path / "first.txt", "--queries-list", tmp_path / "rest.txt")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["queries"] == 6
