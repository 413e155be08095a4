"""``Snapshot``: one committed state of an index read whole, so a reader's answers never mix two states."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from shitu.index.manifest import Manifest
from shitu.index.storage import Row


@dataclass
class Snapshot:
    """Rows and manifest from one read, and a search over the vectors that manifest names.

    ``vectors`` (id order, as ``ids``) is read only when asked for. ``searcher(vectors, k)`` gives top-k
    (scores, ids), -1 for a missing neighbour; ``current()`` tells whether the storage still has this
    state committed (one small read).
    """

    manifest: Manifest
    rows: dict[int, Row]
    searcher: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
    current: Callable[[int], bool]
    ids: np.ndarray | None = None
    vectors: np.ndarray | None = None
    index: object = None  # the backend's own search structure (a FAISS index for a folder)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.searcher(vectors, k)

    def is_current(self) -> bool:
        """Whether no writer has committed since this snapshot was read."""
        return self.current(self.manifest.generation)
