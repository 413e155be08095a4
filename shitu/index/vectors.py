"""The FAISS side of a folder index: make, fill, change, tune, search, read and write ``vectors.N.faiss``.

Every index is ``IDMap2,<factory>`` with inner-product search, so FAISS answers with row ids directly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from shitu.errors import ShituError
from shitu.index.files import discard, faiss_name, fsync_path, write_failed
from shitu.index.manifest import Manifest

# bench/search.py on 2 cores: exact search costs 1.6 ms a query at 1e4 vectors and 16 ms at 1e5 (linear),
# HNSW32 0.3-1 ms. Up to 20 000 images exact search stays near 3 ms, under the network's 5-8 ms, and
# is never wrong; beyond, it grows past the network's cost.
AUTO_FLAT_LIMIT = 20_000
FEW_QUERIES = 16  # below this many query vectors, FAISS searches on one thread


def faiss_module():
    import faiss

    return faiss


def resolve_index_type(index_type: str, count: int) -> str:
    """``auto`` becomes exact search for small galleries and HNSW beyond ``AUTO_FLAT_LIMIT``."""
    if index_type == "auto":
        return "Flat" if count < AUTO_FLAT_LIMIT else "HNSW32"
    return index_type


def make_faiss_index(factory: str, dimension: int, vectors: np.ndarray, ids: np.ndarray):
    """A trained ``IDMap2,<factory>`` inner-product index holding ``vectors`` under ``ids``."""
    faiss = faiss_module()
    try:
        index = faiss.index_factory(dimension, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError:
        raise ShituError(f"bad --index-type {factory!r}: not a FAISS factory string "
                         f"(try Flat, HNSW32, IVF256,Flat or auto)") from None
    if not index.is_trained:
        if len(vectors) == 0:
            raise ShituError(f"index type {factory} must be trained, but the gallery is empty")
        try:
            index.train(vectors)
        except RuntimeError as exc:
            raise ShituError(f"cannot train index type {factory} on {len(vectors)} vectors: "
                             f"{str(exc).splitlines()[0]}; use fewer lists or --index-type auto") from None
    if len(vectors):
        add_vectors(index, vectors, ids, factory)
    return index


def add_vectors(index, vectors: np.ndarray, ids: np.ndarray, factory: str):
    """``add_with_ids``, with FAISS's refusal (a factory string of its own id map) as one line."""
    try:
        index.add_with_ids(vectors, ids)
    except RuntimeError as exc:
        raise ShituError(f"index type {factory!r} cannot hold shitu's ids ({faiss_reason(exc)}); "
                         f"use Flat, HNSW32, IVF256,Flat or auto (shitu adds the id map itself)") from None


def deletes_in_place(index) -> bool:
    """Only flat storage deletes correctly: ``IndexIDMap2.remove_ids`` compacts its id map and relies on
    the inner index renumbering what stays, which flat codes do, IVF lists do not (their entries would
    then point at the wrong ids) and HNSW cannot delete at all."""
    faiss = faiss_module()
    return isinstance(faiss.downcast_index(index.index), faiss.IndexFlatCodes)


def ids_of(index) -> np.ndarray:
    """The ids an id-mapped index holds, in its own order."""
    return faiss_module().vector_to_array(index.id_map)


def tune_search(index, manifest: Manifest):
    """Apply the manifest's query-time knobs (HNSW efSearch, IVF nprobe)."""
    faiss = faiss_module()
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = manifest.ef_search
    if hasattr(inner, "nprobe"):
        inner.nprobe = manifest.nprobe


def search(index, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) per query vector; missing neighbours have id -1.

    A few queries run on one OpenMP thread: measured on 2 cores against a 10 000-image Flat index,
    FAISS's threads made one query take 23 ms (median) instead of 1.2 ms, waiting for each other and
    for onnxruntime's spinning threads (bench/query_startup.py).
    """
    k = max(1, min(k, index.ntotal))
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) >= FEW_QUERIES:
        return index.search(vectors, k)
    faiss = faiss_module()
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(vectors, k)
    finally:
        faiss.omp_set_num_threads(threads)


def read_faiss_file(directory: Path, name: str):
    """A FAISS file as stored, unchecked (``check`` reports what is wrong with it)."""
    path = directory / name
    if not path.is_file():
        raise ShituError(f"index {directory} is damaged: {path.name} is missing "
                         f"(run 'shitu check --repair --index {directory}')")
    try:
        return faiss_module().read_index(str(path))
    except RuntimeError:
        raise ShituError(f"index {directory} is damaged: {path.name} cannot be read "
                         f"(run 'shitu check --repair --index {directory}')") from None


def load_faiss(directory: Path, manifest: Manifest):
    """The manifest's FAISS file, refused unless it is the id-mapped index of the right dimension that
    shitu writes: any other would answer with the wrong rows or crash inside FAISS."""
    index = read_faiss_file(directory, manifest.faiss_file)
    wrong = None
    if not isinstance(index, faiss_module().IndexIDMap2):
        wrong = "is not an id-mapped index"
    elif index.d != manifest.embedding_size:
        wrong = f"holds {index.d}-d vectors, the model makes {manifest.embedding_size}-d ones"
    if wrong:
        raise ShituError(f"index {directory} is damaged: {manifest.faiss_file} {wrong} (run 'shitu check "
                         f"--repair --index {directory}')")
    tune_search(index, manifest)
    return index


def write_faiss_file(directory: Path, index, generation: int) -> str:
    """Write ``vectors.<generation>.faiss`` durably (temp file, fsync, rename, fsync folder); a failed
    write leaves no temp file behind.

    The bytes go through a Python file: FAISS's own writer only prints a failed final flush (a full
    disk) and returns, which would leave a truncated file to be committed.
    """
    faiss = faiss_module()
    name = faiss_name(generation)
    tmp = directory / f".{name}.tmp"
    try:
        with open(tmp, "wb") as handle:
            faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))
        fsync_path(tmp)
        os.replace(tmp, directory / name)
    except RuntimeError as exc:  # FAISS reports a failed write (a full disk) this way
        discard(tmp)
        raise write_failed(directory, tmp, faiss_reason(exc)) from None
    except BaseException:
        discard(tmp)
        raise
    fsync_path(directory)
    return name


def faiss_reason(exc: RuntimeError) -> str:
    """The readable end of a FAISS error ("... failed: write error in F: 4014 != 36864 (No space ...)")."""
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown FAISS error"
    last = re.sub(r"^Error in .*? at \S+:\d+: ", "", last)  # FAISS's C++ signature and source line
    return last.rsplit("failed: ", 1)[-1]
