"""The files of an index folder: their names, generations, the writer lock, durable writes, leftovers.

An index folder holds ``gallery.db`` (rows and manifest) and ``vectors.<N>.faiss`` files, N being the
generation: every commit writes generation N+1 and keeps N for readers that have just read a manifest
naming it. This module is the one place that knows those names; nothing here reads SQLite or FAISS.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from shitu.errors import ShituError

DB_NAME = "gallery.db"
DB_TEMP = f".{DB_NAME}.tmp"  # a build's new database, renamed over DB_NAME when complete
JOURNAL = f"{DB_NAME}-journal"
FAISS_NAME = re.compile(r"^vectors\.([0-9]+)\.faiss$")
FAISS_GLOB, TEMP_GLOB = "vectors.*.faiss", ".vectors.*.tmp"


def faiss_name(generation: int) -> str:
    return f"vectors.{generation}.faiss"


def generation_of(name: str) -> int | None:
    """N of ``vectors.N.faiss``; None for any other name."""
    match = FAISS_NAME.match(name)
    return int(match.group(1)) if match else None


def generations(directory: Path) -> dict[int, Path]:
    """Every FAISS file of the folder by its generation."""
    found = {}
    for path in directory.glob(FAISS_GLOB):
        generation = generation_of(path.name)
        if generation is not None:
            found[generation] = path
    return found


def next_generation(directory: Path, committed: int = 0) -> int:
    """The generation the next commit writes: above the committed one and above every file present, so
    a number is never written twice (a reader may still be opening the file of an old one)."""
    return max([committed, *generations(directory)]) + 1


def leftover_files(directory: Path, live: str) -> list[Path]:
    """FAISS files other than the live one and the generation before it, and temporary files."""
    names = sorted(path.name for path in directory.glob(FAISS_GLOB))
    older = [g for g in generations(directory) if g < (generation_of(live) or 0)]
    kept = {live} | ({faiss_name(max(older))} if older else set())
    found = [directory / name for name in names if name not in kept]
    found += sorted(directory.glob(TEMP_GLOB))
    found += [path for path in (directory / DB_TEMP, directory / f"{DB_TEMP}-journal") if path.exists()]
    return found


def remove_stale_faiss(directory: Path, keep: set[str]):
    """Delete FAISS files and temp files no manifest refers to any more."""
    stale = [path for path in directory.glob(FAISS_GLOB) if path.name not in keep]
    discard(*stale, *directory.glob(TEMP_GLOB))


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, or None when it is gone: tells a renamed-over file from its successor."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


# -- the writer lock ---------------------------------------------------------------------------------
def try_lock(directory: Path) -> int | None:
    """A descriptor of the index folder holding its writer lock, or None when another process holds it.

    The lock is ``flock`` on the folder itself, not on a file inside it: a lock file can be deleted
    while a writer holds it, and the next writer then locks a fresh file and gets in beside the first.
    Opening a folder needs read permission only, so a read-only ``check`` can take the lock too.
    Release it with ``os.close``.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ShituError(f"cannot open index folder {directory}: {reason(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def make_index_folder(directory: Path):
    """Create the index folder if needed; a file in its place is a clear error, not a traceback."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ShituError(f"--index {directory} is a file, not an index folder") from None
    except OSError as exc:
        raise ShituError(f"cannot create index folder {directory}: {reason(exc)}") from None


def require_writable(directory: Path):
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ShituError(f"cannot write to index folder {directory}: permission denied (or a read-only "
                         f"file system); the index was not changed")


@contextmanager
def write_lock(directory: Path):
    """Hold the index's writer lock; a second writer is refused at once with a clear message.

    Whatever the file system or SQLite refuses inside (a full disk, a permission, a folder where a file
    should be) becomes one line: every writer commits last, so the index keeps its committed state.
    """
    make_index_folder(directory)
    fd = try_lock(directory)
    if fd is None:
        raise ShituError(f"another shitu process is changing the index at {directory}; "
                         f"try again when it has finished")
    try:
        require_writable(directory)
        with errors_explained(directory):
            yield
    finally:
        os.close(fd)


@contextmanager
def errors_explained(directory: Path):
    """SQLite's own failures (a damaged page, a full disk) and refused file operations as one line
    instead of a traceback; a transaction they interrupt is rolled back, so nothing was changed."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise ShituError(f"index database {directory / DB_NAME} failed: {exc}; nothing was changed "
                         f"(see 'shitu check --index {directory}')") from None
    except OSError as exc:
        raise write_failed(directory, exc.filename, reason(exc)) from None


def write_failed(directory: Path, name, why: str) -> ShituError:
    target = f" {Path(name).name}" if name else ""
    return ShituError(f"index {directory}: cannot write{target} ({why}); the index keeps its last committed "
                      f"state (see 'shitu check --index {directory}')")


def reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


# -- durable writes ----------------------------------------------------------------------------------
def discard(*paths: Path):
    """Delete files a failed write leaves, as far as the file system lets us (they are harmless)."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def fsync_path(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(source: Path, target: Path):
    """Rename ``source`` (already synced) over ``target`` and sync the folder, so the rename survives a
    power cut."""
    os.replace(source, target)
    fsync_path(target.parent)
