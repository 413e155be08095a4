"""The SQLite side of a folder index: ``gallery.db`` holds the rows (with their vectors) and the manifest.

Rollback-journal mode only, never WAL: a WAL file would outlive build-index's rename of a new database
over ``gallery.db`` and be replayed into it. Because SQLite finds a rollback journal by path, a
connection must never outlive such a rename (see ``Database.require_same_file``).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import sqlite_utils

from shitu.embed import ModelInfo
from shitu.errors import ShituError
from shitu.index.files import DB_NAME, DB_TEMP, discard, file_identity, fsync_path
from shitu.index.manifest import Manifest, now
from shitu.index.storage import Change, Row

SHOWN_IDS = 10  # ids listed per problem; the count says how many there are
CHUNK = 900  # ids or paths per "in (...)" query, under SQLite's limit of bound parameters


def show(ids: list[int]) -> str:
    """The first few ids of a list, and how many more there are."""
    shown = ", ".join(str(i) for i in ids[:SHOWN_IDS])
    return shown + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def vector_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def connect(db_path: Path) -> sqlite_utils.Database:
    """Open the SQLite file, turning "not a database" into a clear message."""
    try:
        conn = sqlite3.connect(str(db_path), timeout=30, isolation_level=None)
        conn.execute("pragma busy_timeout = 30000")
        conn.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ShituError(f"index database {db_path} is damaged ({exc})") from None
    return sqlite_utils.Database(conn)


def manifest_value(directory: Path, key: str):
    """One manifest entry read on its own (None when absent or unreadable); for cheap, frequent checks."""
    db = connect(directory / DB_NAME)
    try:
        row = db.execute("select value from manifest where key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else None
    except (sqlite3.DatabaseError, TypeError, ValueError):
        return None
    finally:
        db.conn.close()


def open_index(directory: Path, model: ModelInfo | None = None) -> tuple["Database", Manifest]:
    """The database of an index folder and its manifest; with ``model``, refused when another model
    built it. The caller closes the database."""
    db = Database(directory)
    try:
        manifest = db.manifest()
        if model is not None:
            manifest.require_model(model, directory)
    except BaseException:
        db.close()
        raise
    return db, manifest


class Database:
    """``gallery.db`` opened: reads that stop at a renamed-over file, and the rows and manifest in it."""

    def __init__(self, directory: Path):
        self.directory = directory
        path = directory / DB_NAME
        if not path.is_file():
            raise ShituError(f"no index at {directory}: run 'shitu build-index GALLERY --index {directory}'")
        self.identity = file_identity(path)  # taken first: a rename in between then errs on the safe side
        self.db = connect(path)
        self.conn = self.db.conn

    def close(self):
        self.conn.close()

    def require_same_file(self):
        """Refuse to go on reading after ``build-index`` has renamed a new ``gallery.db`` over ours.

        SQLite looks for a hot journal by path at the start of every read. A connection to the replaced
        file would take the ``gallery.db-journal`` of a writer changing the new file for its own, roll
        it back into the old file and delete it, breaking that writer's transaction. Checking just
        before each read leaves only a window of microseconds, in which a whole rebuild would have to
        finish and the next writer start its transaction.
        """
        if file_identity(self.directory / DB_NAME) != self.identity:
            raise ShituError(f"index {self.directory} was rebuilt while this command was reading it; "
                             f"run the command again")

    def execute(self, sql: str, params=()) -> list[tuple]:
        """All result rows of a read, after ``require_same_file``; a damaged database is a ShituError."""
        self.require_same_file()
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise ShituError(f"index database {self.directory / DB_NAME} is damaged ({exc}); rebuild it "
                             f"with 'shitu build-index'") from None

    # -- the manifest ----------------------------------------------------------------------------------
    def manifest(self) -> Manifest:
        try:
            entries = dict(self.conn.execute("select key, value from manifest").fetchall())
        except sqlite3.DatabaseError:
            raise ShituError(f"{self.directory} holds no finished shitu index (no manifest); "
                             f"run 'shitu build-index' again") from None
        return Manifest.from_entries(entries, self.directory)

    def write_entries(self, entries: dict[str, str]):
        """Manifest entries replaced inside the caller's transaction."""
        self.conn.executemany("insert or replace into manifest (key, value) values (?, ?)", list(entries.items()))

    # -- rows ------------------------------------------------------------------------------------------
    def count(self) -> int:
        return self.execute("select count(*) from images")[0][0]

    def counts(self) -> tuple[int, int]:
        """(rows, distinct labels)."""
        return tuple(self.execute("select count(*), count(distinct label) from images")[0])

    def rows(self, ids) -> dict[int, Row]:
        """Stored rows for the given ids."""
        wanted = sorted({int(i) for i in ids if i >= 0})
        found = {}
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start:start + CHUNK]
            sql = f"select id, path, label, sha256 from images where id in ({','.join('?' * len(chunk))})"
            for row in self.execute(sql, chunk):
                found[row[0]] = Row(*row)
        return found

    def rows_by_path(self, paths: list[str]) -> dict[str, Row]:
        found = {}
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start:start + CHUNK]
            sql = f"select id, path, label, sha256 from images where path in ({','.join('?' * len(chunk))})"
            found.update({row[1]: Row(*row) for row in self.execute(sql, chunk)})
        return found

    def all_rows(self) -> list[Row]:
        return [Row(*r) for r in self.execute("select id, path, label, sha256 from images order by id")]

    def row_ids(self) -> list[int]:
        return [row[0] for row in self.execute("select id from images order by id")]

    def highest_id(self) -> int:
        return self.execute("select max(id) from images")[0][0] or 0

    def ids_of_label(self, label: str) -> set[int]:
        return {row[0] for row in self.execute("select id from images where label = ?", [label])}

    def ids_below(self, key: str) -> set[int]:
        """Rows stored at ``key`` or in the folder ``key``."""
        sql = "select id from images where path = ? or substr(path, 1, ?) = ?"
        return {row[0] for row in self.execute(sql, [key, len(key) + 1, key + "/"])}

    def label_counts(self) -> dict[str, int]:
        return dict(self.execute("select label, count(*) from images group by label order by label"))

    def stored_vectors(self):
        """(id, blob) of every row in id order, as stored (``check`` judges them)."""
        return self.execute("select id, vector from images order by id")

    def all_vectors(self, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every stored image, in id order; blobs of the wrong size (default: the
        manifest's) are refused rather than misread."""
        size = size or self.manifest().embedding_size
        ids, blobs, wrong = [], [], []
        for row_id, blob in self.stored_vectors():
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

    def apply_change(self, change: Change):
        """The row side of a change, inside the caller's transaction. SQL goes straight to the connection:
        sqlite-utils helpers commit on their own and would split the transaction."""
        apply_change(self.conn, change)


def apply_change(conn, change: Change):
    conn.executemany("delete from images where id = ?", [(i,) for i in change.delete_ids])
    conn.executemany("update images set label = ? where id = ?",
                     [(label, i) for i, label in change.relabel.items()])
    stamp = now()
    conn.executemany("insert into images (id, path, label, sha256, added_at, vector) values (?, ?, ?, ?, ?, ?)",
                     [(r.id, r.path, r.label, r.sha256, stamp, vector_blob(r.vector)) for r in change.new_rows])


def create_schema(db: sqlite_utils.Database):
    db["images"].create({"id": int, "path": str, "label": str, "sha256": str, "added_at": str,
                         "vector": bytes}, pk="id", not_null={"path", "label", "sha256", "vector"},
                        if_not_exists=True)
    db["images"].create_index(["path"], unique=True, if_not_exists=True)
    db["images"].create_index(["label"], if_not_exists=True)
    db["manifest"].create({"key": str, "value": str}, pk="key", if_not_exists=True)


def write_database(directory: Path, rows: list[Row], manifest: Manifest) -> Path:
    """A complete new database beside ``gallery.db``, synced; removed again if writing it fails."""
    tmp_db = directory / DB_TEMP
    tmp_db.unlink(missing_ok=True)
    db = connect(tmp_db)
    try:
        create_schema(db)
        stamp = now()
        with db.conn:
            db["images"].insert_all(({"id": r.id, "path": r.path, "label": r.label, "sha256": r.sha256,
                                      "added_at": stamp, "vector": vector_blob(r.vector)} for r in rows),
                                    batch_size=500)
            db["manifest"].insert_all(({"key": k, "value": v} for k, v in manifest.entries().items()),
                                      pk="key", replace=True)
        db.conn.close()
        fsync_path(tmp_db)
    except BaseException:
        db.conn.close()
        discard(tmp_db, directory / f"{DB_TEMP}-journal")
        raise
    return tmp_db
