"""``info``: what an index holds, what it was built with, its files and its calibration.

``described`` is the part every backend prints alike, from its manifest and its counts; the index folder
adds its files here (``index_info``), a Milvus gallery its collection (``MilvusStorage.info``).
"""

from __future__ import annotations

from pathlib import Path

from shitu.embed import recorded_training_labels
from shitu.index.calibration import calibration_info
from shitu.index.database import open_index
from shitu.index.files import DB_NAME, errors_explained
from shitu.index.manifest import Manifest


def index_info(directory: Path) -> dict:
    """What an index folder holds and what it was built with: what ``shitu info --json`` prints."""
    db, m = open_index(directory)
    with errors_explained(directory):
        try:
            return {"index": str(directory), **described(m, db.count(), db.label_counts(), m.faiss_file,
                                                         disk_usage(directory, m.faiss_file))}
        finally:
            db.close()


def described(m: Manifest, count: int, label_counts: dict[str, int], faiss_file: str | None,
              size: dict) -> dict:
    """The keys of ``shitu info --json`` after the store's own, in their order: the model, the contents
    (``count`` and ``label_counts`` as stored now), the committed state, ``size`` as ``bytes``, the
    calibration."""
    model = {"name": m.model_name, "version": m.model_version, "sha256": m.model_sha256, "path": m.model_path,
             "input_size": m.input_size, "training_labels": training_label_count(m.model_path)}
    return {"format_version": m.format_version, "model": model, "embedding_size": m.embedding_size,
            "index_type": m.index_type, "metric": m.metric, "count": count, "labels": len(label_counts),
            "label_counts": label_counts, "generation": m.generation, "faiss_file": faiss_file,
            "gallery_root": m.gallery_root, "updated_at": m.updated_at, "bytes": size,
            **calibration_info(m.threshold)}


def training_label_count(model_path: str | None) -> int | None:
    """How many product labels the index's model was trained on, when it records them."""
    if not model_path or not Path(model_path).is_file():
        return None
    labels = recorded_training_labels(Path(model_path))
    return None if labels is None else len(labels)


def disk_usage(directory: Path, faiss_file: str) -> dict:
    def size(path: Path) -> int:
        return path.stat().st_size if path.is_file() else 0

    total = sum(size(path) for path in directory.iterdir())
    return {"database": size(directory / DB_NAME), "faiss": size(directory / faiss_file), "total": total}
