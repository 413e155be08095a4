"""``build-index``: embed a gallery into a fresh index, reusing the vectors of unchanged files.

The whole new state is committed at once (``commit.commit_all``), so an interrupted build leaves the
earlier index exactly as it was.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shitu.embed import Embedder, ModelInfo
from shitu.errors import BadImage, ShituError
from shitu.gallery import GalleryItem
from shitu.imageio import open_image_file
from shitu.index.commit import commit_all
from shitu.index.manifest import Manifest, next_id_after
from shitu.index.storage import Row, Session, Storage
from shitu.progress import SILENT, Reporter


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

    reusable: dict[str, Row] = field(default_factory=dict)  # by path, with vectors; same model only
    next_id: int = 1  # ids are never reused, even across rebuilds
    calibration: dict | None = None  # a calibrated threshold, kept when the model stays the same


def previous_index(session: Session, model: ModelInfo) -> Previous:
    """Read the index being replaced; a missing or unreadable one gives nothing to take over, another
    model's only its ids."""
    old = session.manifest
    if old is None:
        return Previous()
    previous = Previous(next_id=old.next_id)
    if not old.built_by(model):
        return previous  # another model: its vectors cannot be reused, its ids are still taken
    previous.calibration = old.threshold
    try:
        ids, vectors = session.all_vectors()
        by_id = dict(zip(ids.tolist(), vectors))
        previous.reusable = {row.path: Row(row.id, row.path, row.label, row.sha256, by_id[row.id])
                             for row in session.all_rows()}
        previous.next_id = next_id_after(previous.next_id, by_id)
    except (ShituError, KeyError, ValueError):
        pass  # damaged rows: re-embed everything
    return previous


def build_index(items: list[GalleryItem], storage: Storage, embedder: Embedder, index_type: str = "auto",
                gallery_root: str = "", reporter: Reporter = SILENT) -> BuildReport:
    """Index ``items``; bad images are skipped and told to ``reporter``."""
    report = BuildReport()
    with storage.writing(damaged_ok=True) as session:
        previous = previous_index(session, embedder.info)
        hashes = hash_items(items, reporter)
        keep, todo = [], []
        for position, item in enumerate(items):
            old = previous.reusable.get(item.relpath)
            if old is not None and hashes[position] is not None and old.sha256 == hashes[position]:
                keep.append((position, old))
            else:
                todo.append(position)
        fresh = embed_items(items, todo, embedder, report, reporter)
        report.reused, report.embedded = len(keep), len(fresh)
        report.removed = len(set(previous.reusable) - {items[p].relpath for p, _ in keep})
        rows = assign_ids(items, hashes, keep, fresh, previous.next_id)
        if not rows:
            raise ShituError(f"no readable images in the gallery ({len(report.bad)} unreadable); "
                             f"the index was not changed")
        report.images, report.labels = len(rows), len({r.label for r in rows})
        report.index_type = storage.resolve_index_type(index_type, len(rows))
        write_rows(session, rows, embedder.info, embedder.path, report.index_type, gallery_root, previous)
    return report


def build_from_vectors(items: list[GalleryItem], vectors: np.ndarray, storage: Storage, model: ModelInfo,
                       model_path: Path, index_type: str = "auto", gallery_root: str = "") -> BuildReport:
    """A fresh index of ``vectors`` (one unit vector per item, made elsewhere) under ``model``'s name."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape != (len(items), model.embedding_size) or not len(items):
        raise ShituError(f"need one {model.embedding_size}-d vector per item, got {vectors.shape} for "
                         f"{len(items)} items")
    norms = np.linalg.norm(vectors, axis=1)
    if not (np.isfinite(norms).all() and (abs(norms - 1) <= 1e-3).all()):
        raise ShituError("the vectors must be finite and of unit length, as the model makes them")
    with storage.writing(damaged_ok=True) as session:
        previous = Previous(next_id=session.manifest.next_id if session.manifest else 1)
        rows = [Row(previous.next_id + n, item.relpath, item.label, "", vector)
                for n, (item, vector) in enumerate(zip(items, vectors))]
        factory = storage.resolve_index_type(index_type, len(rows))
        write_rows(session, rows, model, model_path, factory, gallery_root, previous)
    return BuildReport(images=len(rows), labels=len({r.label for r in rows}), index_type=factory)


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


def assign_ids(items, hashes, keep: list[tuple[int, Row]], fresh, next_id: int) -> list[Row]:
    """Rows for the new index: unchanged files keep their id, new ones get ids never used before."""
    placed = [(old.id, p, old.vector) for p, old in keep]
    next_id = next_id_after(next_id, [old_id for old_id, _, _ in placed])
    placed += [(next_id + n, p, fresh[p]) for n, p in enumerate(sorted(fresh))]
    return sorted((Row(row_id, items[p].relpath, items[p].label, hashes[p] or "", vector)
                   for row_id, p, vector in placed), key=lambda r: r.id)


def write_rows(session: Session, rows: list[Row], model: ModelInfo, model_path: Path, factory: str,
               gallery_root: str, previous: Previous):
    """Commit ``rows`` as the whole new state, with a manifest of everything a reader must check."""
    manifest = Manifest.new(model, model_path, factory, gallery_root)
    manifest.next_id = next_id_after(previous.next_id, [r.id for r in rows])
    manifest.threshold = previous.calibration
    commit_all(session, rows, manifest)
