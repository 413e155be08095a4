"""``add``, ``remove``, ``info`` and ``check``: change or inspect an index in place, without a rebuild.

Every change (add, remove, check --repair) follows one protocol under the writer lock:

1. write the next FAISS generation file durably (``store.write_faiss_file``);
2. in ONE SQLite transaction, change the rows and point the manifest at that file: the commit;
3. delete FAISS files older than the previous generation, which stays for readers still loading it.

A crash before step 2 commits leaves the old manifest naming the old, untouched FAISS file; the new file
is an unreferenced leftover that the next writer deletes. SQLite's rollback journal makes step 2
all-or-nothing; why that journal is safe next to build-index's rename is explained in ``commit_rows``.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shitu.build import embed_items, hash_items, highest_generation
from shitu.embed import Embedder, ModelInfo
from shitu.errors import ShituError, UsageError
from shitu.gallery import GalleryItem, iter_images, normalise_label
from shitu.progress import SILENT, Reporter
from shitu.store import (DB_NAME, IndexStore, add_vectors, committed_generation, discard, faiss_module,
                         load_matching_faiss, now, remove_stale_faiss, show, vector_blob, write_faiss_file, write_lock)



@dataclass
class Change:
    """Row changes that one commit applies: rows to delete, rows to insert, labels to rewrite."""

    delete_ids: list[int] = field(default_factory=list)
    new_rows: list[dict] = field(default_factory=list)  # id, path, label, sha256, vector
    relabel: dict[int, str] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.delete_ids or self.new_rows or self.relabel)


@dataclass
class AddReport:
    """What ``add`` did, for the summary line and the tests."""

    added: int = 0
    replaced: int = 0
    relabelled: int = 0
    unchanged: int = 0
    bad: list[str] = field(default_factory=list)
    count: int = 0
    labels: int = 0
    rebuilt: bool = False  # refilled from stored vectors: its type cannot delete in place
    index_type: str = ""


@dataclass
class RemoveReport:
    removed: int
    count: int
    labels: int
    rebuilt: bool
    index_type: str


# -- opening for a change ----------------------------------------------------------------------------
@contextmanager
def writing(directory: Path, model: ModelInfo | None = None):
    """Hold the writer lock and yield the store, opened only now.

    The database must be opened under the lock: build-index swaps ``gallery.db`` by rename, and a
    connection opened before that would go on changing the replaced file.
    """
    if not (directory / DB_NAME).is_file():
        IndexStore.open(directory)  # the usual "no index" error, before the lock creates a folder
    with write_lock(directory):
        store = IndexStore.open(directory, model)
        try:
            yield store
        finally:
            store.db.close()


def gallery_root(store: IndexStore) -> Path:
    root = store.manifest.get("gallery_root")
    if not root:
        raise ShituError(f"index {store.directory} records no gallery folder; rebuild it with "
                         f"'shitu build-index GALLERY --index {store.directory}'")
    return Path(root)


def relative_to_root(path: Path, root: Path) -> str | None:
    """``path`` as the index stores it (POSIX, relative to the gallery root), or None outside the root.

    The path is tried as written first, so a symlinked file keeps the place the gallery gives it, then
    with its folder's symlinks resolved, as build-index resolved the root.
    """
    absolute = Path(os.path.abspath(path))
    for candidate in (absolute, Path(os.path.realpath(absolute.parent)) / absolute.name):
        try:
            relative = candidate.relative_to(root).as_posix()
        except ValueError:
            continue
        return "" if relative == "." else relative
    return None


# -- add ---------------------------------------------------------------------------------------------
def add_images(paths: list[str | Path], directory: str | Path, embedder: Embedder, label: str | None = None,
               reporter: Reporter = SILENT) -> AddReport:
    """Add new images and replace changed ones; unchanged files cost a hash and nothing else.

    Ids of untouched rows never change; new and replaced images get ids above every id ever used.
    """
    check_add_request(paths, label)
    report = AddReport()
    with writing(Path(directory), embedder.info) as store:
        items = collect_items([Path(p) for p in paths], gallery_root(store), label, reporter.warn)
        hashes = hash_items(items, reporter)
        change, todo, replacing = plan_add(store, items, hashes, report)
        fresh = embed_items(items, todo, embedder, report, reporter)
        if todo and not fresh and not change.relabel:
            raise ShituError(f"none of the {len(todo)} new or changed images could be read; "
                             f"the index was not changed")
        start = next_free_id(store)
        for n, position in enumerate(sorted(fresh)):
            item = items[position]
            change.new_rows.append({"id": start + n, "path": item.relpath, "label": item.label,
                                    "sha256": hashes[position] or "", "vector": fresh[position]})
            if position in replacing:
                change.delete_ids.append(replacing[position])
        report.replaced = sum(1 for p in fresh if p in replacing)
        report.added = len(fresh) - report.replaced
        if not change.empty():
            index, report.rebuilt = updated_faiss(store, change)
            commit(store, change, index)
        report.count, report.labels = store.manifest["count"], store.manifest["labels"]
        report.index_type = store.manifest["index_type"]
    return report


def check_add_request(paths: list[str | Path], label: str | None):
    """What ``add`` refuses before it loads a model or takes the lock."""
    if label is not None and not label.strip():
        raise ShituError("--label must not be empty")
    if label is None and any(Path(path).is_file() for path in paths):
        raise UsageError("image files need --label (folders take labels from their label folders)")


def collect_items(paths: list[Path], root: Path, label: str | None, warn=None) -> list[GalleryItem]:
    """Every image the paths name, once each; anything missing or outside the gallery root is refused."""
    found = {}
    for path in paths:
        for item in items_below(path, root, label, warn):
            found.setdefault(item.relpath, item)
    return sorted(found.values(), key=lambda item: item.relpath)


def items_below(path: Path, root: Path, label: str | None, warn=None) -> list[GalleryItem]:
    """A file with ``label``, or the images below a folder.

    Without ``label`` a folder's images are labelled the way build-index labels them, by their
    top-level folder under the gallery root, so the root itself reads in the gallery layout.
    """
    if not (path.is_file() or path.is_dir()):
        raise ShituError(f"{path}: no such image file or folder")
    relative = relative_to_root(path, root)
    if relative is None:
        raise ShituError(f"{path} is outside the gallery folder {root} of this index (paths are stored "
                         f"relative to it); copy it into the gallery first. The index was not changed")
    if path.is_file():
        if label is None:
            raise ShituError(f"{path}: an image file needs --label")
        return [GalleryItem(path, relative, label)]
    items = []
    for image in iter_images(path, warn, root):
        stored = "/".join(part for part in (relative, image.relative_to(path).as_posix()) if part)
        if label is not None or "/" in stored:  # build-index ignores files lying loose in the root
            items.append(GalleryItem(image, stored, label or stored.split("/")[0]))
    if not items:
        raise ShituError(f"no images found below {path}")
    return items


def plan_add(store: IndexStore, items: list[GalleryItem], hashes: list[str | None],
             report: AddReport) -> tuple[Change, list[int], dict[int, int]]:
    """Sort items into unchanged, relabelled and to-embed; returns the change so far, the positions to
    embed, and ``{position: old id}`` for changed files whose old row the new one replaces."""
    change, todo, replacing = Change(), [], {}
    stored = rows_by_path(store, [item.relpath for item in items])
    for position, item in enumerate(items):
        old = stored.get(item.relpath)
        if old is not None and hashes[position] is not None and old.sha256 == hashes[position]:
            if old.label == item.label:
                report.unchanged += 1
            else:
                change.relabel[old.id] = item.label
                report.relabelled += 1
            continue
        todo.append(position)
        if old is not None:
            replacing[position] = old.id
    return change, todo, replacing


def rows_by_path(store: IndexStore, paths: list[str]) -> dict:
    found = {}
    for start in range(0, len(paths), 900):
        chunk = paths[start:start + 900]
        sql = f"select id from images where path in ({','.join('?' * len(chunk))})"
        ids = [row[0] for row in store.execute(sql, chunk)]
        found.update({row.path: row for row in store.rows(ids).values()})
    return found


def next_free_id(store: IndexStore) -> int:
    """An id never used before: above every row and above the manifest's ``next_id``, which remembers
    the ids of removed rows."""
    top = store.execute("select max(id) from images")[0][0] or 0
    return max(int(store.manifest.get("next_id", 1)), top + 1)


# -- remove ------------------------------------------------------------------------------------------
def remove_images(directory: str | Path, labels: list[str] = (), paths: list[str] = (),
                  ids: list[int] = ()) -> RemoveReport:
    """Remove rows by label, by path and by id; every selector must match something, or nothing changes."""
    if not labels and not paths and not ids:
        raise UsageError("say what to remove with --label or --path")
    with writing(Path(directory)) as store:
        unknown = sorted(set(map(int, ids)) - set(store.rows(ids)))
        if unknown:
            raise ShituError(f"index {store.directory} holds no images with ids {show(unknown)}; the index "
                             f"was not changed")
        selected, unmatched = select_ids(store, [normalise_label(label) for label in labels], paths)
        ids = selected | set(map(int, ids))
        if unmatched:
            raise ShituError(f"nothing in index {store.directory} matches {', '.join(unmatched)}; "
                             f"the index was not changed")
        change = Change(delete_ids=sorted(ids))
        index, rebuilt = updated_faiss(store, change)
        commit(store, change, index)
        m = store.manifest
        return RemoveReport(len(ids), m["count"], m["labels"], rebuilt, m["index_type"])


def select_ids(store: IndexStore, labels, paths) -> tuple[set[int], list[str]]:
    """Ids matching any selector, and the selectors that matched nothing."""
    ids, unmatched = set(), []
    for label in labels:
        found = {row[0] for row in store.execute("select id from images where label = ?", [label])}
        ids |= found
        if not found:
            unmatched.append(f"--label {label!r}")
    for path in paths:
        found = path_ids(store, path)
        ids |= found
        if not found:
            unmatched.append(f"--path {path!r}")
    return ids, unmatched


def path_ids(store: IndexStore, given: str) -> set[int]:
    """Rows of a path as stored, or of a file or folder inside the gallery; a folder means all below it."""
    keys = {given.replace("\\", "/").strip("/")}
    root = store.manifest.get("gallery_root")
    if root:
        keys.add(relative_to_root(Path(given), Path(root)) or "")
    found = set()
    for key in keys - {""}:  # the whole gallery is never meant by an empty path
        sql = "select id from images where path = ? or substr(path, 1, ?) = ?"
        found |= {row[0] for row in store.execute(sql, [key, len(key) + 1, key + "/"])}
    return found


# -- the commit --------------------------------------------------------------------------------------
def updated_faiss(store: IndexStore, change: Change):
    """(index, refilled): the live FAISS index with ``change`` applied in memory.

    Only flat storage deletes in place correctly: ``IndexIDMap2.remove_ids`` compacts its id map and
    relies on the inner index renumbering what stays, which flat codes do, IVF lists do not (their
    entries would then point at the wrong ids) and HNSW cannot delete at all. Those are emptied and
    refilled from the vectors stored in SQLite, keeping what they learned in training. A missing,
    damaged or out-of-step FAISS file is refused before anything is written.
    """
    index = load_matching_faiss(store, store.row_ids())
    if change.delete_ids and not deletes_in_place(index):
        ids, vectors = remaining_vectors(store, change)
        index.reset()
        add_vectors(index, vectors, ids, store.manifest["index_type"])
        return index, True
    if change.delete_ids:
        removed = index.remove_ids(np.array(change.delete_ids, dtype=np.int64))
        if removed != len(change.delete_ids):
            raise out_of_step(store, index.ntotal + removed)
    if change.new_rows:
        ids, vectors = new_vectors(change)
        add_vectors(index, vectors, ids, store.manifest["index_type"])
    return index, False


def deletes_in_place(index) -> bool:
    faiss = faiss_module()
    return isinstance(faiss.downcast_index(index.index), faiss.IndexFlatCodes)


def remaining_vectors(store: IndexStore, change: Change) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the stored rows once ``change`` is applied."""
    ids, vectors = store.all_vectors()
    keep = ~np.isin(ids, np.array(change.delete_ids, dtype=np.int64))
    ids, vectors = ids[keep], vectors[keep]
    if change.new_rows:
        new_ids, new = new_vectors(change)
        ids, vectors = np.concatenate([ids, new_ids]), np.concatenate([vectors, new])
    return ids, vectors


def new_vectors(change: Change) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([row["id"] for row in change.new_rows], dtype=np.int64)
    return ids, np.stack([row["vector"] for row in change.new_rows]).astype(np.float32)


def out_of_step(store: IndexStore, faiss_count: int) -> ShituError:
    return ShituError(f"index {store.directory} is out of step: {store.manifest['faiss_file']} holds "
                      f"{faiss_count} vectors for {store.count()} rows; run 'shitu check --repair "
                      f"--index {store.directory}'. The index was not changed")


def commit(store: IndexStore, change: Change, index) -> str:
    """Write ``index`` as the next FAISS generation, then commit ``change`` with a manifest naming it.

    A commit that fails (a full disk) deletes the new FAISS file, which nothing names.
    """
    previous = store.manifest["faiss_file"]
    generation = max(int(store.manifest["generation"]), highest_generation(store.directory)) + 1
    name = write_faiss_file(store.directory, index, generation)
    try:
        commit_rows(store, change, name, generation, index.ntotal)
    except BaseException:
        if committed_generation(store.directory) != generation:
            discard(store.directory / name)
        raise
    remove_stale_faiss(store.directory, keep={name, previous})
    return name


def commit_rows(store: IndexStore, change: Change, faiss_name: str, generation: int, expected: int):
    """Apply ``change`` and point the manifest at ``faiss_name`` in one SQLite transaction.

    Why a ``gallery.db-journal`` left by a writer killed here is never replayed into a newer database
    file, although build-index renames a fresh file over ``gallery.db`` and SQLite finds journals by path:

    * this transaction runs under the writer lock on a connection opened under it, so a journal it
      leaves belongs to the file that is ``gallery.db`` while the lock is held;
    * the next connection to read that file rolls the journal back first, and build-index is such a
      reader: ``previous_vectors`` opens the old database before ``write_snapshot`` deletes any
      ``gallery.db-journal`` and renames the new file in, all under the same lock, so no writer can
      create a journal between that delete and the rename;
    * a reader whose connection predates a rename stops at ``IndexStore.require_same_file`` instead of
      taking a later writer's journal for its own.

    Rollback-journal mode is therefore kept: WAL's ``-wal`` file would survive the rename and be replayed
    into the new file. ``synchronous = extra`` also syncs the folder once the journal is deleted, so the
    commit is durable as well as atomic. SQL goes straight to the connection: sqlite-utils helpers
    commit on their own and would split the transaction.
    """
    conn = store.db.conn
    store.require_same_file()
    conn.execute("pragma synchronous = extra")
    conn.execute("begin immediate")
    try:
        require_generation(conn, store)
        next_id = max([next_free_id(store)] + [row["id"] + 1 for row in change.new_rows])
        apply_change(conn, change)
        count, labels = conn.execute("select count(*), count(distinct label) from images").fetchone()
        if count != expected:
            raise ShituError(f"index {store.directory}: {count} rows but {expected} FAISS vectors after the "
                             f"change; nothing was changed (run 'shitu check')")
        updates = {"faiss_file": faiss_name, "generation": generation, "count": count, "labels": labels,
                   "next_id": next_id, "updated_at": now()}
        conn.executemany("insert or replace into manifest (key, value) values (?, ?)",
                         [(key, json.dumps(value)) for key, value in updates.items()])
        conn.execute("commit")
    except BaseException:
        if conn.in_transaction:
            conn.execute("rollback")
        raise
    store.manifest.update(updates)


def require_generation(conn, store: IndexStore):
    """Refuse to commit over a manifest that changed since we read it (a writer ignoring the lock)."""
    value = conn.execute("select value from manifest where key = 'generation'").fetchone()
    if value is None or json.loads(value[0]) != store.manifest["generation"]:
        raise ShituError(f"index {store.directory} was changed by another process; nothing was changed, "
                         f"try again")


def apply_change(conn, change: Change):
    conn.executemany("delete from images where id = ?", [(i,) for i in change.delete_ids])
    conn.executemany("update images set label = ? where id = ?",
                     [(label, i) for i, label in change.relabel.items()])
    stamp = now()
    conn.executemany("insert into images (id, path, label, sha256, added_at, vector) "
                     "values (?, ?, ?, ?, ?, ?)",
                     [(r["id"], r["path"], r["label"], r["sha256"], stamp, vector_blob(r["vector"]))
                      for r in change.new_rows])
