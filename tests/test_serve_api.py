"""``shitu serve``'s HTTP API through FastAPI's TestClient: every endpoint, every bad input, on real indexes
of the synthetic product photos built with the shipped model."""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'shitu[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from shitu.cli import app as cli  # noqa: E402
from shitu.embed import Embedder, default_model_path  # noqa: E402
from shitu.gallery import read_gallery  # noqa: E402
from shitu.index import Index  # noqa: E402
from shitu.serve.app import create_app  # noqa: E402
from shitu.serve.server import is_loopback  # noqa: E402
from shitu.serve.service import Service  # noqa: E402
from tests.conftest import REPO  # noqa: E402

DEMO = REPO / "tests" / "synthetic" / "demo"
LABELS = ["Café Crema", "Tomato Soup"]
NEWCOMER = DEMO / "Sunny Cola" / "01_catalogue.jpg"  # a product the test indexes do not hold
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def photo(label: str, name: str = "01_catalogue.jpg") -> Path:
    return DEMO / label / name


def upload(*paths: Path, name: str | None = None) -> list:
    return [("images", (name or path.name, path.read_bytes(), "image/jpeg")) for path in paths]


def raw(data: bytes, name: str = "photo.jpg") -> list:
    return [("images", (name, data, "image/jpeg"))]


@pytest.fixture(scope="module")
def embedder():
    return Embedder(default_model_path())


def build(root: Path, embedder) -> Path:
    gallery = root / "gallery"
    for label in LABELS:
        shutil.copytree(DEMO / label, gallery / label)
    directory = root / "index"
    Index(directory, embedder=embedder).build(read_gallery(gallery))
    return directory


def client_for(directory: Path, embedder, token=TOKEN, limit=20 << 20) -> TestClient:
    service = Service(Index(directory, embedder=embedder), token, limit)
    service.warm()
    return TestClient(create_app(service))


@pytest.fixture(scope="module")
def shared(tmp_path_factory, embedder):
    """A read-only index and its client, for the tests that change nothing."""
    directory = build(tmp_path_factory.mktemp("serve-read"), embedder)
    return directory, client_for(directory, embedder)


@pytest.fixture
def writable(tmp_path, embedder):
    """A fresh index, gallery and client per test that writes."""
    directory = build(tmp_path, embedder)
    return directory, tmp_path / "gallery", client_for(directory, embedder)


@contextmanager
def another_writer(directory: Path):
    """Hold the index's writer lock as another process would: flock on the index folder."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(descriptor)


def files_below(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def cli_json(*args) -> object:
    result = CliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def jpeg_bytes(size=(64, 48), colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG")
    return out.getvalue()


def assert_error(response, status: int, *words: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "Traceback" not in body["error"]
    for word in words:
        assert word in body["error"]


# -- reading -----------------------------------------------------------------------------------------
def test_healthz(shared):
    assert shared[1].get("/healthz").json() == {"status": "ok"}


def test_info_is_what_info_json_prints(shared):
    directory, client = shared
    assert client.get("/v1/info").json() == cli_json("info", "--index", directory, "--json")


def test_labels_count_images(shared):
    assert shared[1].get("/v1/labels").json() == {"Café Crema": 3, "Tomato Soup": 3}


def test_images_by_label_and_pages(shared):
    client = shared[1]
    everything = client.get("/v1/images").json()
    assert [row["id"] for row in everything] == sorted(row["id"] for row in everything) and len(everything) == 6
    crema = client.get("/v1/images", params={"label": "Café Crema"}).json()
    assert {row["path"] for row in crema} == {f"Café Crema/{p.name}" for p in (DEMO / "Café Crema").iterdir()}
    assert set(crema[0]) == {"id", "label", "path", "sha256"}
    page = client.get("/v1/images", params={"offset": 2, "limit": 3}).json()
    assert page == everything[2:5]
    assert client.get("/v1/images", params={"label": "no such label"}).json() == []


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 5000}, {"offset": -1}, {"limit": "many"}])
def test_images_refuse_bad_pages(shared, params):
    assert_error(shared[1].get("/v1/images", params=params), 400)


def test_thumbnail_is_a_small_jpeg(shared):
    client = shared[1]
    first = client.get("/v1/images").json()[0]
    response = client.get(f"/v1/images/{first['id']}/thumbnail")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and max(image.size) <= 256
    assert client.get(f"/v1/images/{first['id']}/thumbnail").content == response.content  # cached


def test_thumbnail_of_unknown_id_and_bad_id(shared):
    assert_error(shared[1].get("/v1/images/99999/thumbnail"), 404, "99999")
    assert_error(shared[1].get("/v1/images/abc/thumbnail"), 400, "image_id")


def test_thumbnail_of_a_photo_gone_from_disk(writable):
    directory, gallery, client = writable
    row = client.get("/v1/images").json()[0]
    (gallery / row["path"]).unlink()
    assert_error(client.get(f"/v1/images/{row['id']}/thumbnail"), 404, "no longer")


def test_query_is_what_query_json_prints(shared):
    directory, client = shared
    path = photo("Tomato Soup")
    response = client.post("/v1/query", files=upload(path), params={"topk": 3})
    assert response.status_code == 200
    [answer] = response.json()
    [expected] = cli_json("query", path, "--index", directory, "--topk", 3, "--json")
    assert answer == {**expected, "image": "upload-1"}
    assert answer["label"] == "Tomato Soup" and len(answer["results"]) == 3


def test_query_several_photos_topk_and_threshold(shared):
    client = shared[1]
    response = client.post("/v1/query", files=upload(photo("Café Crema"), photo("Tomato Soup")),
                           params={"topk": 1, "threshold": 1.5})
    answers = response.json()
    assert [a["image"] for a in answers] == ["upload-1", "upload-2"]
    assert [a["label"] for a in answers] == [None, None]  # no cosine reaches 1.5
    assert [a["results"][0]["label"] for a in answers] == ["Café Crema", "Tomato Soup"]


# -- bad input: each gets one 4xx JSON error and changes nothing ------------------------------------------
def truncated_jpeg() -> bytes:
    return photo("Café Crema").read_bytes()[:2000]


def bomb_png() -> bytes:
    """A 20000 x 20000 PNG of a few KB: 400 MP once decoded."""
    out = io.BytesIO()
    Image.new("1", (20000, 20000)).save(out, "PNG")
    return out.getvalue()


BAD_PHOTOS = {
    "not an image": (b"hello, I am text", "not an image"),
    "truncated": (None, "damaged"),
    "decompression bomb": (None, "pixels"),
    "empty": (b"", "empty"),
}


def bad_photo(kind: str) -> bytes:
    data, _ = BAD_PHOTOS[kind]
    return {"truncated": truncated_jpeg, "decompression bomb": bomb_png}.get(kind, lambda: data)()


@pytest.mark.parametrize("kind", ["not an image", "truncated", "decompression bomb"])
def test_query_refuses_unreadable_photos(shared, kind):
    response = shared[1].post("/v1/query", files=raw(bad_photo(kind), "../../etc/passwd"))
    assert_error(response, 400, "upload-1", "passwd", BAD_PHOTOS[kind][1])


def test_query_refuses_when_one_photo_of_several_is_bad(shared):
    files = upload(photo("Café Crema")) + raw(b"nope", "notes.txt")
    assert_error(shared[1].post("/v1/query", files=files), 400, "upload-2", "notes.txt")


@pytest.mark.parametrize("params, word", [({"topk": 0}, "topk"), ({"topk": 101}, "topk"), ({"topk": "x"}, "topk"),
                                          ({"threshold": "nan"}, "threshold"), ({"threshold": "high"}, "threshold")])
def test_query_refuses_bad_parameters(shared, params, word):
    assert_error(shared[1].post("/v1/query", files=upload(photo("Café Crema")), params=params), 400, word)


def test_query_without_photos(shared):
    assert_error(shared[1].post("/v1/query"), 400, "images")
    assert_error(shared[1].post("/v1/query", data={"images": "not a file"}), 400, "images")


def test_uploads_over_the_limit_get_413(shared, embedder):
    client = client_for(shared[0], embedder, limit=100_000)
    big = photo("Café Crema").read_bytes() * 10
    assert_error(client.post("/v1/query", files=raw(big)), 413, "upload limit")

    def chunks():  # no Content-Length: counted while it streams
        for _ in range(50):
            yield b"x" * 10_000

    response = client.post("/v1/query", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(response, 413, "upload limit")
    assert client.post("/v1/query", files=upload(photo("Café Crema"))).status_code == 200


def test_unknown_paths_and_methods_are_json(shared):
    assert_error(shared[1].get("/v1/nothing"), 404)
    assert_error(shared[1].put("/v1/labels"), 405)


def test_a_bug_is_a_500_without_traceback(shared, embedder, monkeypatch):
    service = Service(Index(shared[0], embedder=embedder))
    monkeypatch.setattr(service, "labels", lambda: 1 / 0)
    response = TestClient(create_app(service)).get("/v1/labels")
    assert_error(response, 500, "internal server error")
    assert "ZeroDivision" not in response.text


# -- writing -----------------------------------------------------------------------------------------------
def test_add_stores_the_photo_and_the_next_query_sees_it(writable):
    directory, gallery, client = writable
    before = client.post("/v1/query", files=upload(NEWCOMER)).json()[0]
    assert before["results"][0]["label"] != "Fresh Cola"
    response = client.post("/v1/images", files=upload(NEWCOMER, name="../../../outside.jpg"),
                           data={"label": "Fresh Cola"}, headers=AUTH)
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["added"], report["count"], report["labels"]) == (1, 7, 3)
    [row] = report["images"]
    digest = row["sha256"]
    assert row["path"] == f"Fresh Cola/{digest}.jpg" and row["label"] == "Fresh Cola"
    assert (gallery / "Fresh Cola" / f"{digest}.jpg").read_bytes() == NEWCOMER.read_bytes()
    assert not (gallery.parent / "outside.jpg").exists() and not list(gallery.parent.parent.glob("outside*"))
    after = client.post("/v1/query", files=upload(NEWCOMER)).json()[0]
    assert after["label"] == "Fresh Cola" and after["results"][0]["score"] > 0.999
    assert client.get("/v1/labels").json()["Fresh Cola"] == 1
    assert client.get(f"/v1/images/{row['id']}/thumbnail").status_code == 200
    assert Index(directory).check().ok


def test_add_the_same_photo_twice_changes_nothing(writable):
    directory, gallery, client = writable
    first = client.post("/v1/images", files=upload(NEWCOMER), data={"label": "Fresh Cola"}, headers=AUTH).json()
    again = client.post("/v1/images", files=upload(NEWCOMER), data={"label": " Fresh Cola "}, headers=AUTH).json()
    assert (again["added"], again["unchanged"], again["count"]) == (0, 1, first["count"])
    assert again["images"] == first["images"]
    assert len(list((gallery / "Fresh Cola").iterdir())) == 1


def test_add_several_photos_to_an_existing_label(writable):
    _, gallery, client = writable
    files = upload(photo("Sunny Cola", "02_rotated.jpg"), photo("Sunny Cola", "03_lighting.jpg"))
    report = client.post("/v1/images", files=files, data={"label": "Tomato Soup"}, headers=AUTH).json()
    assert report["added"] == 2 and client.get("/v1/labels").json()["Tomato Soup"] == 5
    assert len([p for p in (gallery / "Tomato Soup").iterdir()]) == 5


@pytest.mark.parametrize("headers, status", [({}, 401), ({"Authorization": "Bearer wrong"}, 403),
                                             ({"Authorization": TOKEN}, 401), ({"Authorization": "Basic x"}, 401)])
def test_writes_need_the_token(writable, headers, status):
    directory, gallery, client = writable
    before = files_below(gallery), client.get("/v1/images").json()
    row = before[1][0]
    assert_error(client.post("/v1/images", files=upload(NEWCOMER), data={"label": "x"}, headers=headers), status)
    assert_error(client.delete(f"/v1/images/{row['id']}", headers=headers), status)
    assert_error(client.delete("/v1/labels/Tomato Soup", headers=headers), status)
    assert (files_below(gallery), client.get("/v1/images").json()) == before


def test_the_scheme_name_is_case_insensitive(writable):
    _, _, client = writable
    response = client.delete("/v1/labels/Tomato Soup", headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status_code == 200


@pytest.mark.parametrize("label, word", [("", "empty"), ("   ", "empty"), ("../evil", "folder"), ("a/b", "folder"),
                                         ("a\\b", "folder"), ("..", "folder"), (".hidden", "hidden"),
                                         ("tab\there", "control"), ("x" * 300, "longer")])
def test_add_refuses_bad_labels(writable, label, word):
    directory, gallery, client = writable
    before = files_below(gallery.parent)
    response = client.post("/v1/images", files=upload(NEWCOMER), data={"label": label}, headers=AUTH)
    assert_error(response, 400, word)
    assert files_below(gallery.parent) == before


def test_add_without_label_or_photos(writable):
    _, _, client = writable
    assert_error(client.post("/v1/images", files=upload(NEWCOMER), headers=AUTH), 400, "label")
    assert_error(client.post("/v1/images", data={"label": "x"}, headers=AUTH), 400, "images")


@pytest.mark.parametrize("kind", list(BAD_PHOTOS))
def test_add_refuses_unreadable_photos_and_writes_nothing(writable, kind):
    directory, gallery, client = writable
    before = files_below(gallery.parent), client.get("/v1/info").json()["count"]
    files = upload(NEWCOMER) + raw(bad_photo(kind), "../../x.jpg")  # one good photo does not get in either
    response = client.post("/v1/images", files=files, data={"label": "Fresh Cola"}, headers=AUTH)
    assert_error(response, 400, "upload-2", BAD_PHOTOS[kind][1])
    assert (files_below(gallery.parent), client.get("/v1/info").json()["count"]) == before


def test_add_refuses_formats_the_gallery_cannot_hold(writable):
    _, gallery, client = writable
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(out, "PPM")
    response = client.post("/v1/images", files=raw(out.getvalue(), "a.ppm"), data={"label": "x"}, headers=AUTH)
    assert_error(response, 400, "PPM")
    assert not (gallery / "x").exists()


def test_a_failed_add_leaves_no_files_behind(writable):
    """Another process holds the writer lock: 409, and the photo written for the add is gone again."""
    directory, gallery, client = writable
    before = files_below(gallery.parent)
    with another_writer(directory):
        response = client.post("/v1/images", files=upload(NEWCOMER), data={"label": "Fresh Cola"}, headers=AUTH)
        assert_error(response, 409, "another shitu process")
        assert_error(client.delete("/v1/labels/Tomato Soup", headers=AUTH), 409)
    assert files_below(gallery.parent) == before
    assert client.get("/v1/labels").json() == {"Café Crema": 3, "Tomato Soup": 3}


def test_a_failed_add_keeps_a_photo_that_was_already_there(writable):
    directory, gallery, client = writable
    first = client.post("/v1/images", files=upload(NEWCOMER), data={"label": "Fresh Cola"}, headers=AUTH).json()
    stored = gallery / first["images"][0]["path"]
    with another_writer(directory):
        response = client.post("/v1/images", files=upload(NEWCOMER), data={"label": "Fresh Cola"}, headers=AUTH)
    assert response.status_code == 409 and stored.is_file()
    assert Index(directory).check().ok


def test_a_gallery_that_cannot_take_the_photo(writable):
    """A file where the label folder should be: a plain 500 message, and the index is as it was."""
    directory, gallery, client = writable
    (gallery / "Fresh Cola").write_text("in the way")
    response = client.post("/v1/images", files=upload(NEWCOMER), data={"label": "Fresh Cola"}, headers=AUTH)
    assert_error(response, 500, "cannot store the photos", "not changed")
    assert client.get("/v1/labels").json() == {"Café Crema": 3, "Tomato Soup": 3}


def test_a_gallery_that_is_gone(writable):
    directory, gallery, client = writable
    shutil.rmtree(gallery)
    response = client.post("/v1/images", files=upload(NEWCOMER), data={"label": "Fresh Cola"}, headers=AUTH)
    assert_error(response, 400, "is gone")
    assert not gallery.exists()


def test_remove_an_image(writable):
    directory, gallery, client = writable
    rows = client.get("/v1/images", params={"label": "Tomato Soup"}).json()
    target = next(row for row in rows if row["path"].endswith("01_catalogue.jpg"))
    response = client.delete(f"/v1/images/{target['id']}", headers=AUTH)
    assert response.status_code == 200 and response.json()["removed"] == 1 and response.json()["count"] == 5
    answer = client.post("/v1/query", files=upload(photo("Tomato Soup")), params={"topk": 6}).json()[0]
    assert target["path"] not in [match["path"] for match in answer["results"]]
    assert_error(client.get(f"/v1/images/{target['id']}/thumbnail"), 404)
    assert (gallery / target["path"]).is_file()  # the gallery keeps its photo, as with `shitu remove`
    assert Index(directory).check().ok


def test_remove_unknown_or_bad_ids(writable):
    _, _, client = writable
    before = client.get("/v1/images").json()
    assert_error(client.delete("/v1/images/424242", headers=AUTH), 404, "424242")
    assert_error(client.delete("/v1/images/-1", headers=AUTH), 404)
    assert_error(client.delete("/v1/images/one", headers=AUTH), 400, "image_id")
    assert client.get("/v1/images").json() == before


def test_remove_a_label(writable):
    directory, _, client = writable
    response = client.delete("/v1/labels/Caf%C3%A9%20Crema", headers=AUTH)
    assert response.status_code == 200 and response.json()["removed"] == 3
    assert client.get("/v1/labels").json() == {"Tomato Soup": 3}
    answer = client.post("/v1/query", files=upload(photo("Café Crema"))).json()[0]
    assert {match["label"] for match in answer["results"]} == {"Tomato Soup"}
    assert_error(client.delete("/v1/labels/Café Crema", headers=AUTH), 404, "no label")
    assert Index(directory).check().ok


def test_remove_a_label_that_has_a_slash(writable, tmp_path):
    """Labels from a list file may hold '/': the path converter still routes them."""
    directory, gallery, client = writable
    assert_error(client.delete("/v1/labels/no/such", headers=AUTH), 404, "no/such")


def test_without_a_token_writes_are_open(writable, embedder):
    directory, _, _ = writable
    client = client_for(directory, embedder, token=None)
    assert client.delete("/v1/labels/Tomato Soup").status_code == 200


# -- the page and the OpenAPI description ------------------------------------------------------------------
def test_the_page_and_its_files_need_nothing_from_outside(shared):
    client = shared[1]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200 and asset.rsplit("/", 1)[1] in page.text
        assert "http://" not in response.text and "https://" not in response.text
    assert "http://" not in page.text and "https://" not in page.text


def test_openapi_lists_every_endpoint(shared):
    paths = shared[1].get("/openapi.json").json()["paths"]
    assert {"/healthz", "/v1/query", "/v1/info", "/v1/labels", "/v1/images", "/v1/images/{image_id}/thumbnail",
            "/v1/images/{image_id}", "/v1/labels/{label}"} <= set(paths)
    assert shared[1].get("/docs").status_code == 200


# -- the command --------------------------------------------------------------------------------------------
def test_loopback_hosts():
    assert all(map(is_loopback, ["127.0.0.1", "localhost", "::1", "127.0.0.2"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.4", "::", "example.org"]))


def serve_command(*args) -> list[str]:
    return [sys.executable, "-m", "shitu", "serve", *map(str, args)]


def test_serve_warns_without_a_token_off_loopback(shared):
    process = subprocess.Popen(serve_command("--index", shared[0], "--host", "0.0.0.0", "--port", 0), cwd=REPO,
                               stderr=subprocess.PIPE, text=True, env=without_token())
    try:
        lines = [process.stderr.readline() for _ in range(2)]
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert lines[0].startswith("warning: 0.0.0.0 is reachable from other machines and no token is set")
    assert lines[1].startswith(f"serving {shared[0]} (6 images) on http://0.0.0.0:")


def without_token() -> dict:
    import os

    return {key: value for key, value in os.environ.items() if key != "SHITU_TOKEN"}


def test_serve_refuses_clearly(shared, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    cases = [(("--index", tmp_path / "none"), "error: "),
             (("--index", shared[0], "--port", port), f"cannot listen on 127.0.0.1:{port}"),
             (("--index", shared[0], "--token", " "), "the token is empty"),
             (("--index", shared[0], "--max-upload-mb", 0), "--max-upload-mb must be above 0")]
    try:
        for args, message in cases:
            result = subprocess.run(serve_command(*args), cwd=REPO, capture_output=True, text=True, timeout=120,
                                    env=without_token())
            assert result.returncode == 1, (args, result.stderr)
            assert message in result.stderr and "Traceback" not in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    finally:
        taken.close()


def test_the_service_imports_no_torch():
    code = "import sys, shitu.serve.app, shitu.serve.server; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0
