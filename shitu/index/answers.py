"""What a query returns: ranked matches per photo, and the helpers that turn searches into labels."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

SHOWN_LABELS = 5  # labels named in a warning; the count says how many there are


@dataclass
class Match:
    rank: int
    label: str
    score: float
    path: str


@dataclass
class Answer:
    """One query image's answer; ``label`` is None when the best score is below the threshold."""

    image: str
    label: str | None
    results: list[Match] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict:
        data = {"image": self.image, "label": self.label, "results": [asdict(m) for m in self.results]}
        if self.error is not None:
            data["error"] = self.error
        return data


def matches_of(snapshot, vectors: np.ndarray, topk: int) -> list[list[Match]]:
    """Ranked matches of each vector in ``snapshot``; ids without a row (none, normally) are skipped."""
    scores, ids = snapshot.search(vectors, topk)
    rows = snapshot.rows
    return [[Match(rank + 1, rows[i].label, round(float(s), 6), rows[i].path)
             for rank, (s, i) in enumerate((s, i) for s, i in zip(srow, irow) if i in rows)]
            for srow, irow in zip(scores, ids)]


def lone_queries_message(truth: list[str], gallery_labels: list[str], leave_one_out: bool) -> str:
    """Which queries the metrics leave out, and why, so a recall over the rest is not taken for all."""
    sizes = Counter(gallery_labels)
    lone = Counter(label for label in truth if sizes[label] <= int(leave_one_out))
    names = ", ".join(repr(label) for label in sorted(lone)[:SHOWN_LABELS])
    more = f" and {len(lone) - SHOWN_LABELS} more labels" if len(lone) > SHOWN_LABELS else ""
    why = "the only image of its label" if leave_one_out else "a label the gallery does not hold"
    return (f"left out {sum(lone.values())} of {len(truth)} queries, each {why}: {names}{more}")


def ranked_labels(snapshot, vectors: np.ndarray, depth: int, labels: dict[int, str],
                  exclude: np.ndarray | None = None) -> list[list[str]]:
    """The first ``depth`` neighbour labels per query, skipping each query's own id in ``exclude``."""
    ranked = []
    extra = int(exclude is not None)
    for start in range(0, len(vectors), 1024):
        _, ids = snapshot.search(vectors[start:start + 1024], depth + extra)
        for n, row in enumerate(ids):
            own = exclude[start + n] if extra else None
            ranked.append([labels[i] for i in row if i >= 0 and i != own][:depth])
    return ranked
