"""FAISS index types on synthetic gallery-like vectors: build time, memory, query latency, recall@1.

Data: normalised 512-d vectors from a Gaussian mixture, about ``--per-cluster`` vectors around each
class centre (like a gallery's few photos per product), generated in chunks of 100 000 so a million
vectors never exist twice in memory. Queries are fresh draws from the same mixture (new photos of the
same products). Uniform noise would make every neighbour nearly equidistant and recall meaningless.

Two shapes of mixture (``--shape``):

* ``gallery``: shaped like real embeddings. The photos of ``--like`` (default: the shared grocery
  ``train`` photos) are embedded with the shipped model; class centres are then drawn from a Gaussian
  with the mean and covariance of the real class means, and photos around them with the real
  within-class covariance. Real embeddings are far from isotropic (the shipped model puts most of
  their variance in a few directions), which is what makes graph and cluster indexes work.
* ``isotropic``: random unit centres and isotropic noise, the worst case for every approximate index.

Peers per size (1e4, 1e5, 1e6 by default), all inner-product indexes as ``shitu.index.vectors`` builds them:
exact ``Flat``; ``HNSW32`` at efSearch 16/32/64/128; ``IVF<nlist>,Flat`` with nlist = 4 sqrt(n) at
nprobe 8/16/32; and ``IVF<nlist>,PQ64`` (64 bytes a vector; ``--pq``) at the sizes from ``--pq-from`` (1e6).
Latency is per query at batch 1, peers interleaved query by query, so its spread is the spread over
queries; recall@1 is the share of queries whose top hit is the exact search's top hit. Build time is
measured once (train plus add, not data generation). Memory is ``len(faiss.serialize_index(...))``.

Why: ``shitu build-index --index-type auto`` switches from Flat to HNSW32 at 20 000 images, and the
manifest sets efSearch 64 and nprobe 16; this shows what those choices cost and buy at each size.
Expect the full run to take a long time at 1e6 (HNSW and IVF builds); ``--sizes`` limits it.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, interleave, parse, parser, report, show, spread  # noqa: E402

DIMENSION = 512
GROCERY = REPO.parent / "shared" / "data" / "grocery" / "train"
CHUNK = 100_000
SPREAD = 0.9  # isotropic noise norm relative to the centre: cosine to it ~0.74, within a cluster ~0.55
TRAIN_PER_LIST = 50  # IVF training vectors per list (FAISS asks for at least 39)


@dataclass
class Shape:
    """Where class centres lie and how photos spread around them.

    Centres are ``mean + z @ between``, photos ``centre + z @ within`` (z standard normal), then
    normalised; ``unit_centres`` normalises the centres first (the isotropic case).
    """

    name: str
    mean: np.ndarray
    between: np.ndarray  # (k, DIMENSION): covariance square root, one row per direction
    within: np.ndarray  # (m, DIMENSION)
    unit_centres: bool = False


def isotropic_shape() -> Shape:
    identity = np.eye(DIMENSION, dtype=np.float32)
    return Shape("isotropic", np.zeros(DIMENSION, np.float32), identity,
                 identity * (SPREAD / math.sqrt(DIMENSION)), unit_centres=True)


def gallery_shape(folder: Path, model: Path | None) -> Shape:
    """The between-class and within-class covariances of real photos' embeddings.

    A class is the folder a photo is in (for the grocery photos, the finest class: Fruit/Apple/...).
    """
    from shitu.embed import Embedder
    from shitu.gallery import read_gallery

    items = read_gallery(folder)
    vectors = np.concatenate([v for _, v in Embedder(model).embed_files([i.path for i in items])])
    names = sorted({i.path.parent for i in items})
    labels = np.array([names.index(i.path.parent) for i in items])
    means = np.stack([vectors[labels == c].mean(axis=0) for c in range(len(names))])
    residuals = vectors - means[labels]
    between = np.cov(means, rowvar=False)
    within = residuals.T @ residuals / max(1, len(vectors) - len(names))
    print(f"gallery shape from {len(vectors)} photos of {len(names)} products in {folder}", file=sys.stderr)
    return Shape(f"gallery ({folder.name}, {len(names)} products)", means.mean(axis=0).astype(np.float32),
                 square_root(between), square_root(within))


def square_root(covariance: np.ndarray) -> np.ndarray:
    """Rows r with sum of outer(r, r) = covariance (its non-negligible eigen-directions only)."""
    values, vectors = np.linalg.eigh(covariance.astype(np.float64))
    keep = values > values.max() * 1e-9
    return (vectors[:, keep] * np.sqrt(values[keep])).T.astype(np.float32)


@dataclass
class Mixture:
    """A deterministic Gaussian mixture of a given shape, normalised, drawn in chunks."""

    size: int
    per_cluster: int
    shape: Shape
    seed: int = 0
    centres: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        clusters = max(1, self.size // self.per_cluster)
        rng = np.random.default_rng([self.seed, 0])
        z = rng.standard_normal((clusters, len(self.shape.between)), dtype=np.float32)
        self.centres = self.shape.mean + z @ self.shape.between
        if self.shape.unit_centres:
            self.centres = unit(self.centres)

    def draw(self, count: int, stream: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, stream])
        picks = rng.integers(0, len(self.centres), count)
        noise = rng.standard_normal((count, len(self.shape.within)), dtype=np.float32) @ self.shape.within
        return unit(self.centres[picks] + noise)

    def chunks(self):
        """The database, ``CHUNK`` vectors at a time, the same on every pass."""
        for number, start in enumerate(range(0, self.size, CHUNK)):
            yield self.draw(min(CHUNK, self.size - start), 1 + number)

    def queries(self, count: int) -> np.ndarray:
        return self.draw(count, 0)


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def factories(size: int, pq_from: float, pq: str) -> dict[str, list]:
    """FAISS factory string -> the search parameters to try with it."""
    import faiss

    nlist = max(1, round(4 * math.sqrt(size)))
    ivf = [faiss.SearchParametersIVF(nprobe=n) for n in (8, 16, 32)]
    chosen = {"Flat": [None], "HNSW32": [faiss.SearchParametersHNSW(efSearch=e) for e in (16, 32, 64, 128)],
              f"IVF{nlist},Flat": ivf}
    if size >= pq_from:
        chosen[f"IVF{nlist},{pq}"] = ivf
    return chosen


def label(params) -> str:
    if params is None:
        return "exact"
    return f"efSearch {params.efSearch}" if hasattr(params, "efSearch") else f"nprobe {params.nprobe}"


def build(factory: str, data: Mixture) -> tuple[object, float]:
    """An index of the whole mixture and the seconds spent training and adding (not generating)."""
    import faiss

    index = faiss.index_factory(DIMENSION, factory, faiss.METRIC_INNER_PRODUCT)
    seconds = 0.0
    if not index.is_trained:
        lists = faiss.extract_index_ivf(index).nlist
        sample = data.draw(min(data.size, TRAIN_PER_LIST * lists), 10_000)
        started = time.perf_counter()
        index.train(sample)
        seconds += time.perf_counter() - started
    for chunk in data.chunks():
        started = time.perf_counter()
        index.add(chunk)
        seconds += time.perf_counter() - started
    return index, seconds


def measure_size(size: int, shape: Shape, args) -> list[dict]:
    """Build every index for one size, then time and score them against exact search."""
    import faiss

    data = Mixture(size, args.per_cluster, shape)
    queries = data.queries(args.queries)
    indexes, results = {}, []
    for factory in factories(size, args.pq_from, args.pq):
        indexes[factory], seconds = build(factory, data)
        memory = len(faiss.serialize_index(indexes[factory]))
        results.append({"factory": factory, "build_seconds": seconds, "bytes": memory})
        print(f"built {factory} over {size} vectors in {seconds:.1f} s", file=sys.stderr)
    truth = indexes["Flat"].search(queries, 1)[1][:, 0]
    peers, rows = {}, []
    for built in results:
        for params in factories(size, args.pq_from, args.pq)[built["factory"]]:
            name = f"{built['factory']} {label(params)}"
            found = indexes[built["factory"]].search(queries, 1, params=params)[1][:, 0]
            rows.append({**built, "size": size, "shape": shape.name, "search": label(params), "name": name,
                         "recall_at_1": float(np.mean(found == truth))})
            peers[name] = one_query_at_a_time(indexes[built["factory"]], queries, params)
    samples = interleave(peers, len(queries) - 1, warmup=1)
    for row in rows:
        row["seconds_per_query"] = spread(samples[row["name"]])
    del indexes
    gc.collect()
    return rows


def one_query_at_a_time(index, queries: np.ndarray, params):
    """A call that searches the next query alone (batch 1), cycling through ``queries``."""
    position = iter(range(10**9))

    def call():
        n = next(position) % len(queries)
        index.search(queries[n:n + 1], 5, params=params)
    return call


def table_row(row: dict) -> list:
    return [f"{row['size']:,}", row["factory"], row["search"], f"{row['build_seconds']:.1f}",
            f"{row['bytes'] / 1e6:.1f}", f"{row['bytes'] / row['size']:.0f}",
            show(row["seconds_per_query"], 1e6, 0), f"{row['recall_at_1']:.3f}"]


def main(argv=None):
    args = parser("search", __doc__)
    args.add_argument("--sizes", default="1e4,1e5,1e6", help="comma-separated database sizes")
    args.add_argument("--queries", type=int, default=200, help="query vectors (latency samples per peer)")
    args.add_argument("--per-cluster", type=int, default=10, help="mean vectors per mixture component")
    args.add_argument("--shape", choices=["gallery", "isotropic"], default="gallery",
                      help="mixture shaped like real embeddings of --like, or isotropic (worst case)")
    args.add_argument("--like", type=Path, default=GROCERY, help="gallery whose embeddings shape the "
                      "mixture (default: %(default)s)")
    args.add_argument("--model", type=Path, help="model that embeds --like (default: the shipped one)")
    args.add_argument("--pq-from", type=float, default=1e6, help="smallest size that also gets IVF-PQ")
    args.add_argument("--pq", default="PQ64", help="FAISS PQ string for the IVF-PQ index (PQ64: 64 bytes "
                      "a vector)")
    args.add_argument("--threads", type=int, help="FAISS OpenMP threads (default: FAISS's own, all cores)")
    args = parse(args, argv, quick={"sizes": "1e3", "queries": 20, "pq_from": 0, "pq": "PQ8x4",
                                         "threads": 1, "like": REPO / "tests" / "synthetic" / "demo"})
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.shape == "gallery" and not args.like.is_dir():
        print(f"note: {args.like} not found; using the isotropic mixture", file=sys.stderr)
        args.shape = "isotropic"
    shape = gallery_shape(args.like, args.model) if args.shape == "gallery" else isotropic_shape()
    rows = []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        rows += measure_size(size, shape, args)
    columns = ["vectors", "index", "search", "build s", "MB", "bytes/vector", "µs/query", "recall@1"]
    notes = [f"{DIMENSION}-d unit vectors, mixture shape: {shape.name}, about {args.per_cluster} per component; "
             f"{args.queries} queries, top 5 at batch 1; FAISS {faiss.__version__}, "
             f"{faiss.omp_get_max_threads()} OpenMP threads",
             "µs/query: median (min-max) over the queries; build time measured once",
             "recall@1: share of queries whose first hit is the exact first hit"]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report("search", args.json, "FAISS index types: build, memory, latency, recall",
           [("", columns, [table_row(row) for row in rows])], {"settings": settings, "results": rows}, notes)


if __name__ == "__main__":
    main()
