"""The manifest of a Milvus gallery: the typed ``Manifest`` of every index, kept as one JSON collection
property, and the one entry only Milvus has.

Same keys, same types, same checks as an index folder's manifest; what differs is where it is kept, so
``faiss_file`` names the collection it is stored with and ``store`` is ``"milvus"``. A change in place
(``shitu.index.milvus``) is recoverable rather than atomic and records itself in ``pending`` until it is
committed; a folder commits in one SQLite transaction and never needs that record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from shitu.index.manifest import REQUIRED, Manifest, damaged
from shitu.index.milvus_url import MilvusURL


@dataclass
class MilvusManifest(Manifest):
    """A Milvus gallery's manifest; ``pending``: ``{"delete": [id, ...], "relabel": {"id": label}}`` of a
    change that was begun and not committed, else None."""

    noun: ClassVar[str] = "gallery"
    # next_id is required here (a folder's old manifests lack it): rows at or above it count as an interrupted
    # add's and are deleted, so a gallery read without it would lose every row
    required: ClassVar[frozenset[str]] = REQUIRED | {"next_id"}

    pending: dict | None = None

    @classmethod
    def from_property(cls, text: str, url: MilvusURL, collection: str) -> "MilvusManifest":
        """The manifest stored as ``collection``'s property ``text``, checked; ``faiss_file`` and ``store``
        default to what the place it is kept in says."""
        where = f"{url} ({collection})"
        try:
            values = json.loads(text)
        except ValueError:
            raise damaged(cls.place(where), "its manifest is not JSON") from None
        if not isinstance(values, dict):
            raise damaged(cls.place(where), "its manifest is not a JSON object")
        return cls.from_values({"faiss_file": collection, "store": "milvus", **values}, where)

    def validate(self, directory: Path | str):
        super().validate(directory)
        if self.pending is not None and not valid_pending(self.pending):
            raise damaged(self.place(directory), "its record of an interrupted change is not a list of ids and labels")


def valid_pending(pending) -> bool:
    """``{"delete": [id, ...], "relabel": {"id": label}}``, as ``MilvusSnapshot.publish`` writes it."""
    if not isinstance(pending, dict) or set(pending) - {"delete", "relabel"}:
        return False
    deletes, relabel = pending.get("delete", []), pending.get("relabel", {})
    return (isinstance(deletes, list) and all(type(i) is int for i in deletes) and isinstance(relabel, dict)
            and all(key.isdigit() and isinstance(label, str) for key, label in relabel.items()))
