"""``MilvusStorage``: the index storage seam (``shitu.index.storage``) over a Milvus gallery.

``shitu.index.milvus`` owns the engine (the URL, collections behind an alias, the recoverable change
protocol, check and repair); this module maps the seam's steps onto it, so build, add, remove,
calibrate and the ``Index`` facade work unchanged on Milvus:

* ``stage_all`` writes a complete new collection with its manifest; ``publish_all`` switches the alias
  (a build's commit point); ``abandon`` drops the new collection;
* ``stage`` upserts a change's new rows above ``next_id``; ``publish`` records, applies and commits the
  deletes and relabels; ``abandon`` deletes the staged rows again;
* ``clean`` drops generations that neither the live collection nor the one before it is.

A snapshot's rows are fetched by id when asked for, and those a search returns come with it, so a
query reads nothing but its hits: a gallery of 10^8 rows is never read whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shitu.embed import ModelInfo, file_sha256
from shitu.errors import ShituError
import shitu.index.milvus as milvus
import shitu.index.milvus_check as milvus_check
from shitu.index.findings import CheckReport
from shitu.index.info import described
from shitu.index.milvus_manifest import MilvusManifest
from shitu.index.milvus_url import no_gallery, parse_url
from shitu.index.manifest import Manifest
from shitu.index.snapshot import Snapshot
from shitu.index.storage import Change, Row


class MilvusRows(Mapping):
    """A snapshot's rows by id, read from Milvus on demand; search hits fill the cache first."""

    def __init__(self, snapshot: milvus.MilvusSnapshot):
        self.snapshot, self.cache, self.complete = snapshot, {}, False

    def __getitem__(self, row_id):
        row_id = int(row_id)
        if row_id not in self.cache and not self.complete:
            self.cache.update(self.snapshot.rows([row_id]))
        return self.cache[row_id]

    def __contains__(self, row_id) -> bool:
        try:
            self[row_id]
        except KeyError:
            return False
        return True

    def __iter__(self):
        return iter(self.whole())

    def __len__(self) -> int:
        return len(self.whole()) if self.complete else self.snapshot.manifest.count

    def whole(self) -> dict[int, Row]:
        """Every row, read once (labels, images, evaluate need them all)."""
        if not self.complete:
            self.cache = {row.id: row for row in self.snapshot.all_rows()}
            self.complete = True
        return self.cache

    def values(self):
        return self.whole().values()

    def items(self):
        return self.whole().items()

    def keys(self):
        return self.whole().keys()


class MilvusStorage:
    """A gallery in Milvus (``shitu.index.storage.Storage``); ``directory`` is its URL, for messages."""

    def __init__(self, url: str):
        self.url = parse_url(url)
        self.directory = str(self.url)
        self._store: milvus.MilvusStore | None = None

    def store(self, create: bool = False) -> milvus.MilvusStore:
        """The connection, opened once and kept (a Milvus Lite folder admits one process anyway)."""
        if self._store is None:
            self._store = milvus.MilvusStore.open(self.url, create)
        return self._store

    def close(self):
        if self._store is not None:
            self._store.close()
            self._store = None

    def resolve_index_type(self, index_type: str, count: int) -> str:
        return milvus.resolve_index_type(index_type, count, self.url.lite)

    def exists(self) -> bool:
        try:
            live = self.store().live()
        except ShituError:
            return False
        return live is not None and milvus.has_manifest(self.store(), live)

    def live_manifest(self) -> MilvusManifest:
        store = self.store()
        live = store.live()
        if live is None:
            raise no_gallery(self.url)
        return store.manifest_of(live)

    def manifest_value(self, key: str):
        try:
            return self.live_manifest().json_values().get(key)
        except ShituError:
            return None

    def committed_generation(self) -> int | None:
        return self.manifest_value("generation")

    def current(self, generation: int) -> bool:
        return self.committed_generation() == generation

    def read(self, model: ModelInfo | None = None, with_vectors: bool = False) -> Snapshot:
        """The live generation: its manifest, rows on demand, and a search through Milvus."""
        gallery = self.store().snapshot(model)
        rows = MilvusRows(gallery)
        ids, vectors = gallery.all_vectors() if with_vectors else (None, None)

        def search(queries: np.ndarray, k: int):
            return searched(gallery, rows, queries, k)
        return Snapshot(gallery.manifest, rows, search, self.current, ids, vectors, gallery)

    @contextmanager
    def writing(self, model: ModelInfo | None = None, damaged_ok: bool = False):
        """A session on the live generation, after finishing what an interrupted change left.

        Milvus Lite's own lock keeps other processes out; a server has none shitu could use, so a commit
        instead refuses to land on a manifest that another writer changed (``require_unchanged``).
        """
        store = self.store(create=damaged_ok)
        session = MilvusSession(self, store)
        if store.live() is not None:
            try:
                session.open(model)
            except ShituError:
                if not damaged_ok:
                    raise
        elif not damaged_ok:
            raise no_gallery(self.url)
        yield session

    def check(self, model_path: Path | None, repair: bool = False) -> CheckReport:
        """``shitu.index.milvus_check``'s inspection (and repair) of the gallery as the seam's report."""
        store = self.store()  # first: no gallery at all is an error, not a report
        if model_path is not None and not model_path.is_file():
            return CheckReport(self.directory, problems=[f"model not found: {model_path}"])
        model = ModelFile(model_path) if model_path is not None else None
        findings = milvus_check.inspect(store, model)
        repaired = milvus_check.repair(store, findings) if repair else []
        if repaired:
            findings = milvus_check.inspect(store, model)
        return findings.report(self.directory, repaired)

    def info(self) -> dict:
        """What ``shitu info --json`` prints for a gallery: the folder store's keys, with the collection
        where the folder has its FAISS file, and bytes only where Milvus Lite's folder shows them."""
        snapshot = self.read()
        gallery = snapshot.index
        size = sum(p.stat().st_size for p in self.url.lite_path.rglob("*") if p.is_file()) if self.url.lite else None
        return {"index": self.directory, "store": "milvus", "collection": gallery.collection,
                **described(snapshot.manifest, gallery.count(), gallery.label_counts(), None, {"total": size})}


class ModelFile:
    """A model file as ``check`` compares it: by its bytes' sha256, as the folder store's check does, without
    opening it (and without the live manifest, which a missing alias hides)."""

    def __init__(self, path: Path):
        self.path, self.sha256 = path, file_sha256(path)

    def describe(self) -> str:
        return str(self.path)


def searched(gallery: milvus.MilvusSnapshot, rows: MilvusRows, queries: np.ndarray, k: int):
    """(scores, ids) as the seam's searcher gives them, -1 past the hits; the hits' rows are cached."""
    hits = gallery.search(queries, k)
    width = max([k, 1])
    scores = np.full((len(hits), width), -np.inf, dtype=np.float32)
    ids = np.full((len(hits), width), -1, dtype=np.int64)
    for n, found in enumerate(hits):
        for rank, (score, row) in enumerate(found[:width]):
            scores[n, rank], ids[n, rank] = score, row.id
            rows.cache.setdefault(row.id, row)
    return scores, ids


@dataclass
class Staged:
    """What a stage wrote: a build's new collection, or a change's new row ids."""

    collection: str | None = None
    ids: list[int] | None = None
    refilled: bool = False  # Milvus maintains its own index: nothing is ever refilled here


class MilvusSession:
    """A Milvus gallery opened for a change (``shitu.index.storage.Session``)."""

    def __init__(self, storage: MilvusStorage, store: milvus.MilvusStore):
        self.storage, self.store = storage, store
        self.gallery: milvus.MilvusSnapshot | None = None
        self.manifest: Manifest | None = None

    def open(self, model: ModelInfo | None):
        self.gallery = self.store.snapshot(model)
        self.gallery.recover()
        self.sync()

    def sync(self):
        self.manifest = self.gallery.manifest

    # -- reading ------------------------------------------------------------------------------------
    def rows(self, ids) -> dict[int, Row]:
        return self.gallery.rows(ids)

    def rows_by_path(self, paths: list[str]) -> dict[str, Row]:
        return {row.path: row for row in self.gallery.matching("path", paths)}

    def ids_of_label(self, label: str) -> set[int]:
        return {row.id for row in self.gallery.matching("label", [label])}

    def ids_below(self, path: str) -> set[int]:
        return self.gallery.ids_below(path)

    def all_rows(self) -> list[Row]:
        return self.gallery.all_rows()

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.gallery.all_vectors()

    def highest_id(self) -> int:
        """An id at least as high as every stored one, without reading them all: the session recovered
        interrupted adds on opening, so no row is at or above ``next_id`` unless one was added since."""
        _, above = self.gallery.unfinished()
        return max(above, default=self.gallery.manifest.next_id - 1)

    # -- a change in place ----------------------------------------------------------------------------
    def stage(self, change: Change, refill: bool = False) -> Staged:
        return Staged(ids=self.gallery.stage(change))

    def publish(self, change: Change, staged: Staged, next_id: int) -> Manifest:
        self.gallery.publish(change, next_id)
        self.sync()
        return self.manifest

    # -- a whole new state ----------------------------------------------------------------------------
    def stage_all(self, rows: list[Row], manifest: Manifest) -> Staged:
        counted = dataclasses.replace(manifest, count=len(rows), labels=len({row.label for row in rows}))
        return Staged(collection=self.store.stage_generation(rows, counted.json_values()))

    def publish_all(self, staged: Staged) -> Manifest:
        self.store.publish_generation(staged.collection)
        self.gallery = self.store.snapshot()
        self.sync()
        return self.manifest

    def store_threshold(self, record: dict):
        if self.manifest.generation != record["generation"] or self.manifest.model_sha256 != record["model_sha256"]:
            raise ShituError(f"gallery {self.store.url} changed while it was being calibrated; run "
                             f"'shitu calibrate' again")
        self.gallery.commit({"threshold": record})
        self.sync()

    def abandon(self, staged: Staged):
        if staged.collection is not None:
            if self.store.live() != staged.collection:
                self.store.drop_quietly(staged.collection)
        elif staged.ids:
            self.gallery.abandon(staged.ids)

    def clean(self, previous: Manifest | None):
        live = self.store.live()
        if live is not None:
            self.store.drop_leftovers({live, self.store.previous_live(live)})
