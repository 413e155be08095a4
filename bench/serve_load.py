"""``shitu serve`` under load: concurrent clients over HTTP on 127.0.0.1, with adds and removes mixed in.

A real ``shitu serve`` process answers ``--clients`` threads (stdlib ``http.client``, keep-alive) that
share ``--queries`` queries (photos of ``gallery/queries``); every ``--write-every``-th request is a write
instead: an add of a synthetic test photo under a label of its own, or the removal of an image an earlier
add created. It prints throughput, latency percentiles and errors. Then, with the server stopped,
``shitu check`` must pass and the index must hold exactly the writes the server acknowledged (each add's
row present, each removed row gone, every other row as it was).

Last, one query at a time, interleaved: the same photos through the HTTP API (one client) and through a
loaded ``shitu.index.Index`` in this process: what HTTP, multipart parsing and the service add to a query.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, interleave, parse, parser, report, show, spread  # noqa: E402

QUERY_PHOTOS = REPO / "gallery" / "queries"
NEW_PHOTOS = REPO / "tests" / "synthetic" / "demo"  # products the demo gallery lacks
TOKEN = "load-test"


# -- HTTP ----------------------------------------------------------------------------------------------
def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] = ()) -> tuple[bytes, str]:
    """A multipart/form-data body: each file in the field ``images``, then the text fields."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    for key, value in dict(fields).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Client:
    """One keep-alive connection; reconnects once when the server closed it."""

    def __init__(self, port: int):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
             token: bool = False) -> tuple[int, object]:
        headers = {"Content-Type": content_type} if content_type else {}
        if token:
            headers["Authorization"] = f"Bearer {TOKEN}"
        for attempt in (0, 1):
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                return response.status, json.loads(response.read() or b"null")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                if attempt:
                    raise

    def query(self, name: str, data: bytes) -> tuple[int, object]:
        body, kind = multipart([(name, data)])
        return self.call("POST", "/v1/query?topk=5", body, kind)


# -- the server ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(index: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "shitu", "serve", "--index", str(index), "--port", str(port), "--token", TOKEN]
    process = subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"shitu serve exited: {log.read_text()}")
        try:
            if Client(port).call("GET", "/healthz")[0] == 200:
                return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    sys.exit(f"shitu serve did not start: {log.read_text()}")


def stop_server(process: subprocess.Popen):
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


# -- the load ------------------------------------------------------------------------------------------
@dataclass
class Ledger:
    """What the server acknowledged, and how each request went; shared by the client threads."""

    latencies: list[float] = field(default_factory=list)  # queries, seconds
    write_latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    added: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (label, path)
    removed: set[int] = field(default_factory=set)
    removable: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def photos(folder: Path) -> list[tuple[str, bytes]]:
    return [(path.name, path.read_bytes()) for path in sorted(folder.rglob("*.jpg"))]


def run_load(port: int, clients: int, queries: int, write_every: int, ledger: Ledger) -> float:
    """Every job once, spread over ``clients`` threads; returns the wall time."""
    query_pool, new_pool = photos(QUERY_PHOTOS), photos(NEW_PHOTOS)
    jobs = iter(schedule(queries, write_every))
    take = threading.Lock()

    def worker():
        client = Client(port)
        while True:
            with take:
                job = next(jobs, None)
            if job is None:
                return
            kind, number = job
            if kind == "write":
                write(client, number, new_pool, ledger)
            else:
                name, data = query_pool[number % len(query_pool)]
                timed(ledger, ledger.latencies, f"query {name}", lambda: client.query(name, data))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def schedule(queries: int, write_every: int) -> list[tuple[str, int]]:
    """The requests in order: ``write_every - 1`` queries, then a write, and so on."""
    jobs, writes = [], 0
    for number in range(queries):
        jobs.append(("query", number))
        if write_every > 1 and (number + 1) % (write_every - 1) == 0:
            jobs.append(("write", writes))
            writes += 1
    return jobs


def timed(ledger: Ledger, into: list[float], what: str, call):
    start = time.perf_counter()
    try:
        status, body = call()
    except OSError as exc:
        status, body = None, {"error": str(exc)}
    elapsed = time.perf_counter() - start
    with ledger.lock:
        into.append(elapsed)
        if status != 200:
            ledger.errors.append(f"{what}: {status} {body}")
    return status, body


def write(client: Client, number: int, pool: list[tuple[str, bytes]], ledger: Ledger):
    """Odd writes remove an image an earlier add created (when there is one), the others add one."""
    with ledger.lock:
        target = ledger.removable.pop(0) if number % 2 and ledger.removable else None
    if target is not None:
        status, _ = timed(ledger, ledger.write_latencies, f"remove {target}",
                          lambda: client.call("DELETE", f"/v1/images/{target}", token=True))
        if status == 200:
            with ledger.lock:
                ledger.removed.add(target)
        return
    name, data = pool[number % len(pool)]
    body, kind = multipart([(name, data)], {"label": f"load {number:04d}"})
    status, answer = timed(ledger, ledger.write_latencies, f"add {name}",
                           lambda: client.call("POST", "/v1/images", body, kind, token=True))
    if status == 200:
        with ledger.lock:
            for row in answer["images"]:
                ledger.added[row["id"]] = (row["label"], row["path"])
                ledger.removable.append(row["id"])


# -- after the load ------------------------------------------------------------------------------------
def all_rows(client: Client) -> dict[int, tuple[str, str]]:
    rows, offset = {}, 0
    while True:
        status, page = client.call("GET", f"/v1/images?offset={offset}&limit=1000")
        rows.update({row["id"]: (row["label"], row["path"]) for row in page})
        if len(page) < 1000:
            return rows
        offset += 1000


def verify(index: Path, before: dict[int, tuple[str, str]], ledger: Ledger) -> dict:
    """``shitu check``, and the stored rows against the acknowledged writes."""
    from shitu.index import Index

    check = subprocess.run([sys.executable, "-m", "shitu", "check", "--index", str(index)], cwd=REPO,
                           capture_output=True, text=True)
    expected = {**before, **ledger.added}
    for row_id in ledger.removed:
        expected.pop(row_id, None)
    stored = {row.id: (row.label, row.path) for row in Index(index).images(None, 0, 1 << 62)}
    lost = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    changed = sorted(i for i in set(expected) & set(stored) if expected[i] != stored[i])
    return {"check_ok": check.returncode == 0, "check_output": (check.stdout + check.stderr).strip(),
            "expected_rows": len(expected), "stored_rows": len(stored), "lost": lost, "unexpected": extra,
            "changed": changed}


def compare_per_query(port: int, index: Path, rounds: int) -> dict:
    """One query at a time, HTTP and in-process alternating, on the same photos."""
    from shitu.index import Index

    pool = photos(QUERY_PHOTOS)
    loaded = Index(index)
    loaded.query([pool[0][1]])  # load the model and the snapshot before timing
    client = Client(port)
    turn = {"http": 0, "index": 0}

    def over_http():
        name, data = pool[turn["http"] % len(pool)]
        turn["http"] += 1
        assert client.query(name, data)[0] == 200

    def in_process():
        name, data = pool[turn["index"] % len(pool)]
        turn["index"] += 1
        assert loaded.query([data])[0].error is None

    return interleave({"HTTP POST /v1/query (1 client)": over_http, "Index.query in process": in_process}, rounds)


def percentiles(samples: list[float]) -> dict:
    if len(samples) < 2:
        return {"p50": samples[0] if samples else None, "p95": None, "p99": None}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": statistics.median(samples), "p95": cuts[94], "p99": cuts[98]}


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def main(argv=None):
    args = parser("serve_load", __doc__)
    args.add_argument("--clients", type=int, default=8, help="concurrent clients (default: %(default)s)")
    args.add_argument("--queries", type=int, default=2000, help="queries in all (default: %(default)s)")
    args.add_argument("--write-every", type=int, default=40, help="every Nth request is an add or a remove "
                      "(0: none; default: %(default)s)")
    args.add_argument("--rounds", type=int, default=100, help="queries per peer in the one-at-a-time comparison")
    args.add_argument("--gallery", type=Path, default=REPO / "gallery" / "demo", help="gallery to index (copied)")
    options = parse(args, argv, {"clients": 2, "queries": 16, "write_every": 4, "rounds": 3})

    work = Path(tempfile.mkdtemp(prefix="shitu-serve-load-"))
    try:
        return measure(options, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(options, work: Path):
    from shitu.gallery import read_gallery
    from shitu.index import Index

    gallery, index = work / "gallery", work / "index"
    shutil.copytree(options.gallery, gallery)
    Index(index).build(read_gallery(gallery))
    port = free_port()
    server = start_server(index, port, work / "serve.log")
    try:
        before = all_rows(Client(port))
        ledger = Ledger()
        wall = run_load(port, options.clients, options.queries, options.write_every, ledger)
        comparison = compare_per_query(port, index, options.rounds)
    finally:
        stop_server(server)
    outcome = verify(index, before, ledger)
    load = {"clients": options.clients, "queries": len(ledger.latencies), "writes": len(ledger.write_latencies),
            "adds_acknowledged": len(ledger.added), "removes_acknowledged": len(ledger.removed),
            "seconds": wall, "queries_per_second": len(ledger.latencies) / wall,
            "query_latency": percentiles(ledger.latencies), "write_latency": percentiles(ledger.write_latencies),
            "errors": len(ledger.errors), "error_samples": ledger.errors[:10]}
    one_at_a_time = {name: spread(samples) for name, samples in comparison.items()}
    rows = [["queries", load["queries"], f"{load['queries_per_second']:.1f}", *map(ms, load["query_latency"].values())],
            ["adds + removes", load["writes"], "-", *map(ms, load["write_latency"].values())]]
    lost = len(outcome["lost"]) + len(outcome["changed"])
    report("serve_load", options.json, f"shitu serve: {options.clients} clients, {load['queries']} queries, "
           f"{load['writes']} writes", [
               ("under load (HTTP on 127.0.0.1)", ["requests", "n", "per second", "p50 ms", "p95 ms", "p99 ms"], rows),
               ("after the load", ["check", "errors", "acknowledged adds / removes", "acknowledged writes lost",
                                   "unacknowledged rows"],
                [["passed" if outcome["check_ok"] else "FAILED", load["errors"],
                  f"{load['adds_acknowledged']} / {load['removes_acknowledged']}", lost, len(outcome["unexpected"])]]),
               ("one query at a time, interleaved", ["path", "median ms (min-max)"],
                [[name, show(stats, 1000)] for name, stats in one_at_a_time.items()])],
           {"load": load, "after": outcome, "one_at_a_time": one_at_a_time, "gallery": str(options.gallery),
            "cores_shared": os.getloadavg()[0] > 0.5},
           [f"{len(before)} images indexed before the load; every {options.write_every}th request a write",
            *[f"error: {line}" for line in ledger.errors[:5]]])
    if load["errors"] or lost or outcome["unexpected"] or not outcome["check_ok"]:
        sys.exit("serve_load: errors, lost writes or a failed check (see above)")


if __name__ == "__main__":
    main()
