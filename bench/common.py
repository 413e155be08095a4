"""What every bench script shares: interleaved timing, median and spread, the machine, tables, JSON.

Peers are timed round-robin (A, B, C, A, B, C, ...) in one process, so a clock-speed change, a noisy
neighbour or a background job slows all of them alike instead of whichever happened to run then.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
CACHE = Path(tempfile.gettempdir()) / "shitu-bench"  # exported reference models, reused
# FP32 FLOP per cycle and core: 2 FMA units x 8 AVX2 lanes (16 with AVX-512) x 2 FLOP per FMA.
FLOPS_PER_CYCLE = {"avx2": 32, "avx512f": 64}

if str(REPO) not in sys.path:  # scripts run as ``python bench/x.py`` find the checkout's shitu
    sys.path.insert(0, str(REPO))


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    """An argument parser with the options every script has: ``--json`` and ``--quick``."""
    args = argparse.ArgumentParser(prog=f"bench/{name}.py", description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--json", type=Path, default=RESULTS / f"{name}.json", help="where to write results "
                      "(default: %(default)s)")
    args.add_argument("--quick", action="store_true", help="tiny sizes and few rounds: proves the script "
                      "runs, measures nothing")
    return args


def parse(args: argparse.ArgumentParser, argv, quick: dict):
    """Parse ``argv``; with ``--quick``, ``quick`` replaces the defaults (options given still win)."""
    parsed = args.parse_args(argv)
    if parsed.quick:
        args.set_defaults(**quick)
        parsed = args.parse_args(argv)
    return parsed


def interleave(peers: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
               between: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each peer, ``rounds`` samples each, taken round-robin after ``warmup`` rounds.

    ``between`` runs untimed before every call (e.g. deleting the index a build just wrote).
    """
    samples: dict[str, list[float]] = {name: [] for name in peers}
    for round_number in range(warmup + rounds):
        for name, call in peers.items():
            if between:
                between()
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            if round_number >= warmup:
                samples[name].append(elapsed)
    return samples


def spread(samples: list[float]) -> dict:
    """Median, min and max of some samples (what every table and JSON file reports)."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def show(stats: dict, scale: float = 1.0, digits: int = 1) -> str:
    """``median (min-max)``, each multiplied by ``scale``."""
    return (f"{stats['median'] * scale:.{digits}f} ({stats['min'] * scale:.{digits}f}-"
            f"{stats['max'] * scale:.{digits}f})")


def rate(stats: dict, items: float) -> dict:
    """Items per second from seconds per call; min and max swap (the slowest call is the lowest rate)."""
    return {"median": items / stats["median"], "min": items / stats["max"], "max": items / stats["min"],
            "n": stats["n"]}


def markdown(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_ghz() -> float | None:
    """The highest ``cpu MHz`` in /proc/cpuinfo, in GHz (a VM often reports its nominal clock)."""
    mhz = [float(line.split(":")[1]) for line in cpuinfo() if line.startswith("cpu MHz")]
    return max(mhz) / 1000 if mhz else None


def cpu_flags() -> set[str]:
    return next((set(line.split(":")[1].split()) for line in cpuinfo() if line.startswith("flags")), set())


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def flops_per_cycle() -> int:
    """FP32 FLOP per cycle and core for this CPU's widest vectors (two FMA units assumed)."""
    return FLOPS_PER_CYCLE["avx512f" if "avx512f" in cpu_flags() else "avx2"]


def peak_gflops(threads: int, ghz: float | None) -> float | None:
    """FP32 peak of ``threads`` cores: GHz x ``flops_per_cycle()``; an assumption, stated in every output."""
    return threads * ghz * flops_per_cycle() if ghz else None


def machine() -> dict:
    """What the figures were measured on."""
    model = next((line.split(":")[1].strip() for line in cpuinfo() if line.startswith("model name")), "")
    flags = cpu_flags()
    versions = {}
    for module in ("numpy", "onnxruntime", "faiss", "PIL"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            pass
    return {"cpu": model, "cores": cores(), "ghz": cpu_ghz(),
            "simd": sorted(f for f in flags if f in {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni"}),
            "python": platform.python_version(), "versions": versions,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def describe_machine(info: dict) -> str:
    ghz = f"{info['ghz']:.2f} GHz" if info["ghz"] else "unknown clock"
    return (f"{info['cpu'] or 'unknown CPU'}, {info['cores']} cores, {ghz}, {' '.join(info['simd'])}; "
            f"load average {' '.join(f'{x:.2f}' for x in info['load_average'] or [])}")


def report(name: str, path: Path, title: str, tables: list[tuple[str, list[str], list[list]]], data: dict,
           notes: list[str] = ()) -> Path:
    """Print the Markdown tables and notes, and write ``data`` plus the machine as JSON to ``path``."""
    info = machine()
    print(f"## {title}\n\n{describe_machine(info)}\n")
    for heading, columns, rows in tables:
        if heading:
            print(f"### {heading}\n")
        print(markdown(columns, rows) + "\n")
    for note in notes:
        print(f"- {note}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"bench": name, "machine": info, **data}, indent=2, default=str) + "\n")
    print(f"\nresults written to {path}", file=sys.stderr)
    return path
