"""Retrieval metrics from ranked neighbour labels: recall@k and MAP@R.

Follows pytorch-metric-learning's AccuracyCalculator: queries whose label has no member in the
gallery ("lone" queries) are left out, and MAP@R uses R = the number of gallery items of that label.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from shitu.errors import ShituError

METRIC_PATTERN = re.compile(r"^(recall@[1-9][0-9]*|map@r)$")


def parse_metric(name: str) -> str:
    """Validate a metric name such as ``recall@5`` or ``map@r`` (case-insensitive)."""
    metric = name.strip().lower()
    if not METRIC_PATTERN.match(metric):
        raise ShituError(f"unknown metric {name!r}: use recall@K (K >= 1) or map@r")
    return metric


def recall_at_k(ranked: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Fraction of queries whose label appears among their first ``k`` neighbours."""
    return float((ranked[:, :k] == truth[:, None]).any(axis=1).mean())


def map_at_r(ranked: np.ndarray, truth: np.ndarray, relevant: np.ndarray) -> float:
    """Mean over queries of precision averaged at each hit within the first R neighbours."""
    scores = []
    for row, label, r in zip(ranked, truth, relevant):
        hits = np.zeros(r, dtype=bool)  # an approximate index (IVF) may return fewer than R neighbours
        found = row[:r] == label
        hits[:len(found)] = found
        precision = np.cumsum(hits) / np.arange(1, r + 1)
        scores.append(float((precision * hits).sum() / r))
    return float(np.mean(scores))


def needed_depth(metrics: list[str], gallery_labels: list[str], leave_one_out: bool) -> int:
    """How many neighbours per query the metrics need (MAP@R needs the largest class size)."""
    depth = max((int(m.split("@")[1]) for m in metrics if m.startswith("recall@")), default=1)
    if "map@r" in metrics:
        depth = max(depth, max(Counter(gallery_labels).values(), default=0) - int(leave_one_out))
    return max(1, min(depth, len(gallery_labels) - int(leave_one_out)))


def evaluate(ranked_labels: list[list[str]], query_labels: list[str], gallery_labels: list[str],
             metrics: list[str], leave_one_out: bool = False) -> dict:
    """Compute ``metrics`` for queries whose ranked neighbour labels are ``ranked_labels``.

    With ``leave_one_out`` the queries are the gallery itself and each query's own match must already
    be excluded from its ranking; its label then counts one member less.
    """
    sizes = Counter(gallery_labels)
    relevant = np.array([sizes[label] - int(leave_one_out) for label in query_labels])
    keep = relevant > 0
    if not keep.any():
        raise ShituError("no query has a label that is also in the gallery: nothing to evaluate")
    width = max((len(row) for row in ranked_labels), default=0)
    ranked = np.full((len(ranked_labels), width), None, dtype=object)
    for i, row in enumerate(ranked_labels):
        ranked[i, :len(row)] = row
    ranked, truth, relevant = ranked[keep], np.array(query_labels, dtype=object)[keep], relevant[keep]
    results = {}
    for metric in metrics:
        if metric == "map@r":
            results[metric] = map_at_r(ranked, truth, relevant)
        else:
            results[metric] = recall_at_k(ranked, truth, int(metric.split("@")[1]))
    results["queries"] = int(keep.sum())
    results["lone_queries"] = int((~keep).sum())
    return results


def recall_at_1_of_vectors(query_vectors: np.ndarray, query_labels: list[str], gallery_vectors: np.ndarray,
                           gallery_labels: list[str], leave_one_out: bool = False) -> float:
    """recall@1 by exact cosine search over L2-normalised vectors (training's validation, no index).

    With ``leave_one_out`` the queries are the gallery itself and no photo may match itself.
    """
    similarity = query_vectors @ gallery_vectors.T
    if leave_one_out:
        np.fill_diagonal(similarity, -np.inf)
    ranked = [[gallery_labels[j]] for j in similarity.argmax(axis=1)]
    return evaluate(ranked, query_labels, gallery_labels, ["recall@1"], leave_one_out=leave_one_out)["recall@1"]
