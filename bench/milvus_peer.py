"""The Milvus Lite peer of bench/search.py: the same vectors, through pymilvus, into Milvus Lite.

Each configuration gets its own collection in a temporary Milvus Lite folder, with the schema shitu's
Milvus store writes (``shitu.index.milvus``: id, vector, label, path, sha256, added_at). Measured:

* insert throughput: rows per second of the ``insert`` calls (2 000 rows each, as the store sends them),
  data generation excluded;
* index seconds: ``flush`` until Milvus Lite's background worker has compacted the segments and built
  their indexes (drained through the engine's own ``_wait_for_bg``: a benchmark-only use of its internals);
* disk: bytes of the collection's folder (Parquet segments, index files, WAL), and of its index files
  alone; RAM: growth of this
  process's resident set while the collection is built and loaded (Milvus Lite runs in-process), which
  includes allocator slack and is indicative only;
* query latency at batch 1 through the pymilvus client (a gRPC round trip to the in-process server), top
  5 with the three scalar fields returned, interleaved with the FAISS peers; recall@1 against FAISS
  ``Flat``.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BATCH = 2000


@dataclass
class LiteConfig:
    """One Milvus index to build, and the search settings to time on it."""

    index_type: str
    build: dict = field(default_factory=dict)
    searches: list[dict] = field(default_factory=lambda: [{}])

    @property
    def name(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.build.items())
        return f"Milvus Lite {self.index_type}" + (f"({params})" if params else "")


def configs(size: int, hnsw: list[tuple[int, int]], efs: list[int], flat_up_to: float) -> list[LiteConfig]:
    """FLAT up to ``flat_up_to`` vectors, then HNSW for each (M, efConstruction) at each ef."""
    chosen = [LiteConfig("FLAT")] if size <= flat_up_to else []
    for m, construction in hnsw:
        chosen.append(LiteConfig("HNSW", {"M": m, "efConstruction": construction}, [{"ef": ef} for ef in efs]))
    return chosen


def search_label(params: dict) -> str:
    return f"ef {params['ef']}" if "ef" in params else "exact"


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class LitePeer:
    """One collection in its own Milvus Lite folder, built from a ``search.Mixture``."""

    def __init__(self, config: LiteConfig, dimension: int):
        from shitu.index.milvus_url import pymilvus_module

        self.pymilvus = pymilvus_module()  # also quiets its error log
        logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)
        self.config, self.dimension = config, dimension
        self.folder = Path(tempfile.mkdtemp(prefix="shitu-bench-milvus-")) / "bench.db"
        self.client = self.pymilvus.MilvusClient(str(self.folder))
        self.name = "bench"

    def create(self):
        DataType = self.pymilvus.DataType
        schema = self.pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimension)
        for name, length in (("label", 4096), ("path", 65535), ("sha256", 64), ("added_at", 32)):
            schema.add_field(name, DataType.VARCHAR, max_length=length)
        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type=self.config.index_type, metric_type="IP",
                        params=self.config.build)
        self.client.create_collection(self.name, schema=schema, consistency_level="Strong")
        self.client.create_index(self.name, index, sync=False)
        self.client.load_collection(self.name)

    def build(self, data) -> dict:
        """Insert the whole mixture, then flush and wait for every segment's index."""
        gc.collect()
        before = rss_bytes()
        self.create()
        inserting, stamp = 0.0, "2026-01-01T00:00:00+00:00"
        first = 0
        for chunk in data.chunks():
            for start in range(0, len(chunk), BATCH):
                vectors = chunk[start:start + BATCH]
                rows = [{"id": first + start + n, "vector": v, "label": f"product {(first + start + n) // 10}",
                         "path": f"product {(first + start + n) // 10}/{first + start + n}.jpg",
                         "sha256": f"{first + start + n:064x}", "added_at": stamp} for n, v in enumerate(vectors)]
                started = time.perf_counter()
                self.client.insert(self.name, rows)
                inserting += time.perf_counter() - started
            first += len(chunk)
        started = time.perf_counter()
        self.client.flush(self.name)
        self.wait_for_background()
        indexing = time.perf_counter() - started
        gc.collect()
        index_bytes = sum(folder_bytes(p) for p in self.folder.rglob("indexes") if p.is_dir())
        return {"insert_seconds": inserting, "rows_per_second": data.size / inserting,
                "index_seconds": indexing, "disk_bytes": folder_bytes(self.folder), "index_bytes": index_bytes,
                "ram_bytes": rss_bytes() - before}

    def wait_for_background(self):
        """Milvus Lite compacts segments and builds their indexes on a background thread."""
        from milvus_lite.server_manager import server_manager_instance

        _, db, _ = server_manager_instance._servers[os.path.abspath(self.folder)]
        db.get_collection(self.name)._wait_for_bg()

    def top1(self, queries: np.ndarray, params: dict) -> np.ndarray:
        found = self.client.search(self.name, data=list(queries), limit=1,
                                   search_params={"metric_type": "IP", "params": params})
        return np.array([hits[0]["id"] if hits else -1 for hits in found])

    def one_query_at_a_time(self, queries: np.ndarray, params: dict):
        position = iter(range(10**9))

        def call():
            n = next(position) % len(queries)
            self.client.search(self.name, data=[queries[n]], limit=5, output_fields=["label", "path", "sha256"],
                               search_params={"metric_type": "IP", "params": params})
        return call

    def close(self):
        from milvus_lite.server_manager import server_manager_instance

        try:
            self.client.drop_collection(self.name)
        finally:
            self.client.close()
            server_manager_instance.release_server(str(self.folder))
            shutil.rmtree(self.folder.parent, ignore_errors=True)
