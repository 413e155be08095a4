"""``add`` and ``remove``: change an index in place, without a rebuild, through the one commit protocol.

Ids of untouched rows never change; new and replaced images get ids above every id ever used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from shitu.embed import Embedder
from shitu.errors import ShituError, UsageError
from shitu.gallery import GalleryItem, iter_images, normalise_label
from shitu.index.build import embed_items, hash_items
from shitu.index.commit import commit, first_new_id
from shitu.index.database import show
from shitu.index.manifest import Manifest
from shitu.index.storage import Change, Row, Session, Storage
from shitu.progress import SILENT, Reporter


@dataclass
class AddReport:
    """What ``add`` did, for the summary line and the tests."""

    added: int = 0
    replaced: int = 0
    relabelled: int = 0
    unchanged: int = 0
    bad: list[str] = field(default_factory=list)
    count: int = 0
    labels: int = 0
    rebuilt: bool = False  # refilled from stored vectors: its type cannot delete in place
    index_type: str = ""


@dataclass
class RemoveReport:
    removed: int
    count: int
    labels: int
    rebuilt: bool
    index_type: str


def gallery_root(manifest: Manifest, directory: Path) -> Path:
    """The folder stored paths are relative to."""
    if not manifest.gallery_root:
        raise ShituError(f"index {directory} records no gallery folder; rebuild it with "
                         f"'shitu build-index GALLERY --index {directory}'")
    return Path(manifest.gallery_root)


def relative_to_root(path: Path, root: Path) -> str | None:
    """``path`` as the index stores it (POSIX, relative to the gallery root), or None outside the root.

    The path is tried as written first, so a symlinked file keeps the place the gallery gives it, then
    with its folder's symlinks resolved, as build-index resolved the root.
    """
    absolute = Path(os.path.abspath(path))
    for candidate in (absolute, Path(os.path.realpath(absolute.parent)) / absolute.name):
        try:
            relative = candidate.relative_to(root).as_posix()
        except ValueError:
            continue
        return "" if relative == "." else relative
    return None


# -- add ---------------------------------------------------------------------------------------------
def add_images(paths: list[str | Path], storage: Storage, embedder: Embedder, label: str | None = None,
               reporter: Reporter = SILENT) -> AddReport:
    """Add new images and replace changed ones; unchanged files cost a hash and nothing else.

    Ids of untouched rows never change; new and replaced images get ids above every id ever used.
    """
    check_add_request(paths, label)
    report = AddReport()
    with storage.writing(embedder.info) as session:
        root = gallery_root(session.manifest, storage.directory)
        items = collect_items([Path(p) for p in paths], root, label, reporter.warn)
        hashes = hash_items(items, reporter)
        change, todo, replacing = plan_add(session, items, hashes, report)
        fresh = embed_items(items, todo, embedder, report, reporter)
        if todo and not fresh and not change.relabel:
            raise ShituError(f"none of the {len(todo)} new or changed images could be read; "
                             f"the index was not changed")
        start = first_new_id(session)
        for n, position in enumerate(sorted(fresh)):
            item = items[position]
            change.new_rows.append(Row(start + n, item.relpath, item.label, hashes[position] or "", fresh[position]))
            if position in replacing:
                change.delete_ids.append(replacing[position])
        report.replaced = sum(1 for p in fresh if p in replacing)
        report.added = len(fresh) - report.replaced
        if not change.empty():
            report.rebuilt = commit(session, change)
        m = session.manifest
        report.count, report.labels, report.index_type = m.count, m.labels, m.index_type
    return report


def check_add_request(paths: list[str | Path], label: str | None):
    """What ``add`` refuses before it loads a model or takes the lock."""
    if label is not None and not label.strip():
        raise ShituError("--label must not be empty")
    if label is None and any(Path(path).is_file() for path in paths):
        raise UsageError("image files need --label (folders take labels from their label folders)")


def collect_items(paths: list[Path], root: Path, label: str | None, warn=None) -> list[GalleryItem]:
    """Every image the paths name, once each; anything missing or outside the gallery root is refused."""
    found = {}
    for path in paths:
        for item in items_below(path, root, label, warn):
            found.setdefault(item.relpath, item)
    return sorted(found.values(), key=lambda item: item.relpath)


def items_below(path: Path, root: Path, label: str | None, warn=None) -> list[GalleryItem]:
    """A file with ``label``, or the images below a folder.

    Without ``label`` a folder's images are labelled the way build-index labels them, by their
    top-level folder under the gallery root, so the root itself reads in the gallery layout.
    """
    if not (path.is_file() or path.is_dir()):
        raise ShituError(f"{path}: no such image file or folder")
    relative = relative_to_root(path, root)
    if relative is None:
        raise ShituError(f"{path} is outside the gallery folder {root} of this index (paths are stored "
                         f"relative to it); copy it into the gallery first. The index was not changed")
    if path.is_file():
        if label is None:
            raise ShituError(f"{path}: an image file needs --label")
        return [GalleryItem(path, relative, label)]
    items = []
    for image in iter_images(path, warn, root):
        stored = "/".join(part for part in (relative, image.relative_to(path).as_posix()) if part)
        if label is not None or "/" in stored:  # build-index ignores files lying loose in the root
            items.append(GalleryItem(image, stored, label or stored.split("/")[0]))
    if not items:
        raise ShituError(f"no images found below {path}")
    return items


def plan_add(session: Session, items: list[GalleryItem], hashes: list[str | None],
             report: AddReport) -> tuple[Change, list[int], dict[int, int]]:
    """Sort items into unchanged, relabelled and to-embed; returns the change so far, the positions to
    embed, and ``{position: old id}`` for changed files whose old row the new one replaces."""
    change, todo, replacing = Change(), [], {}
    stored = session.rows_by_path([item.relpath for item in items])
    for position, item in enumerate(items):
        old = stored.get(item.relpath)
        if old is not None and hashes[position] is not None and old.sha256 == hashes[position]:
            if old.label == item.label:
                report.unchanged += 1
            else:
                change.relabel[old.id] = item.label
                report.relabelled += 1
            continue
        todo.append(position)
        if old is not None:
            replacing[position] = old.id
    return change, todo, replacing


# -- remove ------------------------------------------------------------------------------------------
def remove_images(storage: Storage, labels: list[str] = (), paths: list[str] = (),
                  ids: list[int] = ()) -> RemoveReport:
    """Remove rows by label, by path and by id; every selector must match something, or nothing changes."""
    if not labels and not paths and not ids:
        raise UsageError("say what to remove with --label or --path")
    with storage.writing() as session:
        unknown = sorted(set(map(int, ids)) - set(session.rows(ids)))
        if unknown:
            raise ShituError(f"index {storage.directory} holds no images with ids {show(unknown)}; the index "
                             f"was not changed")
        selected, unmatched = select_ids(session, [normalise_label(label) for label in labels], paths)
        ids = selected | set(map(int, ids))
        if unmatched:
            raise ShituError(f"nothing in index {storage.directory} matches {', '.join(unmatched)}; "
                             f"the index was not changed")
        change = Change(delete_ids=sorted(ids))
        rebuilt = commit(session, change)
        m = session.manifest
        return RemoveReport(len(ids), m.count, m.labels, rebuilt, m.index_type)


def select_ids(session: Session, labels, paths) -> tuple[set[int], list[str]]:
    """Ids matching any selector, and the selectors that matched nothing."""
    ids, unmatched = set(), []
    for label in labels:
        found = session.ids_of_label(label)
        ids |= found
        if not found:
            unmatched.append(f"--label {label!r}")
    for path in paths:
        found = path_ids(session, path)
        ids |= found
        if not found:
            unmatched.append(f"--path {path!r}")
    return ids, unmatched


def path_ids(session: Session, given: str) -> set[int]:
    """Rows of a path as stored, or of a file or folder inside the gallery; a folder means all below it."""
    keys = {given.replace("\\", "/").strip("/")}
    root = session.manifest.gallery_root
    if root:
        keys.add(relative_to_root(Path(given), Path(root)) or "")
    found = set()
    for key in keys - {""}:  # the whole gallery is never meant by an empty path
        found |= session.ids_below(key)
    return found


