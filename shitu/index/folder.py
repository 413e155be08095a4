"""``FolderStorage``: an index kept in one folder, rows and manifest in SQLite, vectors in FAISS files.

How a commit stays crash-safe here (the steps ``shitu.index.commit`` calls, all under the writer lock):

* ``stage``: the vectors after the change are written as the next generation, ``vectors.<N+1>.faiss``,
  fsynced; nothing names that file yet.
* ``publish`` (add, remove, repair): ONE SQLite transaction changes the rows and points the manifest at
  that file. ``publish_all`` (build): a complete new database, written beside the old one, is renamed
  over ``gallery.db``. Either is the commit point.
* ``clean``: FAISS files older than the previous generation go; the previous one stays for readers that
  have just read a manifest naming it.

A crash before the commit point leaves the old manifest naming the old, untouched FAISS file; the new file
is a leftover the next writer deletes. Why a ``gallery.db-journal`` left by a writer killed inside
``publish`` is never replayed into a newer database file, although a build renames a fresh file over
``gallery.db`` and SQLite finds journals by path:

* that transaction runs under the writer lock on a connection opened under it, so a journal it leaves
  belongs to the file that is ``gallery.db`` while the lock is held;
* the next connection to read that file rolls the journal back first, and a build is such a reader: it
  opens the old database (to reuse its vectors) before ``publish_all`` deletes any ``gallery.db-journal``
  and renames the new file in, all under the same lock, so no writer can create a journal in between;
* a reader whose connection predates a rename stops at ``Database.require_same_file`` instead of taking a
  later writer's journal for its own.

``synchronous = extra`` also syncs the folder once the journal is deleted, so the commit is durable as
well as atomic.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shitu.embed import ModelInfo
from shitu.errors import ShituError
from shitu.index.check import check_index
from shitu.index.database import Database, manifest_value, open_index, write_database
from shitu.index.files import (DB_NAME, JOURNAL, discard, next_generation, remove_stale_faiss, replace_durably,
                               write_lock)
from shitu.index.findings import CheckReport
from shitu.index.info import index_info
from shitu.index.manifest import Manifest
from shitu.index.snapshot import Snapshot
from shitu.index.storage import Change, Row
from shitu.index.vectors import (add_vectors, deletes_in_place, ids_of, load_faiss, make_faiss_index,
                                 resolve_index_type, search, write_faiss_file)


@dataclass
class Staged:
    """Vectors written for a commit that has not happened yet."""

    name: str  # the FAISS file
    generation: int
    count: int  # vectors it holds
    refilled: bool = False  # emptied and refilled from the stored vectors (its type cannot delete in place)
    rows: list[Row] | None = None  # a build's whole new state
    manifest: Manifest | None = None
    database: Path | None = None  # a build's new database file


class FolderStorage:
    """An index folder (``shitu.index.storage.Storage``)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def exists(self) -> bool:
        return (self.directory / DB_NAME).is_file()

    def resolve_index_type(self, index_type: str, count: int) -> str:
        return resolve_index_type(index_type, count)

    def open(self, model: ModelInfo | None = None) -> tuple[Database, Manifest]:
        """The database and its manifest; with ``model``, refused when another model built it."""
        return open_index(self.directory, model)

    def check(self, model_path: Path | None, repair: bool = False) -> CheckReport:
        return check_index(self, model_path, repair)

    def info(self) -> dict:
        return index_info(self.directory)

    def manifest_value(self, key: str):
        return manifest_value(self.directory, key) if self.exists() else None

    def committed_generation(self) -> int | None:
        return self.manifest_value("generation")

    def current(self, generation: int) -> bool:
        try:
            return self.committed_generation() == generation
        except ShituError:
            return False

    def read(self, model: ModelInfo | None = None, with_vectors: bool = False, attempts: int = 5) -> Snapshot:
        """The latest committed state, from one read transaction and the FAISS file its manifest names.

        Writers keep the FAISS file of the previous generation only, so when two commits land between our
        read of the manifest and our opening of its FAISS file, that file is gone: read again.
        """
        for attempt in range(attempts):
            db, _ = self.open(model)
            try:
                db.execute("begin")
                try:
                    manifest = db.manifest()
                    rows = {row.id: row for row in db.all_rows()}
                    ids, vectors = db.all_vectors(manifest.embedding_size) if with_vectors else (None, None)
                finally:
                    db.conn.execute("commit")
                try:
                    index = self.matching_faiss(manifest, list(rows))
                except ShituError:
                    if attempt + 1 == attempts or self.committed_generation() == manifest.generation:
                        raise  # nothing newer was committed: the file is really missing or damaged
                    continue
                return Snapshot(manifest, rows, lambda queries, k: search(index, queries, k), self.current,
                                ids, vectors, index)
            finally:
                db.close()
        raise AssertionError("unreachable")

    def matching_faiss(self, manifest: Manifest, row_ids) -> object:
        """The live FAISS index, refused unless it holds exactly one vector under each row's id: an id
        without a row (a damaged id map) would otherwise be looked up as a row that does not exist."""
        index = load_faiss(self.directory, manifest)
        if not np.array_equal(np.sort(ids_of(index)), np.sort(np.asarray(row_ids, dtype=np.int64))):
            raise ShituError(f"index {self.directory} is out of step: the ids of the {index.ntotal} vectors in "
                             f"{manifest.faiss_file} are not those of its {len(row_ids)} rows; run "
                             f"'shitu check --repair --index {self.directory}'. The index was not changed")
        return index

    @contextmanager
    def writing(self, model: ModelInfo | None = None, damaged_ok: bool = False):
        """The writer lock, then the database opened under it: a build swaps ``gallery.db`` by rename, and
        a connection opened before that would go on changing the replaced file."""
        if not damaged_ok and not self.exists():
            Database(self.directory)  # the usual "no index" error, before the lock creates a folder
        with write_lock(self.directory):
            session = FolderSession(self, model, damaged_ok)
            try:
                yield session
            finally:
                session.close()


class FolderSession:
    """A folder index opened under its writer lock (``shitu.index.storage.Session``)."""

    def __init__(self, storage: FolderStorage, model: ModelInfo | None, damaged_ok: bool):
        self.storage, self.directory = storage, storage.directory
        self.db, self.manifest = None, None
        try:
            self.db, self.manifest = storage.open(model)
        except ShituError:
            if not damaged_ok:
                raise  # a build replaces a missing or damaged index, a repair reports it

    def close(self):
        if self.db is not None:
            self.db.close()

    # -- reading (delegated to the database) ------------------------------------------------------------
    def rows(self, ids) -> dict[int, Row]:
        return self.db.rows(ids)

    def rows_by_path(self, paths: list[str]) -> dict[str, Row]:
        return self.db.rows_by_path(paths)

    def ids_of_label(self, label: str) -> set[int]:
        return self.db.ids_of_label(label)

    def ids_below(self, path: str) -> set[int]:
        return self.db.ids_below(path)

    def all_rows(self) -> list[Row]:
        return self.db.all_rows()

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.db.all_vectors(self.manifest.embedding_size)

    def highest_id(self) -> int:
        return self.db.highest_id()

    # -- a change in place -------------------------------------------------------------------------------
    def stage(self, change: Change, refill: bool = False) -> Staged:
        index, refilled = self.changed_faiss(change, refill)
        generation = next_generation(self.directory, self.manifest.generation)
        name = write_faiss_file(self.directory, index, generation)
        return Staged(name, generation, index.ntotal, refilled)

    def changed_faiss(self, change: Change, refill: bool):
        """(index, refilled): the live FAISS index with ``change`` applied in memory.

        Types that cannot delete in place (``vectors.deletes_in_place``) are emptied and refilled from
        the vectors stored in SQLite, keeping what they learned in training; a repair (``refill``) builds
        a fresh index of every stored vector. A missing, damaged or out-of-step FAISS file is refused
        before anything is written.
        """
        m = self.manifest
        if refill:
            ids, vectors = self.all_vectors()
            return make_faiss_index(m.index_type, m.embedding_size, vectors, ids), True
        index = self.storage.matching_faiss(m, self.db.row_ids())
        if change.delete_ids and not deletes_in_place(index):
            ids, vectors = self.remaining_vectors(change)
            index.reset()
            add_vectors(index, vectors, ids, m.index_type)
            return index, True
        if change.delete_ids:
            removed = index.remove_ids(np.array(change.delete_ids, dtype=np.int64))
            if removed != len(change.delete_ids):
                raise ShituError(f"index {self.directory} is out of step: {m.faiss_file} holds "
                                 f"{index.ntotal + removed} vectors for {self.db.count()} rows; run 'shitu check "
                                 f"--repair --index {self.directory}'. The index was not changed")
        if change.new_rows:
            add_vectors(index, *reversed(change.new_vectors()), m.index_type)
        return index, False

    def remaining_vectors(self, change: Change) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the stored rows once ``change`` is applied."""
        ids, vectors = self.all_vectors()
        keep = ~np.isin(ids, np.array(change.delete_ids, dtype=np.int64))
        ids, vectors = ids[keep], vectors[keep]
        if change.new_rows:
            new_ids, new = change.new_vectors()
            ids, vectors = np.concatenate([ids, new_ids]), np.concatenate([vectors, new])
        return ids, vectors

    def publish(self, change: Change, staged: Staged, next_id: int) -> Manifest:
        """Apply ``change`` and point the manifest at the staged file in one SQLite transaction (the
        module docstring says why its journal is safe)."""
        conn = self.db.conn
        self.db.require_same_file()
        conn.execute("pragma synchronous = extra")
        conn.execute("begin immediate")
        try:
            self.require_generation()
            self.db.apply_change(change)
            count, labels = conn.execute("select count(*), count(distinct label) from images").fetchone()
            if count != staged.count:
                raise ShituError(f"index {self.directory}: {count} rows but {staged.count} FAISS vectors after "
                                 f"the change; nothing was changed (run 'shitu check')")
            manifest = self.manifest.committed(staged.name, staged.generation, count, labels, next_id)
            changed = {k: v for k, v in manifest.entries().items() if k in
                       ("faiss_file", "generation", "count", "labels", "next_id", "updated_at")}
            self.db.write_entries(changed)
            conn.execute("commit")
        except BaseException:
            if conn.in_transaction:
                conn.execute("rollback")
            raise
        self.manifest = manifest
        return manifest

    def require_generation(self):
        """Refuse to commit over a manifest that changed since we read it (a writer ignoring the lock)."""
        value = self.db.conn.execute("select value from manifest where key = 'generation'").fetchone()
        if value is None or json.loads(value[0]) != self.manifest.generation:
            raise ShituError(f"index {self.directory} was changed by another process; nothing was changed, "
                             f"try again")

    # -- a whole new state (build) -----------------------------------------------------------------------
    def stage_all(self, rows: list[Row], manifest: Manifest) -> Staged:
        generation = next_generation(self.directory, self.manifest.generation if self.manifest else 0)
        ids = np.array([r.id for r in rows], dtype=np.int64)
        vectors = np.stack([r.vector for r in rows]).astype(np.float32)
        index = make_faiss_index(manifest.index_type, manifest.embedding_size, vectors, ids)
        name = write_faiss_file(self.directory, index, generation)
        labels = len({r.label for r in rows})
        manifest = manifest.committed(name, generation, len(rows), labels, manifest.next_id)
        staged = Staged(name, generation, len(rows), rows=rows, manifest=manifest)
        try:
            staged.database = write_database(self.directory, rows, manifest)
        except BaseException:
            discard(self.directory / name)
            raise
        return staged

    def publish_all(self, staged: Staged) -> Manifest:
        """Rename the new database over ``gallery.db``: the commit point of a build."""
        if self.db is not None:
            self.db.close()
            self.db = None
        (self.directory / JOURNAL).unlink(missing_ok=True)
        replace_durably(staged.database, self.directory / DB_NAME)
        self.manifest = staged.manifest
        return staged.manifest

    # -- the calibration: a manifest entry, no new generation -------------------------------------------
    def store_threshold(self, record: dict):
        """Write a calibration record into the manifest; refused if the index changed since it was
        measured (another generation or model)."""
        if self.manifest.generation != record["generation"] or self.manifest.model_sha256 != record["model_sha256"]:
            raise ShituError(f"index {self.directory} changed while it was being calibrated; run "
                             f"'shitu calibrate' again")
        self.db.require_same_file()
        try:
            with self.db.conn:
                self.db.write_entries({"threshold": json.dumps(record)})
        except sqlite3.DatabaseError as exc:
            raise ShituError(f"cannot store the threshold in {self.directory / DB_NAME}: {exc}") from None

    # -- after a commit, or instead of one ----------------------------------------------------------------
    def abandon(self, staged: Staged):
        if self.storage.committed_generation() != staged.generation:
            discard(self.directory / staged.name, *([staged.database] if staged.database else []))

    def clean(self, previous: Manifest | None):
        keep = {self.manifest.faiss_file if self.manifest else None, previous.faiss_file if previous else None}
        remove_stale_faiss(self.directory, keep - {None})
