"""``shitu.index.Index``, the library API: every method on a real gallery of synthetic product photos and
the shipped model, and an index written by the code before the API existed."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from shitu.embed import default_model_path
from shitu.errors import ShituError
from shitu.gallery import GalleryItem, read_gallery
from shitu.index import Answer, Index
from shitu.index.files import write_lock
from tests.conftest import REPO

DEMO = REPO / "tests" / "synthetic" / "demo"
QUERIES = REPO / "tests" / "synthetic" / "queries"
OLD_INDEX = REPO / "tests" / "fixtures" / "index-8d5b784"
LABELS = ["Café Crema", "Sunny Cola", "Tomato Soup"]


def photo(label: str) -> Path:
    """A gallery photo of ``label``: as a query it finds itself (the synthetic query photos are too hard
    for the shipped model to make reliable tests)."""
    return DEMO / label / "01_catalogue.jpg"


def query_items(*labels: str) -> list[GalleryItem]:
    return [GalleryItem(photo(label), f"{label}.jpg", label) for label in labels]


def unknown_items(*labels: str) -> list[GalleryItem]:
    return [GalleryItem(QUERIES / f"{label}__1.jpg", f"{label}__1.jpg", label) for label in labels]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("api") / "gallery"
    for label in LABELS:
        shutil.copytree(DEMO / label, root / label)
    return root


@pytest.fixture(scope="module")
def built(gallery, tmp_path_factory):
    """An index of the gallery, built once; tests that change an index work on a copy."""
    directory = tmp_path_factory.mktemp("api-index") / "idx"
    report = Index(directory).build(read_gallery(gallery))
    assert (report.images, report.labels, report.embedded, report.index_type) == (9, 3, 9, "Flat")
    return directory


@pytest.fixture
def copy(built, tmp_path):
    shutil.copytree(built, tmp_path / "idx")
    return tmp_path / "idx"


def test_model_is_resolved_once_from_the_manifest(built, tmp_path):
    assert Index(built).model_path == default_model_path().resolve()
    assert Index(tmp_path / "none").model_path == default_model_path()
    assert Index(built, "int8").model_path == default_model_path(int8=True)


def test_info_is_what_the_cli_prints(built):
    from shitu.cli import app

    result = CliRunner().invoke(app, ["info", "--index", str(built), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == Index(built).info()
    info = Index(built).info()
    assert info["count"] == 9 and info["label_counts"] == dict.fromkeys(LABELS, 3) and info["threshold"] is None


def test_labels_images_and_image(built, gallery):
    index = Index(built)
    assert index.labels() == dict.fromkeys(LABELS, 3)
    rows = index.images()
    assert [row.id for row in rows] == list(range(1, 10))
    assert [row.id for row in index.images(offset=2, limit=3)] == [3, 4, 5]
    assert [row.path for row in index.images("Sunny Cola")] == [f"Sunny Cola/{name}" for name in
                                                                 sorted(p.name for p in (gallery / "Sunny Cola").iterdir())]
    assert index.images("no such label") == [] and index.images(limit=0) == []
    assert index.image(4) == rows[3]
    assert index.image_file(4) == gallery.resolve() / rows[3].path
    for mistake in (lambda: index.image(99), lambda: index.image_file(99), lambda: index.images(offset=-1),
                    lambda: index.images(limit="all"), lambda: index.image("1")):
        with pytest.raises(ShituError):
            mistake()


def test_query_paths_and_uploads(built):
    index = Index(built)
    path = photo("Sunny Cola")
    by_path, by_bytes = index.query([path, path.read_bytes()], topk=3)
    assert by_path.label == "Sunny Cola" and len(by_path.results) == 3 and by_path.error is None
    assert by_path.results[0].path == "Sunny Cola/01_catalogue.jpg" and by_path.results[0].score > 0.999
    assert by_bytes.image == "upload-2" and by_bytes.results == by_path.results
    assert by_path.image == str(path)
    assert index.query([path], threshold=1.01)[0].label is None
    with pytest.raises(ShituError):
        index.query([path], topk=0)


def test_bad_uploads_get_an_error_not_an_exception(built):
    bomb = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(bomb, format="PNG")  # 100 MP in a few kilobytes
    good = photo("Tomato Soup").read_bytes()
    answers = Index(built).query([good[:len(good) // 3], b"not an image", bomb.getvalue(), good])
    assert [a.image for a in answers] == ["upload-1", "upload-2", "upload-3", "upload-4"]
    assert all(isinstance(a, Answer) for a in answers)
    assert "damaged image" in answers[0].error and "not an image" in answers[1].error
    assert "MP limit" in answers[2].error
    assert answers[3].error is None and answers[3].label == "Tomato Soup"


def test_evaluate_and_open_set(built, tmp_path):
    index = Index(built)
    leave_one_out = index.evaluate(["recall@1", "map@r"])
    assert leave_one_out["gallery"] == 9 and leave_one_out["queries"] == 9 and leave_one_out["recall@1"] > 0.5
    known = index.evaluate(["recall@1"], query_items(*LABELS))
    assert known["queries"] == 3 and known["recall@1"] == 1.0
    report = tmp_path / "report.html"
    evaluation = index.evaluate_open_set(query_items(*LABELS), ["recall@1"], unknown_items("Oat Biscuits"),
                                         report=report)
    assert evaluation.curve is not None and report.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    with pytest.raises(ShituError, match="between 0 and 1"):
        index.evaluate_open_set(query_items(*LABELS), ["recall@1"], unknown_items("Oat Biscuits"), 2.0)


def test_calibrate_stores_the_threshold_queries_use(copy):
    index = Index(copy)
    record = index.calibrate(query_items(*LABELS), unknown_items("Oat Biscuits", "Müsli Crunch"))
    assert index.threshold == record["value"] == index.info()["threshold"]
    assert Index(copy).info()["calibration"] == record


def test_add_and_remove_by_id(copy, gallery, tmp_path):
    extra = gallery.parent / "extra"
    shutil.copytree(DEMO / "Oat Biscuits", extra / "Oat Biscuits")
    index = Index(copy)
    assert index.labels() == dict.fromkeys(LABELS, 3)  # a snapshot the add must replace
    with pytest.raises(ShituError, match="outside the gallery folder"):
        index.add([extra / "Oat Biscuits"])
    shutil.copytree(DEMO / "Oat Biscuits", gallery / "Oat Biscuits", dirs_exist_ok=True)
    try:
        report = index.add([gallery / "Oat Biscuits"])
        assert (report.added, report.count, report.labels) == (3, 12, 4)
        assert index.labels()["Oat Biscuits"] == 3
        assert index.query([photo("Oat Biscuits")])[0].label == "Oat Biscuits"
        new_ids = [row.id for row in index.images("Oat Biscuits")]
        assert new_ids == [10, 11, 12]
        before = index.images(limit=1000)
        with pytest.raises(ShituError, match="no images with ids 99, 100"):
            index.remove(ids=[10, 99, 100])
        assert index.images(limit=1000) == before
        removed = index.remove(ids=[10, 11], labels=["Tomato Soup"])
        assert (removed.removed, removed.count) == (5, 7)
        assert [row.id for row in index.images(limit=1000)] == [1, 2, 3, 4, 5, 6, 12]
        with pytest.raises(ShituError, match="say what to remove"):
            index.remove()
    finally:
        shutil.rmtree(gallery / "Oat Biscuits")


def test_a_second_writer_is_refused_at_once(copy):
    with write_lock(copy):
        with pytest.raises(ShituError, match="another shitu process is changing the index"):
            Index(copy).remove(labels=["Sunny Cola"])
    assert Index(copy).labels()["Sunny Cola"] == 3


def test_check_and_repair(copy):
    index = Index(copy)
    assert index.check().ok
    live = index.info()["faiss_file"]
    (copy / live).unlink()
    damaged = index.check()
    assert not damaged.ok and any(live in problem for problem in damaged.problems)
    repaired = index.check(repair=True)
    assert repaired.ok and repaired.repaired
    assert index.query([photo("Café Crema")])[0].label == "Café Crema"


def test_build_vectors(built, tmp_path):
    import numpy as np

    snapshot = Index(built).read(with_vectors=True)
    items = [GalleryItem(tmp_path / f"p{n}.jpg", f"label {n % 2}/p{n}.jpg", f"label {n % 2}") for n in range(9)]
    index = Index(tmp_path / "synthetic")
    report = index.build_vectors(items, snapshot.vectors, "auto", "synthetic")
    assert (report.images, report.labels, report.embedded) == (9, 2, 0)
    assert index.labels() == {"label 0": 5, "label 1": 4}
    with pytest.raises(ShituError, match="unit length"):
        index.build_vectors(items, np.ones_like(snapshot.vectors))


def test_no_index_is_one_clear_error(tmp_path):
    for call in (lambda index: index.labels(), lambda index: index.query([photo("Café Crema")]),
                 lambda index: index.info(), lambda index: index.remove(labels=["x"])):
        with pytest.raises(ShituError, match="no index at"):
            call(Index(tmp_path / "none"))
    assert not (tmp_path / "none").exists()


def test_an_index_built_before_the_api_still_opens_and_changes(tmp_path):
    """The fixture was written by the code at 8d5b784 (see its README)."""
    directory = tmp_path / "old"
    shutil.copytree(OLD_INDEX, directory)
    index = Index(directory)
    assert index.labels() == {"Café Crema": 3, "Sunny Cola": 3, "Tomato Soup": 2}
    assert index.info()["generation"] == 2 and index.check().ok
    assert index.query([photo("Tomato Soup")])[0].label == "Tomato Soup"
    index.remove(ids=[1])
    assert [row.id for row in index.images()] == [2, 3, 4, 5, 6, 7, 8]
    assert index.check().ok and index.info()["generation"] == 3
