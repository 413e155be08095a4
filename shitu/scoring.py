"""Search known and unknown query photos once, keeping everything open-set figures and the report need.

``Index.evaluate`` keeps only ranked labels; the open-set curve needs each query's top-1 score, and
the report needs the photos and the gallery matches behind them, so this keeps the matches whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shitu.errors import ShituError
from shitu.gallery import GalleryItem, read_gallery, walk_folders
from shitu.imageio import is_image_name
from shitu.metrics import evaluate, needed_depth
from shitu.openset import OpenSetCurve, OperatingPoint, choose_threshold, open_set_curve
from shitu.progress import SILENT, Reporter
from shitu.index.answers import Match

REPORT_DEPTH = 10  # the report plots recall@k for k = 1..10


@dataclass
class ScoredQuery:
    """One query photo and its ranked gallery matches."""

    item: GalleryItem
    vector: np.ndarray
    matches: list[Match]

    @property
    def score(self) -> float:
        return self.matches[0].score if self.matches else float("-inf")

    @property
    def correct(self) -> bool:
        return bool(self.matches) and self.matches[0].label == self.item.label


@dataclass
class Evaluation:
    """Known (and optionally unknown) queries searched against one index snapshot."""

    metrics: dict
    known: list[ScoredQuery]
    unknown: list[ScoredQuery] = field(default_factory=list)
    gallery_labels: list[str] = field(default_factory=list)
    curve: OpenSetCurve | None = None
    chosen: OperatingPoint | None = None
    lone_queries: int = 0


def read_unknowns(root: Path, list_file=None, reporter: Reporter = SILENT) -> list[GalleryItem]:
    """Unknown query photos: a list file, label folders, or simply photos in the folder (label '');
    what cannot be read goes to ``reporter``."""
    root = Path(root)
    if not root.is_dir():
        raise ShituError(f"unknown-photo folder not found: {root}")
    if list_file:
        return read_gallery(root, list_file, reporter)
    loose = [GalleryItem(path, path.name, "") for path in sorted(root.iterdir())
             if path.is_file() and not path.name.startswith(".") and is_image_name(path)]
    items = sorted(walk_folders(root, reporter.warn) + loose, key=lambda item: item.relpath)
    if not items:
        raise ShituError(f"no images found in {root}")
    return items


def score_queries(index, items: list[GalleryItem], depth: int, what: str,
                  reporter: Reporter = SILENT) -> list[ScoredQuery]:
    """Embed ``items`` and keep each one's first ``depth`` matches in ``index`` (a ``shitu.index.Index``);
    unreadable photos are skipped."""
    scored = []

    def bad(_, reason):
        reporter.warn(f"skipped {reason}")

    with reporter.progress(len(items), f"embedding {what} queries") as bar:
        for positions, vectors in index.embedder.embed_files([item.path for item in items], on_bad=bad,
                                                                  on_done=lambda n: bar.advance()):
            for position, vector, found in zip(positions, vectors, index.matches(vectors, depth)):
                scored.append(ScoredQuery(items[position], vector, found))
    if not scored:
        raise ShituError(f"none of the {what} query images could be read")
    return scored


def evaluate_queries(index, known_items: list[GalleryItem], metrics: list[str],
                     unknown_items: list[GalleryItem] | None = None, target_unknown_rejection: float | None = None,
                     depth: int = 1, reporter: Reporter = SILENT) -> Evaluation:
    """Retrieval metrics for the known queries, and with ``unknown_items`` the open-set curve and the
    threshold the rule picks. Known queries of labels the gallery lacks are left out, as in ``evaluate``."""
    snapshot = index.refresh()
    gallery_labels = [row.label for row in snapshot.rows.values()]
    in_gallery = set(gallery_labels)
    if unknown_items:
        clash = sorted({item.label for item in unknown_items if item.label in in_gallery})
        if clash:
            raise ShituError(f"--unknown holds photos of {len(clash)} labels the gallery has (e.g. {clash[0]!r}): "
                             f"unknown queries must be products that are not in the gallery")
    depth = max(depth, needed_depth(metrics, gallery_labels, leave_one_out=False))
    known = score_queries(index, known_items, depth, "known", reporter)
    ranked = [[m.label for m in query.matches] for query in known]
    result = evaluate(ranked, [query.item.label for query in known], gallery_labels, metrics)
    lone = [query for query in known if query.item.label not in in_gallery]
    if lone:
        reporter.warn(f"left out {len(lone)} known queries whose label is not in the gallery "
             f"(e.g. {lone[0].item.label!r}); pass them with --unknown instead")
    known = [query for query in known if query.item.label in in_gallery]
    evaluation = Evaluation(result, known, gallery_labels=gallery_labels, lone_queries=len(lone))
    if unknown_items:
        evaluation.unknown = score_queries(index, unknown_items, 1, "unknown", reporter)
        evaluation.curve = open_set_curve([q.score for q in known], [q.correct for q in known],
                                          [q.score for q in evaluation.unknown])
        evaluation.chosen = choose_threshold(evaluation.curve, target_unknown_rejection)
    return evaluation
