"""Open-set figures: what a score threshold does to known and unknown queries, and which one to pick.

A known query (its product is in the gallery) is answered right, answered wrong, or rejected; an unknown
query (its product is not) should be rejected. A query is answered when its top-1 score is at least the
threshold, exactly as ``Index.query`` decides. The area under the curve of known-right against
unknown-rejected is the open-set classification rate area (OSCR, Dhamija et al. 2018, mirrored): it is
recall@1 for a model whose every unknown scores below every known, and less the more they overlap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from shitu.errors import ShituError

ABOVE_ALL = 1e-6  # the last threshold sits this far above the highest score: everything is rejected


@dataclass
class OperatingPoint:
    """The four fractions at one threshold."""

    threshold: float
    known_right: float
    known_wrong: float
    known_rejected: float
    unknown_rejected: float

    @property
    def balanced_accuracy(self) -> float:
        """Mean of the two things that should happen: knowns answered right, unknowns rejected."""
        return (self.known_right + self.unknown_rejected) / 2


@dataclass
class OpenSetCurve:
    """The four fractions for every threshold that changes one of them, lowest threshold first."""

    thresholds: np.ndarray
    known_right: np.ndarray
    known_wrong: np.ndarray
    known_rejected: np.ndarray
    unknown_rejected: np.ndarray
    known_queries: int
    unknown_queries: int

    def point(self, i: int) -> OperatingPoint:
        return OperatingPoint(float(self.thresholds[i]), float(self.known_right[i]), float(self.known_wrong[i]),
                              float(self.known_rejected[i]), float(self.unknown_rejected[i]))

    def auc(self) -> float:
        """Area under known-right (y) against unknown-rejected (x), from accepting all to rejecting all."""
        x, y = self.unknown_rejected, self.known_right
        return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))

    def to_json(self) -> dict:
        rounded = lambda values: [round(float(v), 6) for v in values]  # noqa: E731
        return {"thresholds": rounded(self.thresholds), "known_right": rounded(self.known_right),
                "known_wrong": rounded(self.known_wrong), "known_rejected": rounded(self.known_rejected),
                "unknown_rejected": rounded(self.unknown_rejected), "known_queries": self.known_queries,
                "unknown_queries": self.unknown_queries, "auc": round(self.auc(), 6)}


def open_set_curve(known_scores, known_correct, unknown_scores) -> OpenSetCurve:
    """The curve over thresholds placed between neighbouring distinct top-1 scores.

    Thresholds: the lowest score (everything answered), the midpoint of each gap between two distinct
    scores (a threshold anywhere in the gap gives the same fractions; the middle leaves most room on
    both sides for photos not measured), and just above the highest score (everything rejected).
    """
    known = np.asarray(known_scores, dtype=np.float64)
    correct = np.asarray(known_correct, dtype=bool)
    unknown = np.asarray(unknown_scores, dtype=np.float64)
    if len(known) == 0:
        raise ShituError("no known query could be scored: open-set figures need known and unknown queries")
    if len(unknown) == 0:
        raise ShituError("no unknown query could be scored: open-set figures need known and unknown queries")
    if len(correct) != len(known):
        raise ValueError("known_scores and known_correct differ in length")
    distinct = np.unique(np.concatenate([known, unknown]))
    thresholds = np.concatenate([distinct[:1], (distinct[:-1] + distinct[1:]) / 2, distinct[-1:] + ABOVE_ALL])
    answered = known[None, :] >= thresholds[:, None]
    return OpenSetCurve(
        thresholds=thresholds,
        known_right=(answered & correct).mean(axis=1),
        known_wrong=(answered & ~correct).mean(axis=1),
        known_rejected=(~answered).mean(axis=1),
        unknown_rejected=(unknown[None, :] < thresholds[:, None]).mean(axis=1),
        known_queries=len(known), unknown_queries=len(unknown))


def choose_threshold(curve: OpenSetCurve, target_unknown_rejection: float | None = None) -> OperatingPoint:
    """The lowest threshold that rejects at least the target share of unknowns; without a target, the
    one with the best balanced accuracy (the lowest of equals, so fewest knowns are turned away)."""
    if target_unknown_rejection is None:
        balanced = (curve.known_right + curve.unknown_rejected) / 2
        return curve.point(int(np.argmax(balanced)))
    check_target(target_unknown_rejection)
    # unknown_rejected never falls as the threshold rises, and the last point rejects everything
    return curve.point(int(np.argmax(curve.unknown_rejected >= target_unknown_rejection - 1e-12)))


def check_target(target_unknown_rejection: float | None):
    if target_unknown_rejection is not None and not 0.0 <= target_unknown_rejection <= 1.0:
        raise ShituError(f"--target-unknown-rejection must be between 0 and 1, got {target_unknown_rejection:g}")


def rule_name(target_unknown_rejection: float | None) -> str:
    if target_unknown_rejection is None:
        return "best balanced accuracy"
    return f"lowest threshold rejecting at least {target_unknown_rejection:g} of unknowns"


def point_json(point: OperatingPoint) -> dict:
    data = {key: round(value, 6) for key, value in asdict(point).items()}
    data["balanced_accuracy"] = round(point.balanced_accuracy, 6)
    return data
