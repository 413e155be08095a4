"""The typed manifest and the file names of an index folder, on their own."""

import json

import pytest

from shitu.errors import ShituError
from shitu.index.database import Database
from shitu.index.files import faiss_name, generation_of, leftover_files, next_generation
from shitu.index.manifest import Manifest, next_id_after
from shitu.index.milvus_manifest import MilvusManifest
from shitu.index.milvus_url import parse_url
from tests.conftest import REPO

OLD_INDEX = REPO / "tests" / "fixtures" / "index-8d5b784"


def stored(directory):
    return dict(Database(directory).conn.execute("select key, value from manifest").fetchall())


def test_generations_are_named_and_counted_one_way(tmp_path):
    assert faiss_name(7) == "vectors.7.faiss" and generation_of("vectors.7.faiss") == 7
    assert generation_of("vectors.x.faiss") is None and generation_of("vectors.7.faiss.tmp") is None
    assert next_generation(tmp_path) == 1 and next_generation(tmp_path, committed=4) == 5
    for name in ("vectors.2.faiss", "vectors.9.faiss", "vectors.x.faiss", ".vectors.10.faiss.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert next_generation(tmp_path, committed=3) == 10
    assert [p.name for p in leftover_files(tmp_path, "vectors.9.faiss")] == ["vectors.x.faiss",
                                                                             ".vectors.10.faiss.tmp"]


def test_next_id_is_above_every_id_ever_used():
    assert next_id_after(1, []) == 1 and next_id_after(5, [2, 3]) == 5 and next_id_after(5, [9]) == 10


def test_the_manifest_of_an_old_index_reads_typed_and_keeps_unknown_entries(tmp_path):
    entries = stored(OLD_INDEX)
    manifest = Manifest.from_entries({**entries, "from_the_future": json.dumps([1])}, tmp_path)
    assert (manifest.count, manifest.next_id, manifest.generation, manifest.faiss_file) == (8, 10, 2,
                                                                                          "vectors.2.faiss")
    written = manifest.entries()
    assert written["from_the_future"] == "[1]" and "mean" not in written and "threshold" not in written
    assert Manifest.from_entries(written, tmp_path) == manifest
    assert manifest.free_id(highest_row_id=8) == 10 and manifest.free_id(highest_row_id=12) == 13


@pytest.mark.parametrize("key,value,message", [
    ("count", "-1", "entry 'count' is -1, not a non-negative integer"),
    ("faiss_file", '"../x"', "not a vectors.N.faiss name"),
    ("metric", '"l2"', "inner_product only"),
    ("format_version", "2", "format version 2"),
    ("labels", None, "entry 'labels' is missing"),
])
def test_a_damaged_manifest_is_one_clear_error(tmp_path, key, value, message):
    entries = stored(OLD_INDEX)
    if value is None:
        del entries[key]
    else:
        entries[key] = value
    with pytest.raises(ShituError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Manifest.from_entries(entries, tmp_path)


def test_a_milvus_manifest_is_the_typed_manifest_in_one_json_object():
    url = parse_url("milvus-lite:/srv/shop.db/shop")
    folder = Manifest.from_entries(stored(OLD_INDEX), OLD_INDEX)
    values = {**folder.json_values(), "faiss_file": "shop__g2", "store": "milvus",
              "pending": {"delete": [3], "relabel": {"4": "tea"}}}
    manifest = MilvusManifest.from_property(json.dumps(values), url, "shop__g2")
    assert (manifest.count, manifest.next_id, manifest.pending["relabel"]) == (8, 10, {"4": "tea"})
    assert manifest.json_values() == values  # what it writes back: the same keys and values
    assert Manifest.from_values(values, url).extra == {"pending": values["pending"]}  # how older code reads it
    bare = {k: v for k, v in values.items() if k not in ("faiss_file", "store")}
    assert MilvusManifest.from_property(json.dumps(bare), url, "shop__g2") == manifest  # the collection names it
    no_next_id = {k: v for k, v in values.items() if k != "next_id"}
    assert Manifest.from_values(no_next_id, url).next_id == 1  # a folder's old manifest may lack it, a gallery's not
    with pytest.raises(ShituError, match=r"gallery milvus-lite:/srv/shop.db/shop \(shop__g2\) is damaged: its "
                                         r"manifest entry 'next_id' is missing"):
        MilvusManifest.from_property(json.dumps(no_next_id), url, "shop__g2")
    with pytest.raises(ShituError, match="record of an interrupted change"):
        MilvusManifest.from_property(json.dumps({**bare, "pending": {"delete": ["3"]}}), url, "shop__g2")
