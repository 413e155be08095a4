"""``build-index``: embed a gallery into a fresh index, reusing vectors of unchanged files.

The new database is written beside the old one and swapped in with one rename, so an interrupted
build leaves the earlier index exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shitu.embed import Embedder, ModelInfo
from shitu.errors import BadImage, ShituError
from shitu.gallery import GalleryItem
from shitu.imageio import open_image_file
from shitu.progress import SILENT, Reporter
from shitu.store import (DB_NAME, FORMAT_VERSION, HNSW_EF_SEARCH, IndexStore, connect, create_schema, discard,
                         fsync_path, make_faiss_index, now, remove_stale_faiss, resolve_index_type, vector_blob,
                         write_faiss_file, write_lock)


@dataclass
class BuildReport:
    """What a build did, for the summary line and the tests."""

    images: int = 0
    embedded: int = 0
    reused: int = 0
    removed: int = 0
    labels: int = 0
    index_type: str = ""
    bad: list[str] = field(default_factory=list)


def content_hash(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or None when it is not a regular, readable image-sized file (the
    decoder then says why); never blocks on a FIFO or reads a device."""
    digest = hashlib.sha256()
    try:
        with open_image_file(path) as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except (BadImage, OSError):
        return None
    return digest.hexdigest()


@dataclass
class Previous:
    """What a rebuild takes over from the index it replaces."""

    reusable: dict = field(default_factory=dict)  # path -> (sha256, id, vector), same model only
    next_id: int = 1  # ids are never reused, even across rebuilds
    faiss_file: str | None = None  # kept for readers that opened the old database
    calibration: dict | None = None  # a calibrated threshold, kept when the model stays the same


def previous_index(directory: Path, model: ModelInfo) -> Previous:
    """Read the index being replaced; a missing or unreadable one gives nothing to take over."""
    try:
        store = IndexStore.open(directory)
    except ShituError:
        return Previous()
    try:
        previous = Previous(next_id=int(store.manifest.get("next_id", 1)),
                            faiss_file=store.manifest.get("faiss_file"))
        store.require_model(model)
        previous.calibration = store.manifest.get("threshold")
        ids, vectors = store.all_vectors()
        by_id = dict(zip(ids.tolist(), vectors))
        previous.reusable = {row.path: (row.sha256, row.id, by_id[row.id]) for row in store.all_rows()}
        previous.next_id = max([previous.next_id] + [i + 1 for i in by_id])
    except (ShituError, KeyError, ValueError):
        pass  # another model, or a damaged index: re-embed everything
    finally:
        store.db.close()
    return previous


def highest_generation(directory: Path) -> int:
    numbers = [int(p.name.split(".")[1]) for p in directory.glob("vectors.*.faiss")
               if p.name.split(".")[1].isdigit()]
    return max(numbers, default=0)


def build_index(items: list[GalleryItem], directory: str | Path, embedder: Embedder,
                index_type: str = "auto", gallery_root: str = "", reporter: Reporter = SILENT) -> BuildReport:
    """Index ``items`` into ``directory``; bad images are skipped and told to ``reporter``."""
    directory = Path(directory)
    report = BuildReport()
    with write_lock(directory):
        previous = previous_index(directory, embedder.info)
        reusable = previous.reusable
        hashes = hash_items(items, reporter)
        keep, todo = [], []
        for position, item in enumerate(items):
            old = reusable.get(item.relpath)
            if old is not None and hashes[position] is not None and old[0] == hashes[position]:
                keep.append((position, old[1], old[2]))
            else:
                todo.append(position)
        fresh = embed_items(items, todo, embedder, report, reporter)
        report.reused, report.embedded = len(keep), len(fresh)
        report.removed = len(set(reusable) - {items[p].relpath for p, _, _ in keep})
        rows = assign_ids(items, hashes, keep, fresh, previous.next_id)
        if not rows:
            raise ShituError(f"no readable images in the gallery ({len(report.bad)} unreadable); "
                             f"the index was not changed")
        report.images, report.labels = len(rows), len({r["label"] for r in rows})
        report.index_type = resolve_index_type(index_type, len(rows))
        write_snapshot(directory, rows, embedder.info, embedder.path, report.index_type, gallery_root, previous)
    return report


def build_from_vectors(items: list[GalleryItem], vectors: np.ndarray, directory: str | Path, model: ModelInfo,
                       model_path: Path, index_type: str = "auto", gallery_root: str = "") -> BuildReport:
    """A fresh index of ``vectors`` (one unit vector per item, made elsewhere) under ``model``'s name."""
    directory = Path(directory)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape != (len(items), model.embedding_size) or not len(items):
        raise ShituError(f"need one {model.embedding_size}-d vector per item, got {vectors.shape} for "
                         f"{len(items)} items")
    norms = np.linalg.norm(vectors, axis=1)
    if not (np.isfinite(norms).all() and (abs(norms - 1) <= 1e-3).all()):
        raise ShituError("the vectors must be finite and of unit length, as the model makes them")
    with write_lock(directory):
        previous = previous_index(directory, model)
        rows = [{"id": previous.next_id + n, "path": item.relpath, "label": item.label, "sha256": "",
                 "vector": vector} for n, (item, vector) in enumerate(zip(items, vectors))]
        factory = resolve_index_type(index_type, len(rows))
        write_snapshot(directory, rows, model, model_path, factory, gallery_root, previous)
    return BuildReport(images=len(rows), embedded=0, labels=len({r["label"] for r in rows}), index_type=factory)


def hash_items(items: list[GalleryItem], reporter: Reporter) -> list[str | None]:
    with reporter.progress(len(items), "hashing gallery files") as bar:
        hashes = []
        for item in items:
            hashes.append(content_hash(item.path))
            bar.advance()
    return hashes


def embed_items(items, positions, embedder, report, reporter: Reporter) -> dict[int, np.ndarray]:
    """Embed the images at ``positions``; returns ``{position: vector}``."""
    vectors = {}

    def bad(local, reason):
        report.bad.append(reason)
        reporter.warn(f"skipped {reason}")

    with reporter.progress(len(positions), "embedding images") as bar:
        paths = [items[p].path for p in positions]
        for locals_, batch in embedder.embed_files(paths, on_bad=bad, on_done=lambda n: bar.advance()):
            for local, vector in zip(locals_, batch):
                vectors[positions[local]] = vector
    return vectors


def assign_ids(items, hashes, keep, fresh, next_id: int) -> list[dict]:
    """Rows for the new index: unchanged files keep their id, new ones get ids never used before."""
    placed = [(old_id, p, vector) for p, old_id, vector in keep]
    next_id = max([next_id] + [old_id + 1 for old_id, _, _ in placed])
    placed += [(next_id + n, p, fresh[p]) for n, p in enumerate(sorted(fresh))]
    return sorted(({"id": row_id, "path": items[p].relpath, "label": items[p].label,
                    "sha256": hashes[p] or "", "vector": vector} for row_id, p, vector in placed),
                  key=lambda r: r["id"])


def write_snapshot(directory: Path, rows: list[dict], model: ModelInfo, model_path: Path, factory: str,
                   gallery_root: str, previous: Previous):
    """Write FAISS file, then a complete new database, then swap the database in (the commit).

    A failure before the swap (a full disk) deletes both new files, which nothing names yet.
    """
    generation = highest_generation(directory) + 1
    ids = np.array([r["id"] for r in rows], dtype=np.int64)
    vectors = np.stack([r["vector"] for r in rows]).astype(np.float32)
    index = make_faiss_index(factory, model.embedding_size, vectors, ids)
    faiss_name = write_faiss_file(directory, index, generation)
    entries = manifest(model, model_path, factory, gallery_root, faiss_name, generation, rows, previous.next_id)
    if previous.calibration is not None:
        entries["threshold"] = previous.calibration
    try:
        tmp_db = write_database(directory, rows, entries)
    except BaseException:
        discard(directory / faiss_name)
        raise
    (directory / f"{DB_NAME}-journal").unlink(missing_ok=True)
    os.replace(tmp_db, directory / DB_NAME)
    fsync_path(directory)
    remove_stale_faiss(directory, keep={faiss_name, previous.faiss_file})


def write_database(directory: Path, rows: list[dict], entries: dict) -> Path:
    """A complete new database beside ``gallery.db``, synced; removed again if writing it fails."""
    tmp_db = directory / f".{DB_NAME}.tmp"
    tmp_db.unlink(missing_ok=True)
    db = connect(tmp_db)
    try:
        create_schema(db)
        stamp = now()
        with db.conn:
            db["images"].insert_all(({"id": r["id"], "path": r["path"], "label": r["label"],
                                      "sha256": r["sha256"], "added_at": stamp, "vector": vector_blob(r["vector"])}
                                     for r in rows), batch_size=500)
            db["manifest"].insert_all(({"key": k, "value": json.dumps(v)} for k, v in entries.items()),
                                      pk="key", replace=True)
        db.conn.close()
        fsync_path(tmp_db)
    except BaseException:
        db.conn.close()
        discard(tmp_db, directory / f".{DB_NAME}.tmp-journal")
        raise
    return tmp_db


def manifest(info: ModelInfo, model_path: Path, factory: str, gallery_root: str, faiss_name: str, generation: int,
             rows: list[dict], next_id: int) -> dict:
    """Everything a reader must check before trusting this index."""
    return {
        "format_version": FORMAT_VERSION, "model_name": info.name, "model_version": info.version,
        "model_sha256": info.sha256, "model_path": str(Path(model_path).resolve()),
        "embedding_size": info.embedding_size, "input_size": info.input_size,
        "mean": list(info.mean), "std": list(info.std), "index_type": factory, "metric": "inner_product",
        "faiss_file": faiss_name, "generation": generation, "count": len(rows),
        "labels": len({r["label"] for r in rows}), "gallery_root": gallery_root, "updated_at": now(),
        "ef_search": HNSW_EF_SEARCH, "nprobe": 16, "next_id": max([next_id] + [r["id"] + 1 for r in rows]),
    }
