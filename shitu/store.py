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
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlite_utils

from shitu.embed import ModelInfo, default_model_path, resolve_model
from shitu.errors import IndexBusy, ShituError

FORMAT_VERSION = 1
DB_NAME = "gallery.db"
# bench/search.py on 2 cores: exact search costs 1.6 ms a query at 1e4 vectors and 16 ms at 1e5 (linear),
# HNSW32 0.3-1 ms. Up to 20 000 images exact search stays near 3 ms, under the network's 5-8 ms, and
# is never wrong; beyond, it grows past the network's cost.
AUTO_FLAT_LIMIT = 20_000
# bench/search.py, 2 cores, 1e6 vectors shaped like the shipped model's embeddings (--shape gallery):
# efSearch 32 and 64 find the exact first hit for every query (0.32 and 0.60 ms), 128 too but takes
# 1.19 ms. On the isotropic worst case at 1e5, 64 gives recall@1 0.965 and 128 0.985.
HNSW_EF_SEARCH = 64
FEW_QUERIES = 16  # below this many query vectors, FAISS searches on one thread
SHOWN_IDS = 10  # ids listed per problem; the count says how many there are


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
        add_vectors(index, vectors, ids, factory)
    return index


def add_vectors(index, vectors: np.ndarray, ids: np.ndarray, factory: str):
    """``add_with_ids``, with FAISS's refusal (a factory string of its own id map) as one line."""
    try:
        index.add_with_ids(vectors, ids)
    except RuntimeError as exc:
        raise ShituError(f"index type {factory!r} cannot hold shitu's ids ({faiss_reason(exc)}); "
                         f"use Flat, HNSW32, IVF256,Flat or auto (shitu adds the id map itself)") from None


def tune_search(index, settings: dict):
    """Apply query-time knobs (HNSW efSearch, IVF nprobe) stored in the manifest."""
    faiss = faiss_module()
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(settings.get("ef_search", HNSW_EF_SEARCH))
    if hasattr(inner, "nprobe"):
        inner.nprobe = int(settings.get("nprobe", 16))


def show(ids: list[int]) -> str:
    """The first few ids of a list, and how many more there are."""
    shown = ", ".join(str(i) for i in ids[:SHOWN_IDS])
    return shown + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


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

    def read_faiss_file(self):
        """The manifest's FAISS file as stored, unchecked (``check`` reports what is wrong with it)."""
        faiss = faiss_module()
        path = self.directory / self.manifest["faiss_file"]
        if not path.is_file():
            raise ShituError(f"index {self.directory} is damaged: {path.name} is missing "
                             f"(run 'shitu check --repair --index {self.directory}')")
        try:
            return faiss.read_index(str(path))
        except RuntimeError:
            raise ShituError(f"index {self.directory} is damaged: {path.name} cannot be read "
                             f"(run 'shitu check --repair --index {self.directory}')") from None

    def load_faiss(self):
        """The manifest's FAISS file, refused unless it is the id-mapped index of the right dimension
        that shitu writes: any other would answer with the wrong rows or crash inside FAISS."""
        index = self.read_faiss_file()
        name, size = self.manifest["faiss_file"], self.manifest["embedding_size"]
        wrong = None
        if not isinstance(index, faiss_module().IndexIDMap2):
            wrong = "is not an id-mapped index"
        elif index.d != size:
            wrong = f"holds {index.d}-d vectors, the model makes {size}-d ones"
        if wrong:
            raise ShituError(f"index {self.directory} is damaged: {name} {wrong} (run 'shitu check "
                             f"--repair --index {self.directory}')")
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
        """(ids, vectors) of every stored image, in id order; blobs of the wrong size are refused
        rather than misread."""
        size = self.manifest["embedding_size"]
        ids, blobs, wrong = [], [], []
        for row_id, blob in self.execute("select id, vector from images order by id"):
            if not isinstance(blob, bytes) or len(blob) != size * 4:
                wrong.append(row_id)
            else:
                ids.append(row_id)
                blobs.append(blob)
        if wrong:
            raise ShituError(f"index {self.directory} is damaged: {len(wrong)} stored vectors have the wrong "
                             f"size (ids {show(wrong)}); rebuild it with 'shitu build-index'")
        matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), size)
        return np.array(ids, dtype=np.int64), matrix

    def row_ids(self) -> list[int]:
        return [row[0] for row in self.execute("select id from images order by id")]

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
                return Snapshot(directory, store.manifest, rows, load_matching_faiss(store, list(rows)), ids,
                                vectors)
            except ShituError:
                if attempt + 1 == attempts or committed_generation(directory) == store.manifest["generation"]:
                    raise  # nothing newer was committed: the file is really missing or damaged
        finally:
            store.db.close()
    raise AssertionError("unreachable")


def load_matching_faiss(store: IndexStore, row_ids) -> object:
    """The live FAISS index, refused unless it holds exactly one vector under each row's id: an id
    without a row (a damaged id map) would otherwise be looked up as a row that does not exist."""
    index = store.load_faiss()
    faiss_ids = np.sort(faiss_module().vector_to_array(index.id_map))
    if not np.array_equal(faiss_ids, np.sort(np.asarray(row_ids, dtype=np.int64))):
        raise ShituError(f"index {store.directory} is out of step: the ids of the {index.ntotal} vectors in "
                         f"{store.manifest['faiss_file']} are not those of its {len(row_ids)} rows; run "
                         f"'shitu check --repair --index {store.directory}'. The index was not changed")
    return index


def manifest_value(directory: str | Path, key: str):
    """One manifest entry read on its own (None when absent or unreadable); for cheap, frequent checks."""
    db = connect(Path(directory) / DB_NAME)
    try:
        row = db.execute("select value from manifest where key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else None
    except (sqlite3.DatabaseError, TypeError, ValueError):
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
        if isinstance(remembered, str) and remembered and Path(remembered).is_file():
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


MANIFEST_TYPES = {  # what every reader relies on; entries missing here are optional
    "format_version": int, "model_name": str, "model_version": str, "model_sha256": str,
    "embedding_size": int, "index_type": str, "faiss_file": str, "generation": int, "count": int,
    "labels": int,
}
OPTIONAL_TYPES = {"next_id": int, "input_size": int, "ef_search": int, "nprobe": int, "gallery_root": str,
                  "model_path": str}
FAISS_NAME = re.compile(r"^vectors\.[0-9]+\.faiss$")


def read_manifest(db: sqlite_utils.Database, directory: Path) -> dict:
    """The manifest as a dict; refuses unknown format versions, unfinished builds and damaged entries."""
    try:
        entries = db.execute("select key, value from manifest").fetchall()
    except sqlite3.DatabaseError:
        raise ShituError(f"{directory} holds no finished shitu index (no manifest); "
                         f"run 'shitu build-index' again") from None
    manifest = {}
    for key, value in entries:
        try:
            manifest[key] = json.loads(value)
        except (TypeError, ValueError):
            raise damaged_manifest(directory, f"entry {key!r} is not JSON") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ShituError(f"index {directory} has format version {version!r}; this shitu reads version "
                         f"{FORMAT_VERSION}: rebuild it with 'shitu build-index'")
    validate_manifest(manifest, directory)
    return manifest


def validate_manifest(manifest: dict, directory: Path):
    """Every entry a reader uses has the type it expects, so damage is one clear error, not a crash later."""
    for key, kind in {**MANIFEST_TYPES, **OPTIONAL_TYPES}.items():
        if key not in manifest:
            if key in MANIFEST_TYPES:
                raise damaged_manifest(directory, f"entry {key!r} is missing")
            continue
        value = manifest[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise damaged_manifest(directory, f"entry {key!r} is {value!r}, not a "
                                              f"{'non-negative integer' if kind is int else 'string'}")
    if manifest["embedding_size"] < 1:
        raise damaged_manifest(directory, f"entry 'embedding_size' is {manifest['embedding_size']}")
    if not FAISS_NAME.match(manifest["faiss_file"]):
        raise damaged_manifest(directory, f"entry 'faiss_file' is {manifest['faiss_file']!r}, not a "
                                          f"vectors.N.faiss name")


def damaged_manifest(directory: Path, what: str) -> ShituError:
    return ShituError(f"index {directory} is damaged: its manifest {what}; rebuild it with "
                      f"'shitu build-index'")


def try_lock(directory: Path) -> int | None:
    """A descriptor of the index folder holding its writer lock, or None when another process holds it.

    The lock is ``flock`` on the folder itself, not on a file inside it: a lock file can be deleted
    while a writer holds it, and the next writer then locks a fresh file and gets in beside the first.
    Opening a folder needs read permission only, so a read-only ``check`` can take the lock too.
    Release it with ``os.close``.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ShituError(f"cannot open index folder {directory}: {reason(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def make_index_folder(directory: Path):
    """Create the index folder if needed; a file in its place is a clear error, not a traceback."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ShituError(f"--index {directory} is a file, not an index folder") from None
    except OSError as exc:
        raise ShituError(f"cannot create index folder {directory}: {reason(exc)}") from None


def require_writable(directory: Path):
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ShituError(f"cannot write to index folder {directory}: permission denied (or a read-only "
                         f"file system); the index was not changed")


@contextmanager
def write_lock(directory: Path):
    """Hold the index's writer lock; a second writer is refused at once with a clear message.

    Whatever the file system or SQLite refuses inside (a full disk, a permission, a folder where a file
    should be) becomes one line: every writer commits last, so the index keeps its committed state.
    """
    make_index_folder(directory)
    fd = try_lock(directory)
    if fd is None:
        raise IndexBusy(f"another shitu process is changing the index at {directory}; "
                         f"try again when it has finished")
    try:
        require_writable(directory)
        with errors_explained(directory):
            yield
    finally:
        os.close(fd)


@contextmanager
def errors_explained(directory: Path):
    """SQLite's own failures (a damaged page, a full disk) and refused file operations as one line
    instead of a traceback; a transaction they interrupt is rolled back, so nothing was changed."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise ShituError(f"index database {directory / DB_NAME} failed: {exc}; nothing was changed "
                         f"(see 'shitu check --index {directory}')") from None
    except OSError as exc:
        raise write_failed(directory, exc.filename, reason(exc)) from None


def write_failed(directory: Path, name, why: str) -> ShituError:
    target = f" {Path(name).name}" if name else ""
    return ShituError(f"index {directory}: cannot write{target} ({why}); the index keeps its last committed "
                      f"state (see 'shitu check --index {directory}')")


def faiss_reason(exc: RuntimeError) -> str:
    """The readable end of a FAISS error ("... failed: write error in F: 4014 != 36864 (No space ...)")."""
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown FAISS error"
    last = re.sub(r"^Error in .*? at \S+:\d+: ", "", last)  # FAISS's C++ signature and source line
    return last.rsplit("failed: ", 1)[-1]


def reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def discard(*paths: Path):
    """Delete files a failed write leaves, as far as the file system lets us (they are harmless)."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def fsync_path(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_faiss_file(directory: Path, index, generation: int) -> str:
    """Write ``vectors.<generation>.faiss`` durably (temp file, fsync, rename, fsync folder); a failed
    write leaves no temp file behind.

    The bytes go through a Python file: FAISS's own writer only prints a failed final flush (a full
    disk) and returns, which would leave a truncated file to be committed.
    """
    faiss = faiss_module()
    name = f"vectors.{generation}.faiss"
    tmp = directory / f".{name}.tmp"
    try:
        with open(tmp, "wb") as handle:
            faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))
        fsync_path(tmp)
        os.replace(tmp, directory / name)
    except RuntimeError as exc:  # FAISS reports a failed write (a full disk) this way
        discard(tmp)
        raise write_failed(directory, tmp, faiss_reason(exc)) from None
    except BaseException:
        discard(tmp)
        raise
    fsync_path(directory)
    return name


def remove_stale_faiss(directory: Path, keep: set[str]):
    """Delete FAISS files and temp files no manifest refers to any more."""
    stale = [path for path in directory.glob("vectors.*.faiss") if path.name not in keep]
    discard(*stale, *directory.glob(".vectors.*.tmp"))


def create_schema(db: sqlite_utils.Database):
    db["images"].create({"id": int, "path": str, "label": str, "sha256": str, "added_at": str,
                         "vector": bytes}, pk="id", not_null={"path", "label", "sha256", "vector"},
                        if_not_exists=True)
    db["images"].create_index(["path"], unique=True, if_not_exists=True)
    db["images"].create_index(["label"], if_not_exists=True)
    db["manifest"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
