"""The seam between an index and where it is kept: what crosses it (``Row``, ``Change``) and the two small
interfaces a backend implements (``Storage`` to open, read, check and describe, ``Session`` to change under
the lock).

Two backends implement them: ``shitu.index.folder.FolderStorage`` (a SQLite database and FAISS files in
one folder) and ``shitu.index.milvus_storage.MilvusStorage`` (rows as scalar fields beside the vectors, the
manifest kept with the collection). Everything above them (build, edit, ``Snapshot``, the commit protocol
in ``shitu.index.commit``, the ``Index`` facade) talks to these interfaces only; how a backend checks and
describes itself is its own business, behind ``check`` and ``info``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shitu.embed import ModelInfo
from shitu.index.findings import CheckReport
from shitu.index.manifest import Manifest


@dataclass
class Row:
    """One gallery image as stored; ``vector`` is carried only where it is written or compared."""

    id: int
    path: str  # POSIX, relative to the gallery root
    label: str
    sha256: str
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass
class Change:
    """What one commit does to the rows: delete some, insert new ones (with vectors), relabel some."""

    delete_ids: list[int] = field(default_factory=list)
    new_rows: list[Row] = field(default_factory=list)
    relabel: dict[int, str] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.delete_ids or self.new_rows or self.relabel)

    def new_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the new rows."""
        ids = np.array([row.id for row in self.new_rows], dtype=np.int64)
        return ids, np.stack([row.vector for row in self.new_rows]).astype(np.float32)


class Storage(Protocol):
    """An index as a reader and a writer find it."""

    directory: Path  # where it is (for messages and the gallery of a folder store)

    def exists(self) -> bool:
        """Whether an index was ever committed here."""

    def resolve_index_type(self, index_type: str, count: int) -> str:
        """The index type a build of ``count`` rows uses for ``index_type`` (``auto`` or a name this
        backend knows: a FAISS factory string, a Milvus index type)."""

    def manifest_value(self, key: str) -> Any:
        """One manifest entry, read on its own and cheaply (None when absent or unreadable)."""

    def committed_generation(self) -> int | None:
        """The generation committed now: a snapshot of another one is stale."""

    def read(self, model: ModelInfo | None = None, with_vectors: bool = False):
        """One committed state whole (a ``shitu.index.snapshot.Snapshot``); with ``model``, refused when
        another model built it."""

    def writing(self, model: ModelInfo | None = None, damaged_ok: bool = False) -> AbstractContextManager["Session"]:
        """Hold the writer lock (a second writer is refused at once) and open the index for a change;
        ``damaged_ok``: the session opens even where no index, or a damaged one, is (a build replaces it,
        a repair reports it) and then has no manifest."""

    def check(self, model_path: Path | None, repair: bool = False) -> CheckReport:
        """Every way the index can be wrong (``shitu check``); with ``repair``, what the backend can fix is
        fixed. ``model_path``: the model file to compare with, or None (noted, not a problem)."""

    def info(self) -> dict:
        """What ``shitu info --json`` prints: contents, model, files and calibration."""


class Session(Protocol):
    """An index opened under the writer lock; ``shitu.index.commit`` drives its steps."""

    manifest: Manifest | None  # None before the first build

    def rows(self, ids) -> dict[int, Row]: ...
    def rows_by_path(self, paths: list[str]) -> dict[str, Row]: ...
    def ids_of_label(self, label: str) -> set[int]: ...
    def ids_below(self, path: str) -> set[int]: ...
    def all_rows(self) -> list[Row]: ...
    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]: ...
    def highest_id(self) -> int: ...

    def stage(self, change: Change, refill: bool = False) -> Any:
        """Make the vectors of the state after ``change`` durable but not yet live; ``refill``: from every
        stored vector, whatever the live vectors hold (a repair)."""

    def publish(self, change: Change, staged, next_id: int) -> Manifest:
        """The commit point: rows and a manifest naming the staged vectors, all or nothing."""

    def stage_all(self, rows: list[Row], manifest: Manifest) -> Any:
        """A whole new state (a build) made durable beside the committed one."""

    def publish_all(self, staged) -> Manifest:
        """The commit point of a build: the new state replaces the old at once."""

    def store_threshold(self, record: dict):
        """Keep a calibration record with the manifest; it changes no rows or vectors."""

    def abandon(self, staged):
        """Remove what a stage made when its commit failed (nothing names it)."""

    def clean(self, previous: Manifest | None):
        """After a commit: delete what neither the new state nor ``previous`` (kept for readers that have
        just opened it) needs."""
