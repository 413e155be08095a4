"""Walk a gallery folder or a list file into labelled image records.

Folder layout: one sub-folder per label (its name is the label, spaces and accents included),
images at any depth below it. List file (PaddleClas style): ``relative/path<TAB>label`` per line,
paths relative to the gallery root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from shitu.errors import ShituError
from shitu.imageio import is_image_name


@dataclass(frozen=True)
class GalleryItem:
    """One labelled image: ``relpath`` is POSIX-style and relative to the gallery root."""

    path: Path
    relpath: str
    label: str


def read_gallery(root: str | Path, list_file: str | Path | None = None) -> list[GalleryItem]:
    """All labelled images of a gallery, sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise ShituError(f"gallery folder not found: {root}")
    items = read_list_file(root, Path(list_file)) if list_file else walk_folders(root)
    if not items:
        source = list_file or root
        raise ShituError(f"no images found in {source} (expected one sub-folder of images per label)")
    return sorted(items, key=lambda item: item.relpath)


def walk_folders(root: Path) -> list[GalleryItem]:
    """Images under each label folder; symlinked folders are followed once, loops are cut."""
    items = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in iter_images(label_dir):
            items.append(GalleryItem(path, path.relative_to(root).as_posix(), label_dir.name))
    return items


def iter_images(folder: Path):
    """Image-named files below ``folder``, each real directory visited once (no symlink loops)."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if not name.startswith(".") and is_image_name(path):
                yield path


def read_list_file(root: Path, list_file: Path) -> list[GalleryItem]:
    """Parse ``path<TAB>label`` lines (or ``path label``, split at the last space); no path twice."""
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ShituError(f"list file not found: {list_file}") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise ShituError(f"cannot read list file {list_file}: {exc}") from None
    items, first_line = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            item = parse_list_line(root, list_file, number, line)
            if item.relpath in first_line:  # the index stores one row per path
                raise ShituError(f"{list_file}, line {number}: {item.relpath!r} is already listed on "
                                 f"line {first_line[item.relpath]}")
            first_line[item.relpath] = number
            items.append(item)
    return items


def parse_list_line(root: Path, list_file: Path, number: int, line: str) -> GalleryItem:
    """One list-file line as an item; paths that leave the gallery root are refused."""
    separator = "\t" if "\t" in line else " "
    relpath, _, label = line.rstrip("\r\n").rpartition(separator)
    relpath, label = relpath.strip(), label.strip()
    where = f"{list_file}, line {number}"
    if not relpath or not label:
        raise ShituError(f"{where}: expected 'path<TAB>label', got {line.strip()!r}")
    return GalleryItem(root / relpath, inside_root(relpath, where), label)


def inside_root(relpath: str, where: str) -> str:
    """Normalise a relative path, refusing absolute paths and ``..`` escapes."""
    normal = os.path.normpath(relpath.replace("\\", "/"))
    if os.path.isabs(normal) or normal == ".." or normal.startswith("../"):
        raise ShituError(f"{where}: path {relpath!r} is outside the gallery root")
    return Path(normal).as_posix()
