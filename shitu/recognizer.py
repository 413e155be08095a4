"""``Recognizer``: the name the Python API had before ``shitu.index.Index``; kept for existing callers."""

from __future__ import annotations

from pathlib import Path

from shitu.index.answers import Answer, Match
from shitu.index.api import Index

__all__ = ["Answer", "Match", "Recognizer"]


class Recognizer(Index):
    """An ``Index`` opened for querying at once: the model is loaded and the index read (and refused if
    another model built it) when it is made, as ``Recognizer`` always did."""

    def __init__(self, index_dir: str | Path = "index", model: str | Path | None = None,
                 threads: int | None = None):
        super().__init__(index_dir, model, threads=threads)
        self.refresh()
