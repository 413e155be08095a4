"""``check``: every way an index can be wrong, and ``--repair``.

A repair rebuilds the FAISS file from the vectors stored in SQLite and commits it with the same
protocol as build, ``add`` and ``remove`` (``shitu.index.commit``), then deletes leftover files.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from shitu.embed import file_sha256
from shitu.errors import ShituError
from shitu.index.commit import commit
from shitu.index.database import Database, open_index, show
from shitu.index.files import DB_NAME, errors_explained, leftover_files, try_lock
from shitu.index.findings import MODEL_NOT_CHECKED, NORM_TOLERANCE, CheckReport, Findings
from shitu.index.manifest import Manifest
from shitu.index.storage import Change, Storage
from shitu.index.vectors import ids_of, read_faiss_file


# -- check -------------------------------------------------------------------------------------------
def check_index(storage: Storage, model_path: Path | None, repair: bool = False) -> CheckReport:
    """Look for every way an index folder (``storage``, a ``FolderStorage``) can be wrong; with ``repair``,
    fix what the stored vectors allow. ``model_path``: the model to compare with, or None (noted)."""
    directory = storage.directory
    if not storage.exists():
        Database(directory)  # the usual "no index" error
    repaired = []
    if repair:
        with storage.writing(damaged_ok=True) as session:
            findings = inspect(directory, model_path, True)
            repaired = repair_index(session, findings)
            if repaired:
                findings = inspect(directory, model_path, True)
    else:
        with reading_lock(directory) as locked:
            findings = inspect(directory, model_path, locked)
    return findings.report(str(directory), repaired)


@contextmanager
def reading_lock(directory: Path):
    """A plain check holds the writer lock when it is free, so that a running writer's temporary files
    are not taken for leftovers, and checks the rest when it is not (--repair takes it like any writer)."""
    fd = try_lock(directory)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def inspect(directory: Path, model_path: Path | None, locked: bool) -> Findings:
    findings = Findings()
    try:
        db, manifest = open_index(directory)
    except ShituError as exc:
        findings.problem(str(exc))
        return findings
    try:
        check_database(db, manifest, findings)
        check_model(manifest, model_path, findings)
        check_vectors(db, manifest, findings)
        check_faiss(db, manifest, findings)
        if locked:
            check_leftovers(db.directory, manifest, findings)
        else:
            findings.notes.append("another process is writing this index: leftover files were not checked")
    except sqlite3.DatabaseError as exc:  # a damaged page the manifest did not touch
        findings.problem(f"database {DB_NAME} is damaged ({exc}); rebuild the index with 'shitu build-index'")
    except ShituError as exc:  # the store's reads report damage the same way
        findings.problem(str(exc))
    finally:
        db.close()
    return findings


def check_database(db: Database, m: Manifest, findings: Findings):
    """SQLite's own structure check, then the manifest's counts against the rows."""
    result = [line for row in db.execute("pragma quick_check") for line in row[0].splitlines()
              if not line.startswith("***")]
    if result != ["ok"]:
        findings.problem(f"database {DB_NAME} is damaged ({len(result)} errors, first: {result[0]}); "
                         f"rebuild the index with 'shitu build-index'")
    count, labels = db.counts()
    if (m.count, m.labels) != (count, labels):
        findings.problem(f"manifest says {m.count} images of {m.labels} labels, the database "
                         f"holds {count} of {labels}", repairable=True)


def check_model(m: Manifest, model_path: Path | None, findings: Findings):
    if model_path is None:
        findings.notes.append(MODEL_NOT_CHECKED)
    elif not model_path.is_file():
        findings.problem(f"model not found: {model_path}")
    elif file_sha256(model_path) != m.model_sha256:
        findings.problem(f"index was built with model {m.model_name} {m.model_version} (sha256 "
                         f"{m.model_sha256[:12]}), not with {model_path}; its vectors cannot be reused: "
                         f"rebuild it with 'shitu build-index --model {model_path}'")


def check_vectors(db: Database, m: Manifest, findings: Findings):
    """Each stored vector has the model's size, finite values and unit length."""
    size = m.embedding_size
    wrong_size, not_unit = [], []
    for row_id, blob in db.stored_vectors():
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


def check_faiss(db: Database, m: Manifest, findings: Findings):
    """The manifest's FAISS file loads and holds exactly one vector per row, under the row's id."""
    try:
        index = read_faiss_file(db.directory, m.faiss_file)
    except ShituError as exc:
        findings.problem(str(exc), repairable=True)
        return
    name = m.faiss_file
    if index.d != m.embedding_size:
        findings.problem(f"{name} holds {index.d}-d vectors, the model makes {m.embedding_size}-d ones",
                         repairable=True)
    if not hasattr(index, "id_map"):
        findings.problem(f"{name} is not an id-mapped index", repairable=True)
        return
    faiss_ids = Counter(ids_of(index).tolist())
    row_ids = set(db.row_ids())
    repeated = sorted(i for i, n in faiss_ids.items() if n > 1)
    missing, extra = sorted(row_ids - faiss_ids.keys()), sorted(faiss_ids.keys() - row_ids)
    if repeated:
        findings.problem(f"{len(repeated)} ids appear more than once in {name} (ids {show(repeated)})", True)
    if missing:
        findings.problem(f"{len(missing)} rows have no vector in {name} (ids {show(missing)})", True)
    if extra:
        findings.problem(f"{len(extra)} vectors in {name} have no row (ids {show(extra)})", True)


def check_leftovers(directory: Path, m: Manifest, findings: Findings):
    """Files an interrupted write left behind: harmless (no manifest names them), so only noted."""
    findings.leftovers = leftover_files(directory, m.faiss_file)
    for path in findings.leftovers:
        findings.notes.append(f"leftover {path.name} from an interrupted write (harmless; 'shitu check "
                              f"--repair' removes it)")


def repair_index(session, findings: Findings) -> list[str]:
    """Rebuild the FAISS file from the stored vectors when that fixes something, then delete leftovers."""
    done, leftovers = [], set(findings.leftovers)
    if findings.repairable():
        try:
            count = rebuild_from_stored(session)
        except ShituError as exc:
            findings.problem(f"cannot repair: {exc}")
        else:
            name = session.manifest.faiss_file
            done.append(f"rebuilt {name} from {count} stored vectors")
            leftovers |= set(leftover_files(session.directory, name))  # the commit itself deletes some of them
    for path in sorted(leftovers):
        path.unlink(missing_ok=True)
        done.append(f"removed leftover {path.name}")
    return done


def rebuild_from_stored(session) -> int:
    """Commit a FAISS file rebuilt from every stored vector, and a manifest that counts the rows again;
    returns how many vectors it holds."""
    if session.manifest is None:
        open_index(session.directory)[0].close()  # the index cannot be opened: its error says why
    with errors_explained(session.directory):  # a full disk: reported as a problem like any other
        commit(session, Change(), refill=True)
    return session.manifest.count
