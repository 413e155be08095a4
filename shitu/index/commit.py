"""The one write protocol of an index, used by build, add, remove and check --repair.

Under the writer lock (``Storage.writing``):

1. ``stage``: the vectors of the new state are made durable, but nothing names them yet;
2. ``publish``: rows and a manifest naming those vectors are committed at once, all or nothing: the
   commit point (``publish_all`` for a build, which replaces the whole state);
3. ``clean``: what neither the new state nor the previous one needs is deleted; the previous state stays
   for readers that have just opened it.

A failure before step 2 (a full disk, a kill) leaves the committed state as it was; what step 1 made is
removed (``abandon``) or, after a kill, a leftover the next writer or ``check --repair`` deletes. New ids
follow the manifest's ``next_id`` rule, so an id is never used twice. How a backend keeps each step
crash-safe is its own business (``shitu.index.folder`` for FAISS files and SQLite).
"""

from __future__ import annotations

from shitu.index.manifest import Manifest, next_id_after
from shitu.index.storage import Change, Row, Session


def commit(session: Session, change: Change, refill: bool = False) -> bool:
    """Commit ``change`` in place; ``refill``: rebuild the vectors from every stored one (a repair).
    Returns whether the vectors were refilled (a type that cannot delete in place, or a repair)."""
    previous = session.manifest
    next_id = next_id_after(first_new_id(session), [row.id for row in change.new_rows])
    staged = session.stage(change, refill)
    try:
        session.publish(change, staged, next_id)
    except BaseException:
        session.abandon(staged)
        raise
    session.clean(previous)
    return staged.refilled


def commit_all(session: Session, rows: list[Row], manifest: Manifest) -> Manifest:
    """Replace the whole state with ``rows`` (a build); ``manifest`` says what they were built with."""
    previous = session.manifest
    staged = session.stage_all(rows, manifest)
    try:
        committed = session.publish_all(staged)
    except BaseException:
        session.abandon(staged)
        raise
    session.clean(previous)
    return committed


def first_new_id(session: Session) -> int:
    """The id for the first new row of a change: the manifest's ``next_id`` rule (``Manifest.free_id``)."""
    return session.manifest.free_id(session.highest_id())
