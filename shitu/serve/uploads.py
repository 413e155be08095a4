"""Uploaded photos: checked as images, then stored in the gallery under names the server chooses.

A photo added through the service must outlive the request: ``check``, thumbnails and a later
``build-index`` of the gallery read it from disk like any other. It is written to
``<gallery root>/<label>/<sha256>.<ext>``: the label folder is what build-index would label it by, the
content hash makes the name unique and repeat uploads idempotent, and the extension comes from the
decoded format. Nothing the client names (file names above all) reaches the file system.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from shitu.gallery import normalise_label
from shitu.imageio import Upload, load_rgb
from shitu.index.build import content_hash
from shitu.index.files import replace_durably
from shitu.progress import printable
from shitu.serve.errors import ApiError

SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
MAX_NAME_BYTES = 255  # one folder name on every common file system
SHOWN_NAME = 80  # characters of a client's file name quoted in an error


@dataclass
class Photo:
    """One uploaded file: ``name`` is what messages call it, ``data`` its bytes."""

    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def described(position: int, filename: str | None) -> str:
    """``upload-2 ("shelf.jpg")``: the facade's name for an upload, with the client's name for people."""
    base = f"upload-{position + 1}"
    if not filename:
        return base
    short = printable(filename)[:SHOWN_NAME]
    return f'{base} ("{short}")'


def checked_suffix(photo: Photo) -> str:
    """The gallery suffix of a readable photo; refuses what the embedder or the gallery walk cannot read."""
    if not photo.data:
        raise ApiError(400, f"{photo.name}: the file is empty")
    load_rgb(Upload(photo.name, photo.data))  # the same decoding and limits as every gallery photo
    with Image.open(io.BytesIO(photo.data)) as image:
        found = image.format
    if found not in SUFFIXES:
        raise ApiError(400, f"{photo.name}: {found} images cannot join the gallery; send JPEG, PNG, WebP, GIF, "
                            f"BMP or TIFF")
    return SUFFIXES[found]


def label_folder(label: str | None) -> str:
    """The label as stored, refused when it cannot be the name of one folder in the gallery."""
    name = normalise_label(label or "")
    if not name:
        raise ApiError(400, "the label must not be empty")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ApiError(400, f"label {printable(name)!r} cannot be a gallery folder: no '/', '\\', '.' or '..'")
    if name.startswith("."):
        raise ApiError(400, f"label {printable(name)!r} starts with '.': the gallery walk skips hidden folders")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        raise ApiError(400, "the label contains control characters")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ApiError(400, f"the label is longer than {MAX_NAME_BYTES} bytes, the limit of a folder name")
    return name


class StoredPhotos:
    """Photos written into one label folder; ``undo`` deletes what this request created, and only that."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.paths: list[Path] = []
        self.created: list[Path] = []
        self.made_folder = False

    def write(self, photos: list[Photo], suffixes: list[str]):
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True)
            self.made_folder = True
        for photo, suffix in zip(photos, suffixes):
            path = self.folder / f"{photo.sha256}{suffix}"
            if path not in self.paths:
                if content_hash(path) != photo.sha256:  # not a repeat upload of these bytes
                    write_atomically(path, photo.data)
                    self.created.append(path)
                self.paths.append(path)

    def undo(self, keep: set[Path] = frozenset()):
        for path in self.created:
            if path not in keep:
                path.unlink(missing_ok=True)
        if self.made_folder:
            try:
                self.folder.rmdir()
            except OSError:  # something else is in it now: leave it
                pass


def write_atomically(path: Path, data: bytes):
    """Write a whole file or nothing: a hidden temporary beside it, fsync, rename, fsync the folder."""
    descriptor, temporary = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        replace_durably(Path(temporary), path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
