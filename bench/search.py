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

The Milvus Lite peer (``bench/milvus_peer.py``; on when ``milvus-lite`` and ``pymilvus`` are installed,
``--no-milvus-lite`` turns it off) builds the same vectors into Milvus Lite as shitu's Milvus store
does: FLAT up to ``--milvus-flat-up-to`` vectors and HNSW for each ``--milvus-hnsw`` M:efConstruction
(``--milvus-hnsw-large`` from ``--large-from`` vectors on), timed at each ``--milvus-ef``, interleaved
with the FAISS peers and scored against FAISS ``Flat``. ``--faiss`` limits the FAISS peers (Flat
always runs: it is the truth).

Why: ``shitu build-index --index-type auto`` switches from Flat to HNSW32 at 20 000 images, and the
manifest sets efSearch 64 and nprobe 16; this shows what those choices cost and buy at each size.
Expect the full run to take a long time at 1e6 (HNSW and IVF builds); ``--sizes`` limits it.
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, interleave, parse, parser, report, show, spread  # noqa: E402
from milvus_peer import LitePeer, configs, search_label  # noqa: E402

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


def factories(size: int, pq_from: float, pq: str, only: str | None = None) -> dict[str, list]:
    """FAISS factory string -> the search parameters to try with it."""
    import faiss

    nlist = max(1, round(4 * math.sqrt(size)))
    ivf = [faiss.SearchParametersIVF(nprobe=n) for n in (8, 16, 32)]
    chosen = {"Flat": [None], "HNSW32": [faiss.SearchParametersHNSW(efSearch=e) for e in (16, 32, 64, 128)],
              f"IVF{nlist},Flat": ivf}
    if size >= pq_from:
        chosen[f"IVF{nlist},{pq}"] = ivf
    return {name: params for name, params in chosen.items() if name == "Flat" or wanted(name, only)}


def wanted(factory: str, only: str | None) -> bool:
    """Whether ``--faiss`` (comma-separated factory prefixes: Flat,HNSW32,IVF) keeps this factory."""
    return only is None or any(factory.startswith(prefix) for prefix in only.split(","))


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
    chosen = factories(size, args.pq_from, args.pq, args.faiss)
    for factory in chosen:
        indexes[factory], seconds = build(factory, data)
        memory = len(faiss.serialize_index(indexes[factory]))
        results.append({"factory": factory, "build_seconds": seconds, "bytes": memory})
        print(f"built {factory} over {size} vectors in {seconds:.1f} s", file=sys.stderr)
    truth = indexes["Flat"].search(queries, 1)[1][:, 0]
    peers, rows = {}, []
    for built in results:
        for params in chosen[built["factory"]]:
            name = f"{built['factory']} {label(params)}"
            found = indexes[built["factory"]].search(queries, 1, params=params)[1][:, 0]
            rows.append({**built, "peer": "FAISS", "size": size, "shape": shape.name, "search": label(params),
                         "name": name, "recall_at_1": float(np.mean(found == truth))})
            peers[name] = one_query_at_a_time(indexes[built["factory"]], queries, params)
    lite = lite_peers(size, data, args) if args.milvus_lite else []
    try:
        for peer, built in lite:
            for params in peer.config.searches:
                name = f"{peer.config.name} {search_label(params)}"
                found = peer.top1(queries, params)
                rows.append({**built, "peer": "Milvus Lite", "factory": peer.config.name, "size": size,
                             "shape": shape.name, "search": search_label(params), "name": name,
                             "build_seconds": built["insert_seconds"] + built["index_seconds"],
                             "bytes": built["disk_bytes"], "recall_at_1": float(np.mean(found == truth))})
                peers[name] = peer.one_query_at_a_time(queries, params)
        samples = interleave(peers, len(queries) - 1, warmup=1)
    finally:
        for peer, _ in lite:
            peer.close()
    for row in rows:
        row["seconds_per_query"] = spread(samples[row["name"]])
    del indexes
    gc.collect()
    return rows


def lite_peers(size: int, data: Mixture, args) -> list[tuple[LitePeer, dict]]:
    """Every Milvus Lite configuration for this size, built and ready to search."""
    grid = args.milvus_hnsw_large if size >= args.large_from else args.milvus_hnsw
    hnsw = [tuple(int(x) for x in pair.split(":")) for pair in grid.split(",") if pair]
    efs = [int(e) for e in args.milvus_ef.split(",")]
    built = []
    try:
        for config in configs(size, hnsw, efs, args.milvus_flat_up_to):
            peer = LitePeer(config, DIMENSION)
            built.append((peer, None))
            built[-1] = (peer, peer.build(data))
            print(f"built {config.name} over {size} vectors: insert {built[-1][1]['insert_seconds']:.1f} s, "
                  f"index {built[-1][1]['index_seconds']:.1f} s", file=sys.stderr)
    except BaseException:
        for peer, _ in built:
            peer.close()
        raise
    return built


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


def lite_row(row: dict) -> list:
    return [f"{row['size']:,}", row["factory"], f"{row['rows_per_second']:,.0f}", f"{row['index_seconds']:.1f}",
            f"{row['disk_bytes'] / row['size']:.0f}", f"{row['index_bytes'] / row['size']:.0f}",
            f"{row['ram_bytes'] / row['size']:.0f}"]


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
    args.add_argument("--faiss", help="FAISS factories to build, comma-separated prefixes (Flat,HNSW32,IVF); "
                      "Flat always runs")
    args.add_argument("--no-milvus-lite", dest="milvus_lite", action="store_false",
                      help="leave out the Milvus Lite peer")
    args.add_argument("--milvus-flat-up-to", type=float, default=1e6, help="largest size with a Milvus FLAT peer")
    args.add_argument("--milvus-hnsw", default="16:100,16:200,32:200",
                      help="Milvus HNSW builds, M:efConstruction, comma-separated")
    args.add_argument("--milvus-hnsw-large", default="16:200", help="--milvus-hnsw from --large-from vectors on")
    args.add_argument("--large-from", type=float, default=1e6, help="size from which --milvus-hnsw-large applies")
    args.add_argument("--milvus-ef", default="16,32,64,128", help="Milvus HNSW ef values to time")
    args = parse(args, argv, quick={"sizes": "1e3", "queries": 20, "pq_from": 0, "pq": "PQ8x4",
                                         "threads": 1, "like": REPO / "tests" / "synthetic" / "demo",
                                         "milvus_hnsw": "8:40", "milvus_ef": "16"})
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.shape == "gallery" and not args.like.is_dir():
        print(f"note: {args.like} not found; using the isotropic mixture", file=sys.stderr)
        args.shape = "isotropic"
    if args.milvus_lite and not lite_installed():
        print("note: milvus-lite or pymilvus not installed; no Milvus Lite peer", file=sys.stderr)
        args.milvus_lite = False
    shape = gallery_shape(args.like, args.model) if args.shape == "gallery" else isotropic_shape()
    load = [os.getloadavg()]
    rows = []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        rows += measure_size(size, shape, args)
    load.append(os.getloadavg())
    columns = ["vectors", "index", "search", "build s", "MB", "bytes/vector", "µs/query", "recall@1"]
    lite = [row for row in rows if row["peer"] == "Milvus Lite" and row["search"] in ("exact", f"ef {args.milvus_ef.split(',')[0]}")]
    tables = [("", columns, [table_row(row) for row in rows])]
    if lite:
        tables.append(("Milvus Lite: insert and storage", ["vectors", "index", "insert rows/s", "index s",
                       "disk bytes/vector", "of which index", "RAM bytes/vector"], [lite_row(row) for row in lite]))
    notes = [f"{DIMENSION}-d unit vectors, mixture shape: {shape.name}, about {args.per_cluster} per component; "
             f"{args.queries} queries, top 5 at batch 1; FAISS {faiss.__version__}, "
             f"{faiss.omp_get_max_threads()} OpenMP threads",
             "µs/query: median (min-max) over the queries; build time measured once",
             "recall@1: share of queries whose first hit is the exact first hit",
             "Milvus Lite: build s = insert + index; MB = its folder on disk; latency through pymilvus (gRPC to the "
             "in-process server), top 5 with label, path and sha256",
             f"load average (1 min) at start {load[0][0]:.2f}, at end {load[-1][0]:.2f} on {os.cpu_count()} cores "
             f"shared with other work"]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report("search", args.json, "Index types (FAISS, Milvus Lite): build, memory, latency, recall", tables,
           {"settings": settings, "results": rows, "load_average": load}, notes)


def lite_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("milvus_lite", "pymilvus"))


if __name__ == "__main__":
    main()
