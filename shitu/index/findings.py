"""What ``check`` finds and what it reports, the same for every backend (an index folder, a Milvus gallery).

A backend's inspection collects ``Findings`` (problems, each marked repairable or not, notes, leftovers);
``CheckReport`` is what ``shitu check`` prints from them. Kept apart from the backends' checks so that the
storage seam (``shitu.index.storage``) can name the report without importing any backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

NORM_TOLERANCE = 1e-3  # float32 vectors normalised by the embedder are within 1e-6 of unit length
MODEL_NOT_CHECKED = "model not checked: no --model given, and the model the index was built with was not found"


@dataclass
class CheckReport:
    """Problems make ``check`` fail; notes (harmless leftovers, skipped steps) do not."""

    index: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"ok": self.ok, **asdict(self)}


class Problem(NamedTuple):
    """One way the index is wrong; a tuple, so ``for message, repairable in findings.problems`` reads it."""

    message: str
    repairable: bool = False  # what the backend's repair fixes (rebuilt vectors, a replayed change)


@dataclass
class Findings:
    """What an inspection found; ``leftovers`` are what interrupted writes left (files, collections)."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    leftovers: list = field(default_factory=list)

    def problem(self, message: str, repairable: bool = False):
        self.problems.append(Problem(message, repairable))

    def repairable(self) -> bool:
        return any(problem.repairable for problem in self.problems)

    def report(self, index: str, repaired: list[str] = ()) -> CheckReport:
        """The report ``shitu check`` prints: these problems and notes, and what a repair did."""
        return CheckReport(index, [problem.message for problem in self.problems], list(self.notes),
                           list(repaired))
