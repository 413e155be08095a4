"""``Index``: the one object every caller (the CLI, the benches, a service) uses to work with an index.

It resolves the model once (an explicit one, else the one the index was built with, else the shipped
one), opens the onnxruntime session only when something needs embedding, and answers reads from a
``Snapshot`` that it reads again as soon as a writer has committed, so every answer comes from one whole,
recent state. Every user mistake is a ``ShituError`` with a one-line message.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np

from shitu.embed import Embedder, default_model_path, file_sha256, resolve_model
from shitu.errors import ShituError
from shitu.gallery import GalleryItem, normalise_label
from shitu.imageio import Upload
from shitu.index.answers import Answer, Match, lone_queries_message, matches_of, ranked_labels
from shitu.index.build import BuildReport, build_from_vectors, build_index
from shitu.index.calibration import calibrated_threshold, calibration_record, store_calibration
from shitu.index.edit import AddReport, RemoveReport, add_images, check_add_request, remove_images
from shitu.index.findings import CheckReport
from shitu.index.folder import FolderStorage
from shitu.index.milvus_url import is_milvus_url
from shitu.index.milvus_storage import MilvusStorage  # open_storage builds it
from shitu.index.snapshot import Snapshot
from shitu.index.storage import Row, Storage
from shitu.metrics import evaluate, needed_depth, parse_metric
from shitu.progress import SILENT, Reporter

UPLOAD_TYPES = (bytes, bytearray, memoryview)


class Index:
    """An index folder and the model that reads and writes it."""

    def __init__(self, directory: str | Path = "index", model: str | Path | None = None,
                 reporter: Reporter = SILENT, threads: int | None = None, *, embedder: Embedder | None = None,
                 store: str | None = None):
        """``embedder``: an Embedder already open (a bench building many indexes with one model); it
        then decides the model. ``store``: a Milvus gallery (``milvus://HOST:PORT/COLLECTION`` or
        ``milvus-lite:PATH.db[/COLLECTION]``) or an index folder, instead of ``directory``; a Milvus
        store's ``directory`` is its URL (a string)."""
        self.storage: Storage = open_storage(directory if store is None else store)
        self.directory = self.storage.directory
        self.model_given = bool(model) or embedder is not None
        self.model_path = embedder.path if embedder is not None else model_for_index(self.storage, model)
        self.reporter, self.threads = reporter, threads
        self._embedder = embedder
        self.snapshot = None  # the snapshot the last read answered from
        self._checked = False  # whether that snapshot's manifest was checked against the model

    # -- the model and the snapshot ------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        """The onnxruntime session, opened on first use."""
        if self._embedder is None:
            self._embedder = Embedder(self.model_path, self.threads)
        return self._embedder

    def read(self, checked: bool = False, with_vectors: bool = False) -> Snapshot:
        """The latest committed snapshot (read again only when a writer committed since); ``checked``:
        refused unless built by this index's model, as everything that embeds needs."""
        stale = self.snapshot is None or not self.snapshot.is_current() or (checked and not self._checked)
        if stale or with_vectors and self.snapshot.vectors is None:
            model = self.embedder.info if checked else None
            self.snapshot = self.storage.read(model, with_vectors=with_vectors)
            self._checked = checked
        return self.snapshot

    def refresh(self) -> Snapshot:
        """The current snapshot, checked against the model."""
        return self.read(checked=True)

    def matches(self, vectors: np.ndarray, topk: int) -> list[list[Match]]:
        """Ranked matches of each embedding in the current snapshot."""
        return matches_of(self.refresh(), vectors, topk)

    @property
    def threshold(self) -> float | None:
        """The threshold ``shitu calibrate`` stored, or None; read afresh each time (one small query), as
        calibrating changes no vectors and so starts no new snapshot."""
        return calibrated_threshold(self.storage)

    # -- writing -------------------------------------------------------------------------------------
    def build(self, items: list[GalleryItem], index_type: str = "auto",
              gallery_root: str | Path | None = None) -> BuildReport:
        """(Re)build the index from ``items``, reusing the vectors of unchanged files; ``gallery_root``
        (default: the folder the items' paths are relative to) is where ``add`` and ``image_file`` look."""
        root = gallery_root if gallery_root is not None else common_root(items)
        return build_index(items, self.storage, self.embedder, index_type,
                           str(Path(root).resolve()) if root else "", self.reporter)

    def build_vectors(self, items: list[GalleryItem], vectors: np.ndarray, index_type: str = "auto",
                      gallery_root: str = "") -> BuildReport:
        """A fresh index of vectors made elsewhere (a synthetic bench gallery): nothing is embedded,
        the model only names whose vectors they are. Rows get new ids in the order of ``items``."""
        return build_from_vectors(items, vectors, self.storage, self.embedder.info, self.embedder.path,
                                  index_type, gallery_root)

    def add(self, paths: list[str | Path], label: str | None = None) -> AddReport:
        """Add new images and replace changed ones (the rules of ``shitu add``)."""
        check_add_request(paths, label)  # before the model is loaded
        return add_images(paths, self.storage, self.embedder, label, self.reporter)

    def remove(self, labels: list[str] = (), paths: list[str] = (), ids: list[int] = ()) -> RemoveReport:
        """Remove images by label, by path and by row id; any selector that matches nothing changes
        nothing."""
        return remove_images(self.storage, list(labels), list(paths), [row_id(i) for i in ids])

    def check(self, repair: bool = False) -> CheckReport:
        """Every way the index can be wrong; with ``repair``, fixed where the stored vectors allow.
        Without a model given, the index's own is compared with, or none when it is not found (noted): the
        shipped model would report a sound index built with another model as broken."""
        model = self.model_path if self.model_given else own_model(self.storage)
        return self.storage.check(model, repair)

    # -- reading -------------------------------------------------------------------------------------
    def info(self) -> dict:
        """What ``shitu info --json`` prints: contents, model, files and calibration."""
        return self.storage.info()

    def labels(self) -> dict[str, int]:
        """Images per label, sorted by label."""
        return dict(sorted(Counter(row.label for row in self.read().rows.values()).items()))

    def images(self, label: str | None = None, offset: int = 0, limit: int = 100) -> list[Row]:
        """Rows in id order, of one label or all; an unknown label has none."""
        offset, limit = count_argument("offset", offset), count_argument("limit", limit)
        wanted = None if label is None else normalise_label(label)
        rows = self.read().rows
        chosen = [rows[i] for i in sorted(rows) if wanted is None or rows[i].label == wanted]
        return chosen[offset:offset + limit]

    def image(self, id: int) -> Row:
        """The row of one id."""
        row = self.read().rows.get(row_id(id))
        if row is None:
            raise ShituError(f"index {self.directory} holds no image with id {id}")
        return row

    def image_file(self, id: int) -> Path:
        """The photo of a row on disk: its stored path under the gallery root."""
        row = self.image(id)
        root = self.snapshot.manifest.gallery_root
        if not root:
            raise ShituError(f"index {self.directory} records no gallery folder; rebuild it with "
                             f"'shitu build-index GALLERY --index {self.directory}'")
        path = Path(os.path.normpath(Path(root) / row.path))
        if Path(root) not in path.parents or not path.is_file():
            raise ShituError(f"the photo of image {row.id} is no longer at {path}")
        return path

    def query(self, images: list, topk: int = 5, threshold: float | None = None) -> list[Answer]:
        """Answer each photo (a path, or the bytes of an upload, named ``upload-<n>``, n counting the
        images from 1); one that cannot be read gets an ``error`` and no results, never an exception.

        Inputs stream in bounded batches, so memory does not grow with their number; a path may be a
        pipe. Without ``threshold`` the calibrated one applies, if any; -1 answers every query.
        """
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ShituError(f"topk must be a whole number of at least 1, got {topk!r}")
        if threshold is not None and not math.isfinite(threshold):
            raise ShituError(f"threshold must be a finite number, got {threshold}")
        self.refresh()  # no index, or another model's: one error before any photo is read
        sources = [Upload(f"upload-{n + 1}", bytes(image)) if isinstance(image, UPLOAD_TYPES) else image
                   for n, image in enumerate(images)]
        answers = [Answer(str(source), None) for source in sources]
        limit = self.threshold if threshold is None else threshold

        def bad(position, reason):
            answers[position].error = reason

        for positions, vectors in self.embedder.embed_files(sources, on_bad=bad, regular_only=False):
            for position, found in zip(positions, self.matches(vectors, topk)):
                answers[position].results = found
                best = found[0] if found else None
                if best is not None and (limit is None or best.score >= limit):
                    answers[position].label = best.label
        return answers

    def evaluate(self, metrics: list[str], queries: list[GalleryItem] | None = None,
                 reporter: Reporter | None = None) -> dict:
        """Metrics for query images, or leave-one-out over the gallery when ``queries`` is None."""
        reporter = reporter or self.reporter
        metrics = [parse_metric(m) for m in metrics] or ["recall@1"]
        leave_one_out = queries is None
        snapshot = self.read(checked=True, with_vectors=leave_one_out)
        if not snapshot.rows:
            raise ShituError(f"index {self.directory} holds no images: nothing to evaluate")
        labels = {row_id: normalise_label(row.label) for row_id, row in snapshot.rows.items()}
        gallery_labels = list(labels.values())
        depth = needed_depth(metrics, gallery_labels, leave_one_out=leave_one_out)
        if leave_one_out:
            truth = [labels[i] for i in snapshot.ids.tolist()]
            ranked = ranked_labels(snapshot, snapshot.vectors, depth, labels, exclude=snapshot.ids)
        else:
            vectors, truth = self.embed_queries(queries, reporter)
            ranked = ranked_labels(snapshot, vectors, depth, labels)
        result = evaluate(ranked, truth, gallery_labels, metrics, leave_one_out=leave_one_out)
        result["gallery"] = len(labels)
        if result["lone_queries"]:
            reporter.warn(lone_queries_message(truth, gallery_labels, leave_one_out))
        return result

    def embed_queries(self, queries: list[GalleryItem], reporter: Reporter) -> tuple[np.ndarray, list[str]]:
        vectors, truth = [], []

        def bad(_, reason):
            reporter.warn(f"skipped {reason}")

        with reporter.progress(len(queries), "embedding queries") as bar:
            for positions, batch in self.embedder.embed_files([q.path for q in queries], on_bad=bad,
                                                              on_done=lambda n: bar.advance()):
                vectors.append(batch)
                truth += [queries[p].label for p in positions]
        if not truth:
            raise ShituError("none of the query images could be read")
        return np.concatenate(vectors), truth

    def evaluate_open_set(self, queries: list[GalleryItem], metrics: list[str] = ("recall@1",),
                          unknown: list[GalleryItem] | None = None, target_unknown_rejection: float | None = None,
                          report: str | Path | None = None):
        """Known queries (and with ``unknown``, photos of products not in the gallery) searched once:
        metrics, the open-set curve and the threshold the rule picks; with ``report``, also the HTML
        report written there. Returns a ``shitu.scoring.Evaluation``."""
        from shitu.openset import check_target
        from shitu.report import require_file_name, write_report
        from shitu.scoring import REPORT_DEPTH, evaluate_queries

        check_target(target_unknown_rejection)
        if report is not None:
            require_file_name(Path(report))
        metrics = list(dict.fromkeys(parse_metric(m) for m in metrics))
        evaluation = evaluate_queries(self, queries, metrics, unknown, target_unknown_rejection,
                                      REPORT_DEPTH if report else 1, self.reporter)
        if report is not None:
            write_report(Path(report), evaluation, self)
        return evaluation

    def calibrate(self, queries: list[GalleryItem], unknown: list[GalleryItem],
                  target_unknown_rejection: float | None = None) -> dict:
        """Choose a threshold on known and unknown photos and store it with the index, where every
        later query finds it; returns the stored record."""
        evaluation = self.evaluate_open_set(queries, ["recall@1"], unknown, target_unknown_rejection)
        record = calibration_record(evaluation, target_unknown_rejection, self.snapshot.manifest)
        store_calibration(self.storage, record)
        return record


def open_storage(where: str | Path) -> Storage:
    """A Milvus gallery for a ``milvus://`` or ``milvus-lite:`` URL, else the index folder ``where``."""
    if is_milvus_url(where):
        return MilvusStorage(where)
    return FolderStorage(Path(where))


def model_for_index(storage: Storage, model: str | Path | None) -> Path:
    """The model a command uses: ``model`` when given, else the file the index was built with if it is
    still there, else the shipped model.

    So an index built with the int8 or a custom model is queried with that model without ``--model``;
    its sha256 is still checked against the manifest when the index opens.
    """
    if model:
        return resolve_model(model)
    return recorded_model(storage) or default_model_path()


def own_model(storage: Storage) -> Path | None:
    """The model file that built the index: the one its manifest names if it is still there, else the
    shipped model if that is the one (an index moved to another install), else None."""
    recorded = recorded_model(storage)
    if recorded is not None:
        return recorded
    shipped, built_by = default_model_path(), manifest_entry(storage, "model_sha256")
    return shipped if built_by and shipped.is_file() and file_sha256(shipped) == built_by else None


def recorded_model(storage: Storage) -> Path | None:
    """The model file the index was built with, if the manifest names one and it is still there."""
    remembered = manifest_entry(storage, "model_path")
    if isinstance(remembered, str) and remembered and Path(remembered).is_file():
        return Path(remembered)
    return None


def manifest_entry(storage: Storage, key: str):
    """One manifest entry, or None where the index is damaged (``check`` reports that itself)."""
    try:
        return storage.manifest_value(key)
    except ShituError:
        return None


def common_root(items: list[GalleryItem]) -> Path | None:
    """The folder the items' stored paths are relative to (that of the first item)."""
    if not items:
        return None
    first = items[0]
    depth = len(PurePosixPath(first.relpath).parts)
    return Path(first.path).parents[depth - 1] if depth else None


def row_id(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ShituError(f"an image id is a whole number, not {value!r}")
    return int(value)


def count_argument(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ShituError(f"{name} must be a whole number of at least 0, got {value!r}")
    return int(value)
