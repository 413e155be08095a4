"""``info`` and ``check``: what an index holds, every way it can be wrong, and ``--repair``.

A repair rebuilds the FAISS file from the vectors stored in SQLite and commits it with the same
protocol as ``add`` and ``remove`` (``shitu.maintain.commit``), then deletes leftover files.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shitu.embed import file_sha256, recorded_training_labels
from shitu.errors import ShituError
from shitu.maintain import Change, commit
from shitu.store import (DB_NAME, IndexStore, errors_explained, faiss_module, make_faiss_index, model_for_index,
                         show, try_lock, write_lock)

NORM_TOLERANCE = 1e-3  # float32 vectors normalised by the embedder are within 1e-6 of unit length


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


@dataclass
class Problem:
    message: str
    repairable: bool = False  # fixed by rebuilding the FAISS file from the vectors stored in SQLite


@dataclass
class Findings:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)

    def problem(self, message: str, repairable: bool = False):
        self.problems.append(Problem(message, repairable))


# -- info --------------------------------------------------------------------------------------------
def index_info(directory: str | Path) -> dict:
    """What an index holds and what it was built with."""
    directory = Path(directory)
    store = IndexStore.open(directory)
    with errors_explained(directory):
        try:
            m = store.manifest
            label_counts = store.label_counts()
            model = {"name": m["model_name"], "version": m["model_version"], "sha256": m["model_sha256"],
                     "path": m.get("model_path"), "training_labels": training_label_count(m.get("model_path"))}
            return {"index": str(directory), "format_version": m["format_version"], "model": model,
                    "embedding_size": m["embedding_size"], "index_type": m["index_type"],
                    "count": store.count(), "labels": len(label_counts), "label_counts": label_counts,
                    "generation": m["generation"],
                    "faiss_file": m["faiss_file"], "gallery_root": m.get("gallery_root", ""),
                    "updated_at": m.get("updated_at", ""), "bytes": disk_usage(directory, m["faiss_file"])}
        finally:
            store.db.close()


def training_label_count(model_path: str | None) -> int | None:
    """How many product labels the index's model was trained on, when it records them."""
    if not model_path or not Path(model_path).is_file():
        return None
    labels = recorded_training_labels(Path(model_path))
    return None if labels is None else len(labels)


def disk_usage(directory: Path, faiss_file: str) -> dict:
    def size(path: Path) -> int:
        return path.stat().st_size if path.is_file() else 0

    total = sum(size(path) for path in directory.iterdir())
    return {"database": size(directory / DB_NAME), "faiss": size(directory / faiss_file), "total": total}


# -- check -------------------------------------------------------------------------------------------
def check_index(directory: str | Path, model: str | Path | None = None, repair: bool = False) -> CheckReport:
    """Look for every way an index can be wrong; with ``repair``, fix what the stored vectors allow."""
    directory = Path(directory)
    if not (directory / DB_NAME).is_file():
        IndexStore.open(directory)  # the usual "no index" error
    model_path = model_for_index(directory, model)
    if not model and not model_path.is_file():
        model_path = None  # no model to compare with: noted, not a problem
    report = CheckReport(str(directory))
    with check_lock(directory, repair) as locked:
        findings = inspect(directory, model_path, locked)
        if repair:
            report.repaired = repair_index(directory, findings)
            if report.repaired:
                findings = inspect(directory, model_path, locked)
    report.problems = [problem.message for problem in findings.problems]
    report.notes = findings.notes
    return report


@contextmanager
def check_lock(directory: Path, required: bool):
    """--repair needs the writer lock. A plain check holds it when it is free, so that a running
    writer's temporary files are not taken for leftovers, and checks the rest when it is not."""
    if required:
        with write_lock(directory):
            yield True
        return
    fd = try_lock(directory)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def inspect(directory: Path, model_path: Path | None, locked: bool) -> Findings:
    findings = Findings()
    try:
        store = IndexStore.open(directory)
    except ShituError as exc:
        findings.problem(str(exc))
        return findings
    try:
        check_database(store, findings)
        check_model(store, model_path, findings)
        check_vectors(store, findings)
        check_faiss(store, findings)
        if locked:
            check_leftovers(store, findings)
        else:
            findings.notes.append("another process is writing this index: leftover files were not checked")
    except sqlite3.DatabaseError as exc:  # a damaged page the manifest did not touch
        findings.problem(f"database {DB_NAME} is damaged ({exc}); rebuild the index with 'shitu build-index'")
    except ShituError as exc:  # the store's reads report damage the same way
        findings.problem(str(exc))
    finally:
        store.db.close()
    return findings


def check_database(store: IndexStore, findings: Findings):
    """SQLite's own structure check, then the manifest's counts against the rows."""
    result = [line for row in store.execute("pragma quick_check") for line in row[0].splitlines()
              if not line.startswith("***")]
    if result != ["ok"]:
        findings.problem(f"database {DB_NAME} is damaged ({len(result)} errors, first: {result[0]}); "
                         f"rebuild the index with 'shitu build-index'")
    count, labels = store.execute("select count(*), count(distinct label) from images")[0]
    m = store.manifest
    if (m.get("count"), m.get("labels")) != (count, labels):
        findings.problem(f"manifest says {m.get('count')} images of {m.get('labels')} labels, the database "
                         f"holds {count} of {labels}", repairable=True)


def check_model(store: IndexStore, model_path: Path | None, findings: Findings):
    m = store.manifest
    if model_path is None:
        findings.notes.append("model not checked: no --model given and no default model installed")
    elif not model_path.is_file():
        findings.problem(f"model not found: {model_path}")
    elif file_sha256(model_path) != m["model_sha256"]:
        findings.problem(f"index was built with model {m['model_name']} {m['model_version']} (sha256 "
                         f"{m['model_sha256'][:12]}), not with {model_path}; its vectors cannot be reused: "
                         f"rebuild it with 'shitu build-index --model {model_path}'")


def check_vectors(store: IndexStore, findings: Findings):
    """Each stored vector has the model's size, finite values and unit length."""
    size = int(store.manifest["embedding_size"])
    wrong_size, not_unit = [], []
    for row_id, blob in store.execute("select id, vector from images order by id"):
        if blob is None or len(blob) != size * 4:
            wrong_size.append(row_id)
            continue
        norm = float(np.linalg.norm(np.frombuffer(blob, dtype=np.float32).astype(np.float64)))
        if not abs(norm - 1.0) <= NORM_TOLERANCE:  # also catches NaN
            not_unit.append(row_id)
    advice = "re-add those files with 'shitu add' after removing them, or rebuild with 'shitu build-index'"
    if wrong_size:
        findings.problem(f"{len(wrong_size)} stored vectors are not {size} float32 values (ids "
                         f"{show(wrong_size)}); {advice}")
    if not_unit:
        findings.problem(f"{len(not_unit)} stored vectors are not unit length (ids {show(not_unit)}); "
                         f"{advice}")


def check_faiss(store: IndexStore, findings: Findings):
    """The manifest's FAISS file loads and holds exactly one vector per row, under the row's id."""
    try:
        index = store.read_faiss_file()
    except ShituError as exc:
        findings.problem(str(exc), repairable=True)
        return
    name = store.manifest["faiss_file"]
    if index.d != int(store.manifest["embedding_size"]):
        findings.problem(f"{name} holds {index.d}-d vectors, the model makes "
                         f"{store.manifest['embedding_size']}-d ones", repairable=True)
    if not hasattr(index, "id_map"):
        findings.problem(f"{name} is not an id-mapped index", repairable=True)
        return
    faiss_ids = Counter(faiss_module().vector_to_array(index.id_map).tolist())
    row_ids = {row[0] for row in store.execute("select id from images")}
    repeated = sorted(i for i, n in faiss_ids.items() if n > 1)
    missing, extra = sorted(row_ids - faiss_ids.keys()), sorted(faiss_ids.keys() - row_ids)
    if repeated:
        findings.problem(f"{len(repeated)} ids appear more than once in {name} (ids {show(repeated)})", True)
    if missing:
        findings.problem(f"{len(missing)} rows have no vector in {name} (ids {show(missing)})", True)
    if extra:
        findings.problem(f"{len(extra)} vectors in {name} have no row (ids {show(extra)})", True)


def check_leftovers(store: IndexStore, findings: Findings):
    """Files an interrupted write left behind: harmless (no manifest names them), so only noted."""
    findings.leftovers = leftover_files(store.directory, store.manifest["faiss_file"])
    for path in findings.leftovers:
        findings.notes.append(f"leftover {path.name} from an interrupted write (harmless; 'shitu check "
                              f"--repair' removes it)")


def leftover_files(directory: Path, live: str) -> list[Path]:
    """FAISS files other than the live one and the generation before it, and temporary files."""
    names = sorted(path.name for path in directory.glob("vectors.*.faiss"))
    live_generation = generation_of(live) or 0
    older = [g for g in map(generation_of, names) if g is not None and g < live_generation]
    kept = {live} | ({f"vectors.{max(older)}.faiss"} if older else set())
    found = [directory / name for name in names if name not in kept]
    found += sorted(directory.glob(".vectors.*.tmp"))
    found += [path for path in (directory / f".{DB_NAME}.tmp", directory / f".{DB_NAME}.tmp-journal")
              if path.exists()]
    return found


def generation_of(name: str) -> int | None:
    """N of ``vectors.N.faiss``; None for any other name."""
    parts = name.split(".")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def repair_index(directory: Path, findings: Findings) -> list[str]:
    """Rebuild the FAISS file from the stored vectors when that fixes something, then delete leftovers."""
    done, leftovers = [], set(findings.leftovers)
    if any(problem.repairable for problem in findings.problems):
        try:
            name, count = rebuild_from_stored(directory)
        except ShituError as exc:
            findings.problem(f"cannot repair: {exc}")
        else:
            done.append(f"rebuilt {name} from {count} stored vectors")
            leftovers |= set(leftover_files(directory, name))  # the commit itself deletes some of them
    for path in sorted(leftovers):
        path.unlink(missing_ok=True)
        done.append(f"removed leftover {path.name}")
    return done


def rebuild_from_stored(directory: Path) -> tuple[str, int]:
    """Commit a FAISS file rebuilt from every stored vector, and a manifest that counts the rows again."""
    store = IndexStore.open(directory)
    try:
        with errors_explained(directory):  # a full disk: reported as a problem like any other
            ids, vectors = store.all_vectors()
            index = make_faiss_index(store.manifest["index_type"], store.manifest["embedding_size"], vectors,
                                     ids)
            return commit(store, Change(), index), len(ids)
    finally:
        store.db.close()
