"""The Python API: open an index with its model once, then query and evaluate repeatedly."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shitu.calibration import calibrated_threshold
from shitu.embed import Embedder
from shitu.errors import ShituError
from shitu.gallery import GalleryItem, normalise_label
from shitu.metrics import evaluate, needed_depth, parse_metric
from shitu.progress import SILENT, Reporter
from shitu.store import Snapshot, model_for_index, read_snapshot

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


class Recognizer:
    """A loaded model and index; refuses an index built by a different model.

    It answers from a snapshot of the index (``shitu.store.Snapshot``) and reads a new one before a
    query when a writer has committed since, so every answer comes from one whole, recent state.
    """

    def __init__(self, index_dir: str | Path = "index", model: str | Path | None = None,
                 threads: int | None = None):
        self.directory = Path(index_dir)
        self.embedder = Embedder(model_for_index(self.directory, model), threads)
        self.snapshot = read_snapshot(self.directory, self.embedder.info)

    def refresh(self) -> Snapshot:
        """The current snapshot, read again if the index changed since the last one."""
        if not self.snapshot.is_current():
            self.snapshot = read_snapshot(self.directory, self.embedder.info)
        return self.snapshot

    def matches(self, vectors: np.ndarray, topk: int) -> list[list[Match]]:
        """Ranked matches of each vector."""
        snapshot = self.refresh()
        scores, ids = snapshot.search(vectors, topk)
        rows = snapshot.rows
        return [[Match(rank + 1, rows[i].label, round(float(s), 6), rows[i].path)
                 for rank, (s, i) in enumerate((s, i) for s, i in zip(srow, irow) if i in rows)]
                for srow, irow in zip(scores, ids)]

    @property
    def threshold(self) -> float | None:
        """The threshold ``shitu calibrate`` stored with the index, or None (answer every query).

        Read afresh each time (one small query): calibrating changes no vectors, so it starts no new
        snapshot, yet a long-lived recognizer should use the new threshold at once."""
        return calibrated_threshold(self.directory)

    def query(self, images: list[str | Path], topk: int = 5, threshold: float | None = None) -> list[Answer]:
        """Answer each image; unreadable ones get an ``error`` and no results.

        Inputs are streamed in bounded batches, as build-index does, so memory does not grow with the
        number of photos. The photos are the user's own arguments, so a pipe (``<(cat a.jpg)``) works.
        Without ``threshold`` the index's calibrated threshold applies, if it has one; pass -1 to answer
        every query whatever its score.
        """
        answers = [Answer(str(image), None) for image in images]
        limit = self.threshold if threshold is None else threshold

        def bad(position, reason):
            answers[position].error = reason

        for positions, vectors in self.embedder.embed_files(images, on_bad=bad, regular_only=False):
            for position, found in zip(positions, self.matches(vectors, topk)):
                answers[position].results = found
                best = found[0] if found else None
                if best is not None and (limit is None or best.score >= limit):
                    answers[position].label = best.label
        return answers

    def evaluate(self, metrics: list[str], queries: list[GalleryItem] | None = None,
                 reporter: Reporter = SILENT) -> dict:
        """Metrics for query images, or leave-one-out over the gallery when ``queries`` is None."""
        metrics = [parse_metric(m) for m in metrics] or ["recall@1"]
        leave_one_out = queries is None
        snapshot = read_snapshot(self.directory, self.embedder.info, with_vectors=leave_one_out)
        if not snapshot.rows:
            raise ShituError(f"index {self.directory} holds no images: nothing to evaluate")
        labels = {row_id: normalise_label(row.label) for row_id, row in snapshot.rows.items()}
        gallery_labels = list(labels.values())
        depth = needed_depth(metrics, gallery_labels, leave_one_out=leave_one_out)
        if leave_one_out:
            truth = [labels[i] for i in snapshot.ids.tolist()]
            ranked = ranked_labels(snapshot, snapshot.vectors, depth, labels, exclude=snapshot.ids)
        else:
            vectors, truth = self.embed_queries(queries, reporter)
            ranked = ranked_labels(snapshot, vectors, depth, labels)
        result = evaluate(ranked, truth, gallery_labels, metrics, leave_one_out=leave_one_out)
        result["gallery"] = len(labels)
        if result["lone_queries"]:
            reporter.warn(lone_queries_message(truth, gallery_labels, leave_one_out))
        return result

    def embed_queries(self, queries: list[GalleryItem], reporter: Reporter) -> tuple[np.ndarray, list[str]]:
        vectors, truth = [], []

        def bad(_, reason):
            reporter.warn(f"skipped {reason}")

        with reporter.progress(len(queries), "embedding queries") as bar:
            for positions, batch in self.embedder.embed_files([q.path for q in queries], on_bad=bad,
                                                              on_done=lambda n: bar.advance()):
                vectors.append(batch)
                truth += [queries[p].label for p in positions]
        if not truth:
            raise ShituError("none of the query images could be read")
        return np.concatenate(vectors), truth


def lone_queries_message(truth: list[str], gallery_labels: list[str], leave_one_out: bool) -> str:
    """Which queries the metrics leave out, and why, so a recall over the rest is not taken for all."""
    sizes = Counter(gallery_labels)
    lone = Counter(label for label in truth if sizes[label] <= int(leave_one_out))
    names = ", ".join(repr(label) for label in sorted(lone)[:SHOWN_LABELS])
    more = f" and {len(lone) - SHOWN_LABELS} more labels" if len(lone) > SHOWN_LABELS else ""
    why = "the only image of its label" if leave_one_out else "a label the gallery does not hold"
    return (f"left out {sum(lone.values())} of {len(truth)} queries, each {why}: {names}{more}")


def ranked_labels(snapshot: Snapshot, vectors: np.ndarray, depth: int, labels: dict[int, str],
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
