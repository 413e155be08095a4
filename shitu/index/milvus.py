"""A gallery in Milvus: rows, vectors and manifest in one collection, served through an alias.

Why Milvus: past one machine's memory (10^8 photos are 205 GB of float32 vectors) the vectors belong
in an engine that shards and replicates them. What shitu keeps on top of it:

* **Layout.** The store URL names an alias, ``COLLECTION``. Every build writes a new collection
  ``COLLECTION__g<N>`` (one entity per image: INT64 ``id``, ``FLOAT_VECTOR`` ``vector``, VARCHAR ``label``,
  ``path``, ``sha256``, ``added_at``) and records the manifest as a property of that collection, so the
  model identity travels with the vectors it describes. Only then is the alias switched to it: an
  interrupted build leaves the alias on the previous collection, which keeps serving; its leftover is
  dropped by the next build or ``check --repair``. The previous generation is kept for readers that
  resolved the alias just before the switch.
* **Ids.** Ids come from the manifest's ``next_id`` and are never reused, across rebuilds too. Writes
  are ``upsert`` and ``delete`` by id, so repeating one is harmless.
* **Changes in place** (add, remove, repair). Milvus has no multi-row transaction, so a change is made
  recoverable instead of atomic: (1) upsert the new rows, all above the manifest's ``next_id``; (2)
  record the change in the manifest (``next_id`` raised, ``pending`` = ids to delete and relabel); (3)
  apply the deletes and relabels; (4) commit the manifest with the new counts and no ``pending``. A
  writer killed in (1) leaves rows above ``next_id``, which the next writer or ``check --repair``
  deletes (the change never happened); one killed after (2) leaves ``pending``, which is replayed (the
  change completes). Readers see each row change as it lands, not the change as a whole.
* **One writer.** Milvus Lite allows one process per ``.db`` folder, which excludes a second writer
  (and any reader) while a command runs. A server has no lock or compare-and-set that shitu could use
  across machines; a writer re-reads the manifest before each commit and refuses to go on when another
  one changed it, which catches most, not all, concurrent writers: run one writer at a time.

Milvus Lite (``milvus-lite`` from pip) is a pure-Python engine over FAISS with the Milvus protocol: it
proves the protocol and the semantics above, not a distributed deployment's speed or failure modes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from shitu.errors import ShituError
from shitu.index.database import show
from shitu.index.manifest import FORMAT_VERSION, METRIC, now
from shitu.index.milvus_manifest import MilvusManifest
from shitu.index.milvus_url import GENERATION, MilvusURL, connect, explain, no_gallery, parse_url, pymilvus_module, release
from shitu.index.storage import Change, Row

MANIFEST_KEY = "shitu.manifest"
LABEL_BYTES, PATH_BYTES = 4096, 65535  # VARCHAR limits (Milvus counts bytes; 65535 is its maximum)
BATCH = 2000  # rows per insert call: ~4.5 MB of 512-d vectors, far below gRPC's 64 MB message limit
ID_CHUNK = 1000  # ids per "id in [...]" expression
PENDING_LIMIT = 20_000  # ids one pending record may hold (it lives in a collection property)
MAX_TOPK = 16384  # Milvus's limit on k

# Index choice, from bench/search.py's Milvus Lite peer (2 shared cores, gallery-shaped vectors; the
# README's "More than one machine"). At 10 000 vectors FLAT took 15.8 ms a query, HNSW 5.8 ms: exact
# search already costs more than the network's 6-12 ms, so FLAT stays below 10 000 images only. HNSW
# found the exact first hit for every query at 1e4 and 1e5 with M 16 or 32, efConstruction 100 or 200
# and every ef from 16 to 128; M 32 built 1.4x slower at 1e5 and doubles the graph, efConstruction 100
# was not faster (67.6 s against 70.6 s), ef 64 keeps the margin FAISS's isotropic worst case needs.
AUTO_FLAT_LIMIT = 10_000
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 200  # the search's ef and IVF's nprobe are the manifest's (64, 16)
LITE_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "HNSW_SQ", "IVF_SQ8")  # what Milvus Lite builds
SERVER_ONLY_TYPES = ("DISKANN", "IVF_PQ", "IVF_RABITQ")  # a Milvus server only (no Lite backend)
MILVUS_TYPES = LITE_TYPES + SERVER_ONLY_TYPES


# -- rows -------------------------------------------------------------------------------------------
def record(row) -> dict:
    """A row as a dict of its fields: rows come as the seam's ``Row`` objects or as plain dicts."""
    if isinstance(row, dict):
        return row
    return {"id": row.id, "path": row.path, "label": row.label, "sha256": row.sha256, "vector": row.vector}


ROW_FIELDS = ["id", "path", "label", "sha256"]


def row_of(entity: dict) -> Row:
    return Row(int(entity["id"]), entity["path"], entity["label"], entity["sha256"])


def literal(text: str) -> str | None:
    """``text`` as a string literal of Milvus's expression language, or None when it holds a control
    character the language cannot escape (it knows \\n, \\t, \\r, not \\u); callers then filter rows here."""
    if any(ord(c) < 32 and c not in "\n\t\r" for c in text):
        return None
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + '"'


def require_storable(rows: list, url: MilvusURL):
    """Refuse labels and paths longer than the schema's VARCHAR limits before anything is written."""
    for row in map(record, rows):
        for key, limit in (("label", LABEL_BYTES), ("path", PATH_BYTES)):
            if len(row[key].encode("utf-8")) > limit:
                raise ShituError(f"{key} {row[key][:60]!r}... is longer than {limit} bytes, the most a "
                                 f"{url} gallery stores; nothing was changed")


# -- index types ------------------------------------------------------------------------------------
def resolve_index_type(index_type: str, count: int, lite: bool) -> str:
    """``auto`` becomes FLAT below ``AUTO_FLAT_LIMIT`` images and HNSW from it; names are checked against
    what the engine builds (Milvus Lite silently searches exhaustively with a type it lacks)."""
    kind = index_type.upper()
    if kind == "AUTO":
        return "FLAT" if count < AUTO_FLAT_LIMIT else "HNSW"
    if kind not in MILVUS_TYPES:
        raise ShituError(f"bad --index-type {index_type!r} for a Milvus store: use auto or one of "
                         f"{', '.join(MILVUS_TYPES)}")
    if lite and kind in SERVER_ONLY_TYPES:
        raise ShituError(f"--index-type {kind} needs a Milvus server; Milvus Lite builds "
                         f"{', '.join(LITE_TYPES)}")
    return kind


def build_params(kind: str, count: int) -> dict:
    if kind.startswith("HNSW"):
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    if kind.startswith("IVF"):
        return {"nlist": max(1, min(65536, round(4 * math.sqrt(max(count, 1)))))}
    return {}


def search_params(manifest: MilvusManifest, k: int) -> dict:
    kind = manifest.index_type
    params = {}
    if kind.startswith("HNSW"):
        params = {"ef": max(k, manifest.ef_search)}
    elif kind.startswith("IVF"):
        params = {"nprobe": manifest.nprobe}
    return {"metric_type": "IP", "params": params}


# -- the store --------------------------------------------------------------------------------------
class MilvusStore:
    """A connection to one gallery's alias and the generations behind it."""

    def __init__(self, url: MilvusURL, client):
        self.url, self.client = url, client
        self.errors = pymilvus_module().exceptions.MilvusException

    @classmethod
    def open(cls, url: str | MilvusURL, create: bool = False) -> "MilvusStore":
        url = parse_url(url) if isinstance(url, str) else url
        return cls(url, connect(url, create))

    def close(self):
        release(self.url, self.client)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, method: str, *args, **kwargs):
        """One pymilvus call; its failures become one ShituError line."""
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except self.errors as exc:
            raise ShituError(f"{self.url}: Milvus refused {method} ({explain(exc)})") from None

    # -- naming -------------------------------------------------------------------------------------
    def generation_name(self, generation: int) -> str:
        return f"{self.url.collection}__g{generation}"

    def generations(self) -> dict[int, str]:
        """Every ``COLLECTION__g<N>`` on the server, by N."""
        found = {}
        for name in self.call("list_collections"):
            match = GENERATION.match(name)
            if match and match["alias"] == self.url.collection:
                found[int(match["n"])] = name
        return found

    def live(self) -> str | None:
        """The collection the alias names now, or None when there is no alias."""
        try:
            return self.client.describe_alias(self.url.collection)["collection_name"]
        except self.errors:
            if self.call("has_collection", self.url.collection) and not self.generations():
                raise ShituError(f"{self.url}: {self.url.collection} is a collection that shitu did not make "
                                 f"(a shitu gallery is an alias to COLLECTION__g<N>); choose another name")
            return None

    def manifest_of(self, collection: str) -> MilvusManifest:
        """The validated manifest stored with ``collection``."""
        try:
            properties = self.client.describe_collection(collection).get("properties", {})
        except self.errors:
            raise ShituError(f"gallery {self.url} is damaged: its alias names {collection}, which does not "
                             f"exist (run 'shitu check --repair --store {self.url.text}')") from None
        if MANIFEST_KEY not in properties:
            raise ShituError(f"gallery {self.url} ({collection}) holds no finished shitu gallery (no manifest); "
                             f"run 'shitu build-index' again")
        return MilvusManifest.from_property(properties[MANIFEST_KEY], self.url, collection)

    def snapshot(self, model=None) -> "MilvusSnapshot":
        """The live generation and its manifest; with ``model``, refuse one built by another model."""
        collection = self.live()
        if collection is None:
            raise no_gallery(self.url)
        manifest = self.manifest_of(collection)
        snapshot = MilvusSnapshot(self, collection, manifest)
        if model is not None:
            manifest.require_model(model, self.url)
        self.ensure_loaded(collection)
        return snapshot

    def ensure_loaded(self, collection: str):
        """A Milvus server searches only collections loaded into its query nodes."""
        state = str(self.call("get_load_state", collection).get("state", ""))
        if "Loaded" not in state or "NotLoad" in state:
            self.call("load_collection", collection)

    # -- writing a generation -----------------------------------------------------------------------
    def write_generation(self, rows: list[dict], manifest: dict) -> str:
        """Write ``rows`` and ``manifest`` as a new collection, then switch the alias to it (the commit).

        ``rows``: dicts with id, path, label, sha256, vector. ``manifest``: the build's manifest entries as a
        JSON object (``Manifest.json_values``); its ``index_type`` is a Milvus type.
        """
        name = self.stage_generation(rows, manifest)
        self.publish_generation(name)
        return name

    def stage_generation(self, rows: list[dict], manifest: dict) -> str:
        """A complete new collection with its manifest, not yet named by the alias.

        Its generation is above every collection's and the live manifest's, so a reader of the old one
        sees that it is no longer current. A failure drops the new collection; a kill leaves it for the
        next build or ``check --repair``.
        """
        require_storable(rows, self.url)
        live = self.live()
        floor = self.manifest_of(live).generation if live and has_manifest(self, live) else 0
        generation = max([floor, *self.generations()]) + 1
        name = self.generation_name(generation)
        stamped = {**manifest, "format_version": FORMAT_VERSION, "generation": generation, "faiss_file": name,
                   "store": "milvus", "metric": METRIC, "updated_at": now()}
        manifest = MilvusManifest.from_values(stamped, self.url)
        self.create_collection(name, manifest, len(rows))
        try:
            self.insert_rows(name, rows)
            self.call("flush", name)
            self.write_manifest(name, manifest.json_values())
        except BaseException:
            self.drop_quietly(name)
            raise
        return name

    def publish_generation(self, name: str):
        """Switch the alias to ``name`` (the commit point of a build), then drop what no reader needs."""
        live = self.live()
        if live is None:
            self.call("create_alias", name, self.url.collection)
        else:
            self.call("alter_alias", name, self.url.collection)
        self.drop_leftovers(keep={name, live})

    def create_collection(self, name: str, manifest: MilvusManifest, count: int):
        pymilvus = pymilvus_module()
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        DataType = pymilvus.DataType
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=manifest.embedding_size)
        schema.add_field("label", DataType.VARCHAR, max_length=LABEL_BYTES)
        schema.add_field("path", DataType.VARCHAR, max_length=PATH_BYTES)
        schema.add_field("sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("added_at", DataType.VARCHAR, max_length=32)
        index = self.client.prepare_index_params()
        kind = manifest.index_type
        index.add_index(field_name="vector", index_type=kind, metric_type="IP", params=build_params(kind, count))
        index.add_index(field_name="path", index_type="INVERTED")
        index.add_index(field_name="label", index_type="INVERTED")
        # pymilvus waits 0.5 s per index when they come with create_collection; the server builds them
        # anyway (a Milvus server on sealed segments, Milvus Lite when a segment is flushed)
        self.call("create_collection", name, schema=schema, consistency_level="Strong")
        self.call("create_index", name, index, sync=False)
        self.call("load_collection", name)

    def insert_rows(self, collection: str, rows: list[dict], method: str = "insert"):
        stamp, rows = now(), [record(r) for r in rows]
        for start in range(0, len(rows), BATCH):
            batch = [{"id": int(r["id"]), "vector": np.asarray(r["vector"], dtype=np.float32), "label": r["label"],
                      "path": r["path"], "sha256": r["sha256"], "added_at": r.get("added_at") or stamp}
                     for r in rows[start:start + BATCH]]
            self.call(method, collection, batch)

    def write_manifest(self, collection: str, values: dict):
        """Store a manifest's JSON object (``MilvusManifest.json_values``) with ``collection``."""
        self.call("alter_collection_properties", collection, properties={MANIFEST_KEY: json.dumps(values)})

    def drop_quietly(self, name: str):
        try:
            self.client.drop_collection(name)
        except Exception:  # noqa: BLE001 - the leftover is dropped by the next build or check --repair
            pass

    def leftovers(self, keep: set) -> list[str]:
        """Generations other than ``keep``: older ones and those of interrupted builds."""
        return [name for _, name in sorted(self.generations().items()) if name not in keep]

    def drop_leftovers(self, keep: set):
        for name in self.leftovers(keep):
            self.call("drop_collection", name)

    def previous_live(self, live: str) -> str | None:
        """The generation before ``live``, kept for readers that resolved the alias just before a switch."""
        match = GENERATION.match(live)
        older = [n for n in self.generations() if match and n < int(match["n"])]
        return self.generation_name(max(older)) if older else None


def has_manifest(store: MilvusStore, name: str) -> bool:
    try:
        store.manifest_of(name)
    except ShituError:
        return False
    return True


@dataclass
class MilvusSnapshot:
    """One generation of a gallery, read through its concrete collection name.

    Unlike the FAISS store's snapshot this is no frozen copy: a change in place is visible row by row.
    """

    store: MilvusStore
    collection: str
    manifest: MilvusManifest
    _before: dict | None = field(default=None, repr=False)  # labels a staged change touches, and whether they existed

    @property
    def where(self) -> str:
        return f"gallery {self.store.url}"

    # -- reading ------------------------------------------------------------------------------------
    def is_current(self) -> bool:
        """Whether no writer has committed since this snapshot was read."""
        try:
            live = self.store.live()
            return live == self.collection and \
                self.store.manifest_of(live).generation == self.manifest.generation
        except ShituError:
            return False

    def count(self) -> int:
        result = self.store.call("query", self.collection, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def search(self, vectors: np.ndarray, k: int) -> list[list[tuple[float, Row]]]:
        """Top-``k`` (score, row) per query vector, best first; scores are inner products."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) == 0:
            return []
        k = max(1, min(int(k), MAX_TOPK))
        hits = self.store.call("search", self.collection, data=list(vectors), limit=k,
                               output_fields=["path", "label", "sha256"],
                               search_params=search_params(self.manifest, k))
        return [[(float(hit["distance"]), row_of({"id": hit["id"], **hit["entity"]})) for hit in found]
                for found in hits]

    def iterate(self, fields: list[str], expression: str = "", batch: int = 4096) -> Iterator[dict]:
        """Every entity matching ``expression``, in id order (Milvus's query iterator pages by id)."""
        iterator = self.store.call("query_iterator", self.collection, batch_size=batch,
                                   filter=expression or "id >= 0", output_fields=fields)
        try:
            while True:
                try:
                    page = iterator.next()
                except self.store.errors as exc:
                    raise ShituError(f"{self.where}: Milvus failed while reading rows ({explain(exc)})") from None
                if not page:
                    return
                yield from page
        finally:
            iterator.close()

    def all_rows(self) -> list[Row]:
        return [row_of(entity) for entity in self.iterate(ROW_FIELDS)]

    def row_ids(self) -> list[int]:
        return [int(entity["id"]) for entity in self.iterate(["id"])]

    def label_counts(self) -> dict[str, int]:
        counts = Counter(entity["label"] for entity in self.iterate(["label"]))
        return dict(sorted(counts.items()))

    def rows(self, ids: Iterable[int]) -> dict[int, Row]:
        wanted = sorted({int(i) for i in ids if int(i) >= 0})
        found = {}
        for start in range(0, len(wanted), ID_CHUNK):
            chunk = wanted[start:start + ID_CHUNK]
            for entity in self.store.call("get", self.collection, ids=chunk, output_fields=ROW_FIELDS):
                found[int(entity["id"])] = row_of(entity)
        return found

    def vectors(self, ids: list[int]) -> dict[int, np.ndarray]:
        found = {}
        for start in range(0, len(ids), ID_CHUNK):
            chunk = [int(i) for i in ids[start:start + ID_CHUNK]]
            for entity in self.store.call("get", self.collection, ids=chunk, output_fields=["vector"]):
                found[int(entity["id"])] = np.asarray(entity["vector"], dtype=np.float32)
        return found

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every stored image in id order: what a rebuild reuses."""
        ids, vectors = [], []
        for entity in self.iterate(["id", "vector"], batch=1024):
            ids.append(int(entity["id"]))
            vectors.append(np.asarray(entity["vector"], dtype=np.float32))
        size = self.manifest.embedding_size
        matrix = np.stack(vectors) if vectors else np.zeros((0, size), np.float32)
        return np.array(ids, dtype=np.int64), matrix

    def matching(self, key: str, values: Iterable[str]) -> list[Row]:
        """Rows whose ``key`` (label or path) is one of ``values``, in id order."""
        values = sorted(set(values))
        plain = [v for v in values if literal(v) is not None]
        found = []
        for start in range(0, len(plain), ID_CHUNK):
            chunk = plain[start:start + ID_CHUNK]
            expression = f"{key} in [{', '.join(literal(v) for v in chunk)}]"
            found += [row_of(e) for e in self.iterate(ROW_FIELDS, expression)]
        odd = set(values) - set(plain)
        if odd:  # no literal can spell them: compare here
            found += [row_of(e) for e in self.iterate(ROW_FIELDS) if e[key] in odd]
        return sorted(found, key=lambda row: row.id)

    def ids_below(self, key: str) -> set[int]:
        """Rows stored at ``key`` or in the folder ``key`` (a string range: LIKE would read '_' as a
        wildcard, and Milvus's expressions have no escape for it)."""
        text, start, stop = literal(key), literal(key + "/"), literal(key + "0")  # '0' follows '/'
        if None in (text, start, stop):
            return {int(e["id"]) for e in self.iterate(["id", "path"])
                    if e["path"] == key or e["path"].startswith(key + "/")}
        expression = f"path == {text} or (path >= {start} and path < {stop})"
        return {int(e["id"]) for e in self.iterate(["id"], expression)}

    def highest_id(self) -> int:
        """The highest stored id, 0 when there is none (the query iterator pages in id order)."""
        highest = 0
        for entity in self.iterate(["id"], batch=16384):
            highest = max(highest, int(entity["id"]))
        return highest

    def images(self, label: str | None = None, offset: int = 0, limit: int = 100) -> list[Row]:
        """Rows in id order, optionally of one label; an unknown label gives an empty list."""
        if label is not None and literal(label) is None:
            source = (e for e in self.iterate(ROW_FIELDS) if e["label"] == label)
        else:
            source = self.iterate(ROW_FIELDS, f"label == {literal(label)}" if label is not None else "")
        found = []
        for position, entity in enumerate(source):
            if position >= offset + limit:
                break
            if position >= offset:
                found.append(row_of(entity))
        return found

    # -- changing in place --------------------------------------------------------------------------
    def apply(self, change: Change) -> MilvusManifest:
        """Apply ``change`` by the recoverable protocol of the module docstring; returns the new manifest."""
        self.stage(change)
        return self.publish(change, max([self.manifest.next_id] + [int(record(r)["id"]) + 1
                                                                          for r in change.new_rows]))

    def stage(self, change: Change) -> list[int]:
        """Step 1: upsert the new rows, all above ``next_id`` (a kill here is rolled back by ``recover``).
        Returns their ids, which ``abandon`` deletes when the change does not go on."""
        require_storable(change.new_rows, self.store.url)
        self.require_unchanged()
        floor = self.manifest.next_id
        if any(int(record(r)["id"]) < floor for r in change.new_rows):
            raise ShituError(f"{self.where}: new rows must take ids from {floor} on (ids are never reused)")
        self._before = self.labels_touched(change)
        self.store.insert_rows(self.collection, change.new_rows, method="upsert")
        return [int(record(r)["id"]) for r in change.new_rows]

    def abandon(self, staged_ids: list[int]):
        self.delete(staged_ids)

    def labels_touched(self, change: Change) -> dict[str, bool]:
        """Whether each label the change touches exists before it: how ``publish`` counts labels."""
        old = self.rows(list(change.delete_ids) + [int(i) for i in change.relabel])
        touched = {record(r)["label"] for r in change.new_rows} | set(change.relabel.values()) | \
            {row.label for row in old.values()}
        return {label: self.has("label", label) for label in touched}

    def publish(self, change: Change, next_id: int) -> MilvusManifest:
        """Steps 2-4: record the deletes and relabels in the manifest, apply them, commit the counts.

        A removal of more than ``PENDING_LIMIT`` rows is committed in parts, so that each pending record
        stays small enough for a collection property.
        """
        before = self._before if self._before is not None else self.labels_touched(change)
        self._before = None
        labels_before = self.manifest.labels
        deletes = sorted({int(i) for i in change.delete_ids})
        relabel = {str(int(i)): label for i, label in change.relabel.items()}
        parts = [deletes[start:start + PENDING_LIMIT] for start in range(0, len(deletes), PENDING_LIMIT)] or [[]]
        for number, part in enumerate(parts):
            pending = {"delete": part, "relabel": relabel if number == 0 else {}}
            self.commit({"next_id": max(next_id, self.manifest.next_id), "pending": pending})
            self.replay(pending)
            labels = labels_before + sum(int(self.has("label", l)) - int(had) for l, had in before.items())
            self.commit({"pending": None, "count": self.count(), "labels": labels}, new_generation=True)
        return self.manifest

    def replay(self, pending: dict):
        """Apply a pending record's relabels and deletes; repeating it is harmless."""
        relabel = {int(i): label for i, label in pending.get("relabel", {}).items()}
        if relabel:
            rows, vectors = self.rows(relabel), self.vectors(list(relabel))
            self.store.insert_rows(self.collection, [
                {"id": i, "vector": vectors[i], "label": relabel[i], "path": rows[i].path,
                 "sha256": rows[i].sha256} for i in sorted(relabel) if i in rows and i in vectors], method="upsert")
        self.delete(pending.get("delete", []))

    def delete(self, ids: Iterable[int]):
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), ID_CHUNK):
            self.store.call("delete", self.collection, ids=ids[start:start + ID_CHUNK])

    def has(self, key: str, value: str) -> bool:
        """Whether any row's ``key`` field equals ``value``."""
        text = literal(value)
        if text is None:
            return any(e[key] == value for e in self.iterate([key]))
        return bool(self.store.call("query", self.collection, filter=f"{key} == {text}", output_fields=["id"],
                                    limit=1))

    def unfinished(self) -> tuple[dict | None, list[int]]:
        """What an interrupted change left: its pending record, and rows above ``next_id``."""
        above = [int(e["id"]) for e in self.iterate(["id"], f"id >= {self.manifest.next_id}")]
        return self.manifest.pending, above

    def recover(self) -> list[str]:
        """Finish an interrupted change: replay its pending record, or delete the rows it had only
        begun to add; then count the rows again. Writers call this before their own change."""
        pending, above = self.unfinished()
        done = []
        if pending:
            self.replay(pending)
            done.append(f"finished an interrupted change ({len(pending.get('delete', []))} deletes, "
                        f"{len(pending.get('relabel', {}))} relabels)")
        if above and not pending:
            self.delete(above)
            done.append(f"deleted {len(above)} rows an interrupted add left (ids {show(above)})")
        if done:
            self.commit({"pending": None, "count": self.count(), "labels": len(self.label_counts())},
                        new_generation=True)
        return done

    def commit(self, updates: dict, new_generation: bool = False):
        """Write the manifest with ``updates`` (None removes an entry), after checking nobody else did."""
        self.require_unchanged()
        updates = {**updates, "updated_at": now()}
        if new_generation:
            updates["generation"] = self.manifest.generation + 1
        manifest = dataclasses.replace(self.manifest, **updates)
        self.store.write_manifest(self.collection, manifest.json_values())
        self.manifest = manifest

    def require_unchanged(self):
        """Refuse to commit over a manifest another writer changed since we read it."""
        stored = self.store.manifest_of(self.collection)
        if (stored.generation, stored.pending) != (self.manifest.generation, self.manifest.pending):
            raise ShituError(f"{self.where} was changed by another process; nothing more was changed, try again")
