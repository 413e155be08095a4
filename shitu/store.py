"""The index on disk: one SQLite database (rows, vectors, manifest) and one live FAISS file.

Crash safety comes from a single commit point per write. Every writer holds ``write_lock`` and first
writes a new FAISS file under a new generation number (``vectors.<gen>.faiss``, fsynced). Then:

* ``build-index`` writes a complete new database beside the old one and renames it over ``gallery.db``;
* ``add``, ``remove`` and ``check --repair`` change ``gallery.db`` in place in one SQLite transaction
  (rollback-journal mode, never WAL: a WAL file would outlive the rename and be replayed into the new file).

A crash before the commit leaves the old manifest pointing at the old, untouched FAISS file; readers
always open the file their manifest names. The previous generation is kept so a reader that has just
read the manifest can still open its file. Because SQLite finds a rollback journal by path, a
connection must never outlive a rename of ``gallery.db`` (see ``IndexStore.require_same_file``).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlite_utils

from shitu.embed import ModelInfo, default_model_path, resolve_model
from shitu.errors import ShituError

FORMAT_VERSION = 1
DB_NAME = "gallery.db"
LOCK_NAME = ".write.lock"
# bench/search.py on 2 cores: exact search costs 1.6 ms a query at 1e4 vectors and 16 ms at 1e5 (linear),
# HNSW32 0.3-1 ms. Up to 20 000 images exact search stays near 3 ms, under the network's 5-8 ms, and
# is never wrong; beyond, it grows past the network's cost.
AUTO_FLAT_LIMIT = 20_000
# bench/search.py, 2 cores, 1e6 vectors shaped like the shipped model's embeddings (--shape gallery):
# efSearch 32 and 64 find the exact first hit for every query (0.32 and 0.60 ms), 128 too but takes
# 1.19 ms. On the isotropic worst case at 1e5, 64 gives recall@1 0.965 and 128 0.985.
HNSW_EF_SEARCH = 64
FEW_QUERIES = 16  # below this many query vectors, FAISS searches on one thread


@dataclass
class Row:
    """One gallery image as stored."""

    id: int
    path: str
    label: str
    sha256: str


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def faiss_module():
    import faiss

    return faiss


def resolve_index_type(index_type: str, count: int) -> str:
    """``auto`` becomes exact search for small galleries and HNSW beyond ``AUTO_FLAT_LIMIT``."""
    if index_type == "auto":
        return "Flat" if count < AUTO_FLAT_LIMIT else "HNSW32"
    return index_type


def make_faiss_index(factory: str, dimension: int, vectors: np.ndarray, ids: np.ndarray):
    """A trained ``IDMap2,<factory>`` inner-product index holding ``vectors`` under ``ids``."""
    faiss = faiss_module()
    try:
        index = faiss.index_factory(dimension, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        raise ShituError(f"bad --index-type {factory!r}: not a FAISS factory string "
                         f"(try Flat, HNSW32, IVF256,Flat or auto)") from None
    if not index.is_trained:
        if len(vectors) == 0:
            raise ShituError(f"index type {factory} must be trained, but the gallery is empty")
        try:
            index.train(vectors)
        except RuntimeError as exc:
            raise ShituError(f"cannot train index type {factory} on {len(vectors)} vectors: "
                             f"{str(exc).splitlines()[0]}; use fewer lists or --index-type auto") from None
    if len(vectors):
        index.add_with_ids(vectors, ids)
    return index


def tune_search(index, settings: dict):
    """Apply query-time knobs (HNSW efSearch, IVF nprobe) stored in the manifest."""
    faiss = faiss_module()
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(settings.get("ef_search", HNSW_EF_SEARCH))
    if hasattr(inner, "nprobe"):
        inner.nprobe = int(settings.get("nprobe", 16))


def vector_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


class IndexStore:
    """An index directory opened for reading; ``shitu.build`` and ``shitu.maintain`` change it."""

    def __init__(self, directory: Path, db: sqlite_utils.Database, manifest: dict,
                 identity: tuple[int, int] | None = None):
        self.directory, self.db, self.manifest = directory, db, manifest
        self.identity = identity  # (device, inode) of the gallery.db this connection reads

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | Path, model: ModelInfo | None = None) -> "IndexStore":
        """Open an existing index; with ``model``, refuse one built by a different model."""
        directory = Path(directory)
        db_path = directory / DB_NAME
        if not db_path.is_file():
            raise ShituError(f"no index at {directory}: run 'shitu build-index GALLERY --index {directory}'")
        identity = file_identity(db_path)  # taken first: a rename in between then errs on the safe side
        db = connect(db_path)
        manifest = read_manifest(db, directory)
        store = cls(directory, db, manifest, identity)
        if model is not None:
            store.require_model(model)
        return store

    def require_model(self, model: ModelInfo):
        m = self.manifest
        if m["model_sha256"] != model.sha256 or m["embedding_size"] != model.embedding_size:
            raise ShituError(
                f"index {self.directory} was built with model {m['model_name']} {m['model_version']} "
                f"(sha256 {m['model_sha256'][:12]}, {m['embedding_size']}-d), not with {model.describe()}; "
                f"rebuild it with 'shitu build-index' or pass the matching --model")

    # -- reading -----------------------------------------------------------------------------------
    def require_same_file(self):
        """Refuse to go on reading after ``build-index`` has renamed a new ``gallery.db`` over ours.

        SQLite looks for a hot journal by path at the start of every read. A connection to the replaced
        file would take the ``gallery.db-journal`` of a writer changing the new file for its own, roll
        it back into the old file and delete it, breaking that writer's transaction. Checking just
        before each read leaves only a window of microseconds, in which a whole rebuild would have to
        finish and the next writer start its transaction.
        """
        if self.identity is not None and file_identity(self.directory / DB_NAME) != self.identity:
            raise ShituError(f"index {self.directory} was rebuilt while this command was reading it; "
                             f"run the command again")

    def execute(self, sql: str, params=()) -> list[tuple]:
        """All result rows of a read, after ``require_same_file``; a damaged database is a ShituError."""
        self.require_same_file()
        try:
            return self.db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise ShituError(f"index database {self.directory / DB_NAME} is damaged ({exc}); rebuild it "
                             f"with 'shitu build-index'") from None

    def load_faiss(self):
        faiss = faiss_module()
        path = self.directory / self.manifest["faiss_file"]
        if not path.is_file():
            raise ShituError(f"index {self.directory} is damaged: {path.name} is missing "
                             f"(run 'shitu check --repair --index {self.directory}')")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            raise ShituError(f"index {self.directory} is damaged: {path.name} cannot be read "
                             f"(run 'shitu check --repair --index {self.directory}')") from None
        tune_search(index, self.manifest)
        return index

    def count(self) -> int:
        return self.execute("select count(*) from images")[0][0]

    def rows(self, ids) -> dict[int, Row]:
        """Stored rows for the given ids."""
        wanted = sorted({int(i) for i in ids if i >= 0})
        found = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start:start + 900]
            sql = f"select id, path, label, sha256 from images where id in ({','.join('?' * len(chunk))})"
            for row in self.execute(sql, chunk):
                found[row[0]] = Row(*row)
        return found

    def all_rows(self) -> list[Row]:
        return [Row(*r) for r in self.execute("select id, path, label, sha256 from images order by id")]

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every stored image, in id order."""
        ids, blobs = [], []
        for row_id, blob in self.execute("select id, vector from images order by id"):
            ids.append(row_id)
            blobs.append(blob)
        size = self.manifest["embedding_size"]
        matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), size)
        return np.array(ids, dtype=np.int64), matrix

    def label_counts(self) -> dict[str, int]:
        return dict(self.execute("select label, count(*) from images group by label order by label"))


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, or None when it is gone: tells a renamed-over file from its successor."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


@dataclass
class Snapshot:
    """One committed state read whole, so a reader's answers never mix two states of a changing index.

    ``rows`` and the manifest come from one read transaction; ``index`` is the FAISS file that manifest
    names. ``vectors`` (id order, as ``ids``) is read only when asked for.
    """

    directory: Path
    manifest: dict
    rows: dict[int, Row]
    index: object
    ids: np.ndarray | None = None
    vectors: np.ndarray | None = None

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query vector; missing neighbours have id -1.

        A few queries run on one OpenMP thread: measured on 2 cores against a 10 000-image Flat index,
        FAISS's threads made one query take 23 ms (median) instead of 1.2 ms, waiting for each other and
        for onnxruntime's spinning threads (bench/query_startup.py).
        """
        k = max(1, min(k, self.index.ntotal))
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) >= FEW_QUERIES:
            return self.index.search(vectors, k)
        faiss = faiss_module()
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(vectors, k)
        finally:
            faiss.omp_set_num_threads(threads)

    def is_current(self) -> bool:
        """Whether no writer has committed since this snapshot was read (one small query)."""
        try:
            return committed_generation(self.directory) == self.manifest["generation"]
        except ShituError:
            return False


def read_snapshot(directory: str | Path, model: ModelInfo | None = None, with_vectors: bool = False,
                  attempts: int = 5) -> Snapshot:
    """Read the latest committed state of an index.

    Writers keep the FAISS file of the previous generation only, so when two commits land between our
    read of the manifest and our opening of its FAISS file, that file is gone: read again.
    """
    directory = Path(directory)
    for attempt in range(attempts):
        store = IndexStore.open(directory, model)
        try:
            store.execute("begin")
            try:
                store.manifest = read_manifest(store.db, directory)
                rows = {row.id: row for row in store.all_rows()}
                ids, vectors = store.all_vectors() if with_vectors else (None, None)
            finally:
                store.db.execute("commit")
            try:
                return Snapshot(directory, store.manifest, rows, store.load_faiss(), ids, vectors)
            except ShituError:
                if attempt + 1 == attempts or committed_generation(directory) == store.manifest["generation"]:
                    raise  # nothing newer was committed: the file is really missing or damaged
        finally:
            store.db.close()
    raise AssertionError("unreachable")


def manifest_value(directory: str | Path, key: str):
    """One manifest entry read on its own (None when absent or unreadable); for cheap, frequent checks."""
    db = connect(Path(directory) / DB_NAME)
    try:
        row = db.execute("select value from manifest where key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else None
    except sqlite3.DatabaseError:
        return None
    finally:
        db.conn.close()


def committed_generation(directory: Path) -> int | None:
    """The generation the index's manifest names now."""
    return manifest_value(directory, "generation")


def model_for_index(directory: str | Path, model: str | Path | None) -> Path:
    """The model a command uses: ``model`` when given, else the file the index was built with if it is
    still there, else the shipped model.

    So an index built with the int8 or a custom model is queried with that model without ``--model``;
    its sha256 is still checked against the manifest when the index opens.
    """
    if model:
        return resolve_model(model)
    if (Path(directory) / DB_NAME).is_file():
        try:
            remembered = manifest_value(directory, "model_path")
        except ShituError:
            remembered = None
        if remembered and Path(remembered).is_file():
            return Path(remembered)
    return default_model_path()


def connect(db_path: Path) -> sqlite_utils.Database:
    """Open the SQLite file, turning "not a database" into a clear message."""
    try:
        conn = sqlite3.connect(str(db_path), timeout=30, isolation_level=None)
        conn.execute("pragma busy_timeout = 30000")
        conn.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ShituError(f"index database {db_path} is damaged ({exc})") from None
    return sqlite_utils.Database(conn)


def read_manifest(db: sqlite_utils.Database, directory: Path) -> dict:
    """The manifest as a dict; refuses unknown format versions and unfinished builds."""
    try:
        manifest = {k: json.loads(v) for k, v in db.execute("select key, value from manifest")}
    except sqlite3.DatabaseError:
        raise ShituError(f"{directory} holds no finished shitu index (no manifest); "
                         f"run 'shitu build-index' again") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ShituError(f"index {directory} has format version {version!r}; this shitu reads version "
                         f"{FORMAT_VERSION}: rebuild it with 'shitu build-index'")
    return manifest


def try_lock(directory: Path):
    """The writer lock's open file when we got the lock, None when another process holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextmanager
def write_lock(directory: Path):
    """Hold the index's writer lock; a second writer is refused at once with a clear message."""
    handle = try_lock(directory)
    if handle is None:
        raise ShituError(f"another shitu process is changing the index at {directory}; "
                         f"try again when it has finished")
    try:
        yield
    finally:
        handle.close()


def fsync_path(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_faiss_file(directory: Path, index, generation: int) -> str:
    """Write ``vectors.<generation>.faiss`` durably (temp file, fsync, rename, fsync folder)."""
    faiss = faiss_module()
    name = f"vectors.{generation}.faiss"
    tmp = directory / f".{name}.tmp"
    faiss.write_index(index, str(tmp))
    fsync_path(tmp)
    os.replace(tmp, directory / name)
    fsync_path(directory)
    return name


def remove_stale_faiss(directory: Path, keep: set[str]):
    """Delete FAISS files and temp files no manifest refers to any more."""
    for path in directory.glob("vectors.*.faiss"):
        if path.name not in keep:
            path.unlink(missing_ok=True)
    for path in directory.glob(".vectors.*.tmp"):
        path.unlink(missing_ok=True)


def create_schema(db: sqlite_utils.Database):
    db["images"].create({"id": int, "path": str, "label": str, "sha256": str, "added_at": str,
                         "vector": bytes}, pk="id", not_null={"path", "label", "sha256", "vector"},
                        if_not_exists=True)
    db["images"].create_index(["path"], unique=True, if_not_exists=True)
    db["images"].create_index(["label"], if_not_exists=True)
    db["manifest"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
