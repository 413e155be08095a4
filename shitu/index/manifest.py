"""The manifest: what an index was built with and which files hold its committed state, typed.

Stored as one JSON value per key in the database's ``manifest`` table (format version 1; a Milvus gallery
keeps the same entries as one JSON object, ``shitu.index.milvus_manifest``). Every key is
a field here, read and checked in one place; a damaged or unknown entry is one clear error when the
index opens, not a crash later. Keys this version does not know are kept as they are when a commit
rewrites the manifest, so an index written by a newer shitu loses nothing here. ``mean`` and ``std``,
written by builds before this module (and never read: the model's sha256 pins its preprocessing), are
no longer written.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from shitu.embed import ModelInfo
from shitu.errors import ShituError
from shitu.index.files import FAISS_NAME

FORMAT_VERSION = 1
METRIC = "inner_product"  # the only one: embeddings are unit vectors, so this is the cosine
# bench/search.py, 2 cores, 1e6 vectors shaped like the shipped model's embeddings (--shape gallery):
# efSearch 32 and 64 find the exact first hit for every query (0.32 and 0.60 ms), 128 too but takes
# 1.19 ms. On the isotropic worst case at 1e5, 64 gives recall@1 0.965 and 128 0.985.
HNSW_EF_SEARCH = 64
IVF_NPROBE = 16
TYPES = {  # checked in this order; the first ten are required
    "format_version": int, "model_name": str, "model_version": str, "model_sha256": str, "embedding_size": int,
    "index_type": str, "faiss_file": str, "generation": int, "count": int, "labels": int,
    "next_id": int, "input_size": int, "ef_search": int, "nprobe": int, "gallery_root": str, "model_path": str,
    "metric": str, "updated_at": str, "store": str}
REQUIRED = frozenset(list(TYPES)[:10])
RETIRED = {"mean", "std"}  # written by older builds, never read


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Manifest:
    """Every manifest entry, with the type a reader relies on."""

    noun: ClassVar[str] = "index"  # what messages call the store: "index DIR" (a Milvus gallery: "gallery URL")
    required: ClassVar[frozenset[str]] = REQUIRED

    format_version: int
    model_name: str
    model_version: str
    model_sha256: str
    embedding_size: int
    index_type: str  # the FAISS factory string (a Milvus index type in a Milvus store)
    faiss_file: str  # vectors.<generation>.faiss (the collection in a Milvus store)
    generation: int
    count: int
    labels: int
    next_id: int = 1  # above every id ever used, removed rows included: ids are never reused
    input_size: int | None = None
    model_path: str | None = None  # where the model was when the index was built
    gallery_root: str = ""  # the folder stored paths are relative to
    ef_search: int = HNSW_EF_SEARCH
    nprobe: int = IVF_NPROBE
    metric: str = METRIC
    updated_at: str = ""
    threshold: dict | None = None  # the calibration record (shitu.index.calibration)
    store: str | None = None  # None: an index folder; "milvus": a Milvus collection (shitu.index.milvus)
    extra: dict = field(default_factory=dict, repr=False)  # entries of a newer shitu, kept as they are

    # -- reading ---------------------------------------------------------------------------------------
    @classmethod
    def from_entries(cls, entries: dict[str, str], directory: Path) -> "Manifest":
        """The manifest from its stored ``{key: JSON text}``; refuses unknown format versions and damage."""
        values = {}
        for key, text in entries.items():
            try:
                values[key] = json.loads(text)
            except (TypeError, ValueError):
                raise damaged(cls.place(directory), f"its manifest entry {key!r} is not JSON") from None
        return cls.from_values(values, directory)

    @classmethod
    def from_values(cls, values: dict, directory: Path | str) -> "Manifest":
        """The manifest from its decoded entries ``{key: value}``, checked as ``from_entries`` says."""
        where = cls.place(directory)
        version = values.get("format_version")
        if version != FORMAT_VERSION:
            raise ShituError(f"{where} has format version {version!r}; this shitu reads version "
                             f"{FORMAT_VERSION}: rebuild it with 'shitu build-index'")
        for key, kind in TYPES.items():
            if key in values:
                require(where, key, values[key], kind)
            elif key in cls.required:
                raise damaged(where, f"its manifest entry {key!r} is missing")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        manifest = cls(**{key: value for key, value in values.items() if key in known},
                       extra={k: v for k, v in values.items() if k not in known | RETIRED})
        manifest.validate(directory)
        return manifest

    @classmethod
    def place(cls, directory: Path | str) -> str:
        """How messages name the store ``directory`` is (a folder, or a Milvus gallery's URL)."""
        return f"{cls.noun} {directory}"

    def validate(self, directory: Path | str):
        """What the entries' types do not say."""
        where = self.place(directory)
        if self.embedding_size < 1:
            raise damaged(where, f"its manifest entry 'embedding_size' is {self.embedding_size}")
        if self.store not in (None, "milvus"):
            raise damaged(where, f"its manifest entry 'store' is {self.store!r}, not 'milvus'")
        if self.store is None and not FAISS_NAME.match(self.faiss_file):
            raise damaged(where, f"its manifest entry 'faiss_file' is {self.faiss_file!r}, not a "
                                 f"vectors.N.faiss name")
        if self.metric != METRIC:
            raise damaged(where, f"its manifest entry 'metric' is {self.metric!r}; shitu searches by {METRIC} only")

    def built_by(self, model: ModelInfo) -> bool:
        return self.model_sha256 == model.sha256 and self.embedding_size == model.embedding_size

    def require_model(self, model: ModelInfo, directory: Path | str):
        """Refuse a model other than the one that built the index: its vectors would not compare."""
        if not self.built_by(model):
            raise ShituError(
                f"{self.place(directory)} was built with model {self.model_name} {self.model_version} "
                f"(sha256 {self.model_sha256[:12]}, {self.embedding_size}-d), not with {model.describe()}; "
                f"rebuild it with 'shitu build-index' or pass the matching --model")

    def free_id(self, highest_row_id: int) -> int:
        """The first id for new rows: above every row and above ``next_id``, which remembers the ids of
        removed rows."""
        return next_id_after(self.next_id, [highest_row_id])

    # -- writing ---------------------------------------------------------------------------------------
    @classmethod
    def new(cls, model: ModelInfo, model_path: Path, index_type: str, gallery_root: str) -> "Manifest":
        """The manifest of a fresh build, before its files and counts are known."""
        return cls(format_version=FORMAT_VERSION, model_name=model.name, model_version=model.version,
                   model_sha256=model.sha256, embedding_size=model.embedding_size, index_type=index_type,
                   faiss_file="vectors.0.faiss", generation=0, count=0, labels=0, input_size=model.input_size,
                   model_path=str(Path(model_path).resolve()), gallery_root=gallery_root)

    def entries(self) -> dict[str, str]:
        """``{key: JSON text}`` as stored; a calibration that is absent is not written."""
        return {key: json.dumps(value) for key, value in self.json_values().items()}

    def json_values(self) -> dict:
        """``{key: value}`` of every entry to store, unknown ones included; an absent optional one is left out."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        values = {key: value for key, value in values.items() if value is not None or key in self.required}
        return {**self.extra, **values}

    def committed(self, faiss_file: str, generation: int, count: int, labels: int, next_id: int) -> "Manifest":
        """This manifest naming a newly committed state."""
        return dataclasses.replace(self, faiss_file=faiss_file, generation=generation, count=count,
                                   labels=labels, next_id=next_id, updated_at=now())


def next_id_after(next_id: int, used) -> int:
    """The ``next_id`` rule, the one place ids are worked out: above ``next_id`` and every id in ``used``,
    so that no id is ever given twice, not even after its row was removed or the index rebuilt."""
    return max([next_id] + [int(i) + 1 for i in used])


def require(where: str, key: str, value, kind: type):
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
        raise damaged(where, f"its manifest entry {key!r} is {value!r}, not a "
                             f"{'non-negative integer' if kind is int else 'string'}")


def damaged(where: str, what: str) -> ShituError:
    """The error of a damaged manifest; ``where`` as ``Manifest.place`` names it."""
    return ShituError(f"{where} is damaged: {what}; rebuild it with 'shitu build-index'")
