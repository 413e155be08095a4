"""A calibrated threshold kept in the index manifest, so every query of that index uses it by default.

The score means something different for every model (the shipped one scores right and wrong answers
alike near 0.88), so the threshold belongs with the index, which already refuses any other model. It is
one manifest entry, ``threshold`` (``Manifest.threshold``): an index without it (every index built before
calibration existed) has no calibrated threshold and answers every query, as before.
"""

from __future__ import annotations

from shitu.errors import ShituError
from shitu.index.manifest import Manifest, now
from shitu.index.storage import Storage
from shitu.openset import point_json, rule_name

MANIFEST_KEY = "threshold"


def calibration_of(record) -> dict | None:
    """A stored calibration record, checked; None when the index was never calibrated."""
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("value"), (int, float)):
        raise ShituError(f"the index manifest's {MANIFEST_KEY!r} entry is damaged ({record!r}); "
                         f"run 'shitu calibrate' again")
    return record


def stored_calibration(storage: Storage) -> dict | None:
    """The calibration record of an index, read on its own (one small query)."""
    return calibration_of(storage.manifest_value(MANIFEST_KEY))


def calibrated_threshold(storage: Storage) -> float | None:
    """The calibrated threshold of an index, or None (answer every query)."""
    record = stored_calibration(storage)
    return None if record is None else float(record["value"])


def calibration_record(evaluation, target_unknown_rejection: float | None, manifest: Manifest) -> dict:
    """What is stored: the threshold, how it was chosen, and the figures it was chosen on.

    ``evaluation`` is a ``shitu.scoring.Evaluation`` with unknown queries."""
    figures = point_json(evaluation.chosen)
    return {"value": figures.pop("threshold"), "rule": rule_name(target_unknown_rejection),
            "target_unknown_rejection": target_unknown_rejection, **figures,
            "auc": round(evaluation.curve.auc(), 6), "known_queries": evaluation.curve.known_queries,
            "unknown_queries": evaluation.curve.unknown_queries, "model_sha256": manifest.model_sha256,
            "gallery_images": len(evaluation.gallery_labels), "generation": manifest.generation,
            "calibrated_at": now()}


def store_calibration(storage: Storage, record: dict):
    """Write ``record`` into the manifest under the writer lock; refused if the index changed meanwhile."""
    with storage.writing() as session:
        session.store_threshold(record)


def calibration_info(record) -> dict:
    """``threshold`` (the value or None) and ``calibration`` (the whole record) for ``shitu info``."""
    record = calibration_of(record)
    return {"threshold": None if record is None else record["value"], "calibration": record}


def describe(record: dict | None) -> str:
    """One line for people: the threshold and what it did on the queries it was chosen on."""
    if record is None:
        return "none (every query is answered; run 'shitu calibrate' to choose one)"
    return (f"{record['value']:.4f} ({record['rule']}; on {record['known_queries']} known and "
            f"{record['unknown_queries']} unknown queries: known right {record['known_right']:.3f}, "
            f"wrong {record['known_wrong']:.3f}, rejected {record['known_rejected']:.3f}; unknown rejected "
            f"{record['unknown_rejected']:.3f}; calibrated {record['calibrated_at']})")
