"""``shitu query`` wall time from process start to answer, and the per-query cost in a loaded ``Index``.

The index holds 10 000 images by default, built from synthetic unit vectors (``Index.build_vectors``),
so nothing needs embedding; the index type is what ``auto`` picks
for that size. Two groups of peers, each interleaved:

* new process: ``python -c pass`` (the interpreter), ``python -c 'import ...'`` (the libraries a query
  loads) and ``python cli.py query PHOTO --json`` (everything: imports, model, index, answer);
* loaded ``Index``: ``query([photo])`` repeated, against its parts: ``Embedder.preprocess``
  (decode and resize), ``embed_arrays`` at batch 1 (the model) and the FAISS search; then, timed on
  its own, ``Index(...).refresh()`` itself (model and index loading).

Why: a command-line query pays start-up on every call, a service pays it once; the difference says
which of the two a deployment needs, and the breakdown says what to make faster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, interleave, parse, parser, report, show, spread  # noqa: E402

DEFAULT_PHOTO = REPO / "tests" / "synthetic" / "queries" / "Café Crema__1.jpg"
LIBRARIES = "import numpy, onnxruntime, faiss, sqlite_utils, typer, rich, PIL.Image"


def synthetic_index(directory: Path, embedder, count: int, labels: int) -> str:
    """Write an index of ``count`` random unit vectors in ``labels`` labels; returns its FAISS type."""
    from shitu.gallery import GalleryItem
    from shitu.index import Index

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, embedder.info.embedding_size), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [GalleryItem(Path(f"product {n % labels:05d}/{n:06d}.jpg"), f"product {n % labels:05d}/{n:06d}.jpg",
                         f"product {n % labels:05d}") for n in range(count)]
    return Index(directory, embedder=embedder).build_vectors(items, vectors, "auto", "synthetic").index_type


def process_peers(photo: Path, index: Path, model: Path) -> dict:
    """Commands timed from spawn to exit; the query is checked once to answer before it is timed."""
    query = [sys.executable, str(REPO / "cli.py"), "query", str(photo), "--index", str(index), "--model",
             str(model), "--json"]
    answer = subprocess.run(query, cwd=REPO, capture_output=True, text=True)
    if answer.returncode != 0 or not json.loads(answer.stdout)[0]["results"]:
        sys.exit(f"shitu query failed: {answer.stderr.strip()}")
    commands = {"python -c pass": [sys.executable, "-c", "pass"],
                "python -c 'import libraries'": [sys.executable, "-c", LIBRARIES],
                "python cli.py query": query}
    return {name: lambda command=command: subprocess.run(command, cwd=REPO, capture_output=True, check=True)
            for name, command in commands.items()}


def loaded_peers(photo: Path, index: Path, model: Path, threads: int | None) -> dict:
    """Calls on a loaded Index, and its parts."""
    from shitu.index import Index

    recognizer = Index(index, model, threads=threads)
    recognizer.refresh()  # load the model and read the index before anything is timed
    embedder = recognizer.embedder
    single = embedder.preprocess(photo)[None]
    vector = embedder.embed_arrays(single)
    # The peer names are those of earlier runs' JSON (when the API was called Recognizer), kept comparable.
    return {"Recognizer.query([photo])": lambda: recognizer.query([photo]),
            "Embedder.preprocess(photo)": lambda: embedder.preprocess(photo),
            "embed_arrays, batch 1": lambda: embedder.embed_arrays(single),
            "FAISS search, top 5": lambda: recognizer.snapshot.search(vector, 5)}


def loading_peer(index: Path, model: Path, threads: int | None) -> dict:
    """Loading an Index (model and snapshot), timed apart from the per-query peers: every new onnxruntime
    session starts threads of its own, which would otherwise compete with the queries being timed."""
    from shitu.index import Index

    return {"Recognizer(index, model)": lambda: Index(index, model, threads=threads).refresh()}


def main(argv=None):
    args = parser("query_startup", __doc__)
    args.add_argument("--model", type=Path, help="shitu ONNX model (default: the shipped one)")
    args.add_argument("--photo", type=Path, default=DEFAULT_PHOTO, help="the query photo")
    args.add_argument("--count", type=int, default=10_000, help="images in the synthetic index")
    args.add_argument("--labels", type=int, default=1_000, help="labels in the synthetic index")
    args.add_argument("--rounds", type=int, default=10, help="timed runs per new-process peer")
    args.add_argument("--loaded-rounds", type=int, default=50, help="timed calls per loaded peer")
    args.add_argument("--threads", type=int, help="onnxruntime threads of the loaded Index "
                      "(default: all cores, as the CLI)")
    args = parse(args, argv, quick={"count": 200, "labels": 20, "rounds": 1, "loaded_rounds": 2})

    from shitu.embed import Embedder

    embedder = Embedder(args.model, args.threads)
    model = embedder.path
    with tempfile.TemporaryDirectory(prefix="shitu-bench-query-") as tmp:
        index = Path(tmp, "index")
        factory = synthetic_index(index, embedder, args.count, args.labels)
        started = interleave(process_peers(args.photo, index, model), args.rounds, warmup=1)
        loaded = interleave(loaded_peers(args.photo, index, model, args.threads), args.loaded_rounds, warmup=2)
        loaded.update(interleave(loading_peer(index, model, args.threads), args.rounds, warmup=1))

    started = {name: spread(samples) for name, samples in started.items()}
    loaded = {name: spread(samples) for name, samples in loaded.items()}
    model_ms = loaded["embed_arrays, batch 1"]["median"]
    tables = [("New process: spawn to exit", ["command", "ms"],
               [[name, show(stats, 1e3)] for name, stats in started.items()]),
              ("Loaded Index", ["call", "ms", "x model batch-1"],
               [[name, show(stats, 1e3, 2), f"{stats['median'] / model_ms:.2f}"] for name, stats in loaded.items()])]
    notes = [f"index: {args.count} synthetic images, {args.labels} labels, FAISS {factory}; "
             f"model {embedder.info.describe()} at {embedder.info.input_size} px",
             "ms: median (min-max) over the timed runs; the process runs start a new interpreter each time "
             "(the OS file cache stays warm)"]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report("query_startup", args.json, "shitu query: start-up against per-query cost", tables,
           {"settings": settings, "index_type": factory, "model": embedder.info.describe(),
            "new_process_seconds": started, "loaded_seconds": loaded}, notes)


if __name__ == "__main__":
    main()
