"""``shitu serve`` on a Milvus store (embedded Milvus Lite): the same service, the same answers."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'shitu[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx: pip install httpx")
pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (no wheel for this platform?): "
                    "pip install 'shitu[milvus]'")

from fastapi.testclient import TestClient  # noqa: E402

from shitu.gallery import read_gallery  # noqa: E402
from shitu.index import Index  # noqa: E402
from shitu.serve.app import create_app  # noqa: E402
from shitu.serve.service import Service  # noqa: E402
from tests.test_serve_api import AUTH, DEMO, LABELS, NEWCOMER, TOKEN, embedder, photo, upload  # noqa: E402, F401


def test_the_service_answers_adds_and_removes_on_a_milvus_store(tmp_path, embedder):  # noqa: F811
    gallery = tmp_path / "gallery"
    for label in LABELS:
        shutil.copytree(DEMO / label, gallery / label)
    store = f"milvus-lite:{tmp_path / 'shop.db'}/gallery"
    Index(store=store, embedder=embedder).build(read_gallery(gallery))
    service = Service(Index(store=store, embedder=embedder), TOKEN)
    service.warm()
    client = TestClient(create_app(service))

    assert client.get("/v1/labels").json() == {label: 3 for label in LABELS}
    answer = client.post("/v1/query", files=upload(photo("Café Crema"))).json()[0]
    assert answer["label"] == "Café Crema" and answer["results"][0]["score"] > 0.999

    added = client.post("/v1/images", files=upload(NEWCOMER), data={"label": "Fresh Cola"}, headers=AUTH)
    assert added.status_code == 200, added.text
    [row] = added.json()["images"]
    assert (gallery / row["path"]).read_bytes() == NEWCOMER.read_bytes()
    assert client.post("/v1/query", files=upload(NEWCOMER)).json()[0]["label"] == "Fresh Cola"
    assert client.get(f"/v1/images/{row['id']}/thumbnail").status_code == 200

    assert client.delete(f"/v1/images/{row['id']}", headers=AUTH).status_code == 200
    assert "Fresh Cola" not in client.get("/v1/labels").json()
    assert client.post("/v1/query", files=upload(NEWCOMER)).json()[0]["label"] != "Fresh Cola"
    assert Index(store=store, embedder=embedder).check().ok
