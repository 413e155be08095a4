"""Walk a gallery folder or a list file into labelled image records.

Folder layout: one sub-folder per label (its name is the label, spaces and accents included),
images at any depth below it. List file (PaddleClas style): ``relative/path<TAB>label`` per line,
paths relative to the gallery root.

Labels are Unicode NFC wherever they come from (folders copied from macOS are NFD), so the same
label typed or copied twice is one label. File names that are not valid UTF-8 cannot be stored in
the index; they are skipped with a warning naming them (see ``unstorable``).
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

from shitu.errors import ShituError
from shitu.imageio import is_image_name
from shitu.progress import SILENT, Reporter, printable

Warn = Callable[[str], None]


def normalise_label(label: str) -> str:
    """The one form a label is stored and compared in: NFC, surrounding white space removed."""
    return unicodedata.normalize("NFC", label).strip()


def shown(text: str | Path) -> str:
    """A file name as printable UTF-8: bytes that are not UTF-8 (kept by Python as surrogates) as \\xNN."""
    return printable(str(text))


def unstorable(text: str) -> bool:
    """Whether ``text`` holds bytes that are not UTF-8, which SQLite and JSON cannot hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@dataclass(frozen=True)
class GalleryItem:
    """One labelled image: ``relpath`` is POSIX-style and relative to the gallery root; ``label`` is NFC.

    Every label and stored path of an index passes through here, so this is where they are checked.
    """

    path: Path
    relpath: str
    label: str

    def __post_init__(self):
        if unstorable(self.relpath) or unstorable(self.label):
            raise ShituError(f"{shown(self.path)}: the file name (or label) is not valid UTF-8, which an "
                             f"index cannot store; rename it")
        object.__setattr__(self, "label", normalise_label(self.label))


ListFiles = Union[str, Path, Sequence[Union[str, Path]], None]  # one list file, several, or none


def read_gallery(root: str | Path, list_file: ListFiles = None, reporter: Reporter = SILENT) -> list[GalleryItem]:
    """All labelled images of a gallery folder, or of one or several list files below ``root``, sorted
    by relative path; what cannot be read is told to ``reporter``.

    The one duplicate policy of every reader (build, eval, calibrate, train, quantize, shrink): each photo
    once. A list file naming a photo twice is a mistake in that file; several list files may name the
    same photo when they agree on its label.
    """
    root = Path(root)
    try:
        is_folder = root.is_dir()
    except OSError as exc:  # a parent folder the user may not enter
        raise ShituError(f"cannot read gallery folder {shown(root)}: {exc.strerror or exc}") from None
    if not is_folder:
        raise ShituError(f"gallery folder not found: {shown(root)}")
    list_files = [list_file] if isinstance(list_file, (str, Path)) else list(list_file or [])
    items = read_list_files(root, [Path(f) for f in list_files]) if list_files else walk_folders(root, reporter.warn)
    if not items:
        source = ", ".join(str(f) for f in list_files) or root
        raise ShituError(f"no images found in {source} (expected one sub-folder of images per label)")
    return sorted(items, key=lambda item: item.relpath)


def walk_folders(root: Path, warn: Warn) -> list[GalleryItem]:
    """Images under each label folder; symlinked folders are followed once, loops are cut."""
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except OSError as exc:
        raise ShituError(f"cannot read gallery folder {shown(root)}: {exc.strerror or exc}") from None
    items = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if unstorable(entry.name):
            warn(f"skipped folder {shown(entry.path)}: its name is not valid UTF-8 (rename it to index it)")
            continue
        for path in iter_images(Path(entry.path), warn, root):
            items.append(GalleryItem(path, path.relative_to(root).as_posix(), entry.name))
    return items


def iter_images(folder: Path, warn: Warn | None = None, root: Path | None = None):
    """Image-named files below ``folder``, each real directory visited once.

    Symlink loops are cut, and so is a link back to the gallery ``root`` (or above it): ``loop -> .``
    would otherwise file every image again under a label ``loop``. Folders that cannot be listed and
    names that are not UTF-8 are reported to ``warn`` and skipped.
    """
    warn = warn or SILENT.warn
    top = os.path.realpath(root if root is not None else folder)
    seen = set()

    def unreadable(error: OSError):
        warn(f"cannot read folder {shown(error.filename)} ({error.strerror}); the images in it were skipped")

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        if os.path.islink(dirpath) and contains(real, top):
            warn(f"skipped folder {shown(dirpath)}: it links back to the gallery folder {shown(top)}")
            dirnames.clear()
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and storable_name(dirpath, d, warn))
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if not name.startswith(".") and is_image_name(path) and storable_name(dirpath, name, warn):
                yield path


def contains(folder: str, inner: str) -> bool:
    """Whether real path ``folder`` is ``inner`` or one of its ancestors."""
    return inner == folder or inner.startswith(folder.rstrip(os.sep) + os.sep)


def storable_name(dirpath: str, name: str, warn: Warn) -> bool:
    if unstorable(name):
        warn(f"skipped {shown(os.path.join(dirpath, name))}: the name is not valid UTF-8 (rename it to index it)")
        return False
    return True


def read_list_files(root: Path, list_files: list[Path]) -> list[GalleryItem]:
    """The items of every list file, each photo once; two list files giving one photo two labels is an error."""
    first = {}
    for list_file in list_files:
        for item in read_list_file(root, list_file):
            earlier = first.setdefault(item.relpath, (item, list_file))
            if earlier[0].label != item.label:
                raise ShituError(f"{item.relpath!r} is {earlier[0].label!r} in {earlier[1]} but "
                                 f"{item.label!r} in {list_file}")
    return [item for item, _ in first.values()]


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
    """Normalise a relative path, refusing absolute paths and ``..`` escapes.

    A backslash is kept: on Linux it is an ordinary character of a file name (``x\\y.jpg``).
    """
    normal = os.path.normpath(relpath)
    if os.path.isabs(normal) or normal == ".." or normal.startswith("../"):
        raise ShituError(f"{where}: path {relpath!r} is outside the gallery root")
    return Path(normal).as_posix()
