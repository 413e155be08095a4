"""A calibrated threshold kept in the index manifest, so every query of that index uses it by default.

The score means something different for every model (the shipped one scores right and wrong answers
alike near 0.88), so the threshold belongs with the index, which already refuses any other model. It is
one manifest key, ``threshold``: an index without it (every index built before calibration existed) has
no calibrated threshold and answers every query, as before.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from shitu.errors import ShituError
from shitu.openset import point_json, rule_name
from shitu.store import DB_NAME, IndexStore, manifest_value, now, write_lock

MANIFEST_KEY = "threshold"


def calibration_of(manifest: dict) -> dict | None:
    """The calibration record of a manifest, or None when the index was never calibrated."""
    record = manifest.get(MANIFEST_KEY)
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("value"), (int, float)):
        raise ShituError(f"the index manifest's {MANIFEST_KEY!r} entry is damaged ({record!r}); "
                         f"run 'shitu calibrate' again")
    return record


def stored_calibration(directory: str | Path) -> dict | None:
    """The calibration record of the index in ``directory``, read on its own (one small query)."""
    return calibration_of({MANIFEST_KEY: manifest_value(directory, MANIFEST_KEY)})


def calibrated_threshold(directory: str | Path) -> float | None:
    """The calibrated threshold of the index in ``directory``, or None (answer every query)."""
    record = stored_calibration(directory)
    return None if record is None else float(record["value"])


def calibration_record(evaluation, target_unknown_rejection: float | None, manifest: dict) -> dict:
    """What is stored: the threshold, how it was chosen, and the figures it was chosen on.

    ``evaluation`` is a ``shitu.scoring.Evaluation`` with unknown queries."""
    figures = point_json(evaluation.chosen)
    return {"value": figures.pop("threshold"), "rule": rule_name(target_unknown_rejection),
            "target_unknown_rejection": target_unknown_rejection, **figures,
            "auc": round(evaluation.curve.auc(), 6), "known_queries": evaluation.curve.known_queries,
            "unknown_queries": evaluation.curve.unknown_queries, "model_sha256": manifest["model_sha256"],
            "gallery_images": len(evaluation.gallery_labels), "generation": manifest["generation"],
            "calibrated_at": now()}


def store_calibration(directory: str | Path, record: dict):
    """Write ``record`` into the manifest under the writer lock; refuse if the index changed meanwhile."""
    directory = Path(directory)
    with write_lock(directory):
        store = IndexStore.open(directory)
        try:
            if store.manifest["generation"] != record["generation"] or \
                    store.manifest["model_sha256"] != record["model_sha256"]:
                raise ShituError(f"index {directory} changed while it was being calibrated; run "
                                 f"'shitu calibrate' again")
            store.require_same_file()
            with store.db.conn:
                store.db.conn.execute("insert or replace into manifest (key, value) values (?, ?)",
                                      [MANIFEST_KEY, json.dumps(record)])
        except sqlite3.DatabaseError as exc:
            raise ShituError(f"cannot store the threshold in {directory / DB_NAME}: {exc}") from None
        finally:
            store.db.close()


def calibration_info(directory: str | Path) -> dict:
    """``threshold`` (the value or None) and ``calibration`` (the whole record) for ``shitu info``."""
    record = stored_calibration(directory)
    return {"threshold": None if record is None else record["value"], "calibration": record}


def describe(record: dict | None) -> str:
    """One line for people: the threshold and what it did on the queries it was chosen on."""
    if record is None:
        return "none (every query is answered; run 'shitu calibrate' to choose one)"
    return (f"{record['value']:.4f} ({record['rule']}; on {record['known_queries']} known and "
            f"{record['unknown_queries']} unknown queries: known right {record['known_right']:.3f}, "
            f"wrong {record['known_wrong']:.3f}, rejected {record['known_rejected']:.3f}; unknown rejected "
            f"{record['unknown_rejected']:.3f}; calibrated {record['calibrated_at']})")
