"""What the HTTP layer asks of the index, through the ``Index`` facade only, with writes serialised.

One process serves many requests on threads. Reads need no lock: each answers from a whole snapshot
and the facade reads a new one as soon as a writer has committed, so a change is visible to the next
query. Writes take ``self.writing`` (one writer thread at a time in this process); the facade's writer
lock (flock on the index folder) keeps other processes out, and one that holds it gets 409.
"""

from __future__ import annotations

import threading
from dataclasses import asdict
from pathlib import Path

from shitu.errors import ShituError
from shitu.gallery import normalise_label
from shitu.index import Index
from shitu.progress import printable_values
from shitu.serve.errors import ApiError
from shitu.serve.thumbnails import ThumbnailCache, thumbnail_jpeg
from shitu.serve.uploads import Photo, StoredPhotos, checked_suffix, label_folder

MAX_TOPK = 100  # more matches than a person reads or a client needs; keeps answers small


class Service:
    """An open ``Index`` and the rules of the service around it (limits, token, thumbnails)."""

    def __init__(self, index: Index, token: str | None = None, max_upload_bytes: int = 20 << 20):
        self.index = index
        self.token = token or None
        self.max_upload_bytes = max_upload_bytes
        self.writing = threading.Lock()
        self.thumbnails = ThumbnailCache()

    def warm(self):
        """Load the model and the index now: a wrong model or a missing index fails at start, and the
        first request does not pay for the session."""
        self.index.refresh()
        self.index.embedder

    # -- reading ---------------------------------------------------------------------------------
    def query(self, photos: list[Photo], topk: int, threshold: float | None) -> list[dict]:
        """``shitu query --json`` for uploads; any unreadable one refuses the whole request."""
        if not 1 <= topk <= MAX_TOPK:
            raise ApiError(400, f"topk must be between 1 and {MAX_TOPK}, got {topk}")
        answers = self.index.query([photo.data for photo in photos], topk, threshold)
        failed = [named_error(answer.error, photos[n]) for n, answer in enumerate(answers) if answer.error]
        if failed:
            raise ApiError(400, "; ".join(failed) + "; nothing was answered")
        return printable_values([answer.to_json() for answer in answers])

    def info(self) -> dict:
        return printable_values(self.index.info())

    def labels(self) -> dict[str, int]:
        return printable_values(self.index.labels())

    def images(self, label: str | None, offset: int, limit: int) -> list[dict]:
        return [row_json(row) for row in self.index.images(label, offset, limit)]

    def thumbnail(self, image_id: int) -> bytes:
        row = self.row(image_id)
        try:
            path = self.index.image_file(image_id)
            return self.thumbnails.get((row.id, row.sha256), lambda: thumbnail_jpeg(path))
        except ShituError as exc:
            raise ApiError(404, str(exc)) from None

    def row(self, image_id: int):
        try:
            return self.index.image(image_id)
        except ShituError as exc:
            raise ApiError(404, str(exc)) from None

    # -- writing ---------------------------------------------------------------------------------
    def add(self, photos: list[Photo], label: str | None) -> dict:
        """Store the photos in the gallery's label folder and add them; on failure, delete what this
        call wrote and the index is as it was."""
        name = label_folder(label)
        suffixes = [checked_suffix(photo) for photo in photos]  # all checked before anything is written
        with self.writing:
            stored = StoredPhotos(self.gallery_root() / name)
            try:
                write_photos(stored, photos, suffixes)
                report = self.index.add(stored.paths, name)
            except BaseException:
                stored.undo(keep=self.indexed(stored.paths, name))
                raise
            rows = self.index_rows(stored.paths, name)
        return printable_values({**asdict(report), "images": [row_json(rows[path]) for path in stored.paths]})

    def remove_image(self, image_id: int) -> dict:
        with self.writing:
            self.row(image_id)
            return asdict(self.index.remove(ids=[image_id]))

    def remove_label(self, label: str) -> dict:
        name = normalise_label(label)
        with self.writing:
            if name not in self.index.labels():
                raise ApiError(404, f"the index holds no label {name!r}")
            return asdict(self.index.remove(labels=[name]))

    def gallery_root(self) -> Path:
        """From the current manifest alone: ``info()`` would also count labels, size the files and read
        the model's metadata on every add."""
        root = self.index.read().manifest.gallery_root
        if not root:
            raise ShituError(f"index {self.index.directory} records no gallery folder to store photos in; "
                             f"rebuild it with 'shitu build-index GALLERY'")
        if not Path(root).is_dir():
            raise ShituError(f"the gallery folder {root} of index {self.index.directory} is gone; photos cannot "
                             f"be stored in it")
        return Path(root)

    def index_rows(self, paths: list[Path], label: str) -> dict[Path, object]:
        """The rows now stored for these files of ``label``, by file."""
        by_name = {f"{label}/{path.name}": path for path in paths}
        rows = self.index.images(label, 0, 1 << 62)
        return {by_name[row.path]: row for row in rows if row.path in by_name}

    def indexed(self, paths: list[Path], label: str) -> set[Path]:
        """Files the index refers to after a failed add (a failure after its commit must not orphan rows)."""
        try:
            return set(self.index_rows(paths, label))
        except Exception:
            return set(paths)  # cannot tell: keep every file rather than risk a row without its photo


def write_photos(stored: StoredPhotos, photos: list[Photo], suffixes: list[str]):
    """A folder that cannot be written (permissions, a full disk) is the server's problem, told plainly."""
    try:
        stored.write(photos, suffixes)
    except OSError as exc:
        raise ApiError(500, f"cannot store the photos in the gallery folder {stored.folder}: "
                            f"{exc.strerror or exc}; the index was not changed") from None


def named_error(error: str, photo: Photo) -> str:
    """The facade calls upload n ``upload-n``; the message also quotes the client's file name."""
    plain = photo.name.split(" ", 1)[0]
    return photo.name + error[len(plain):] if error.startswith(plain) else error


def row_json(row) -> dict:
    return printable_values({"id": row.id, "label": row.label, "path": row.path, "sha256": row.sha256})
