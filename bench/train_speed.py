"""Training images/s of ``shitu train``, and the share of the CPU's FP32 peak it reaches: each memory
allocator the machine has, cached teacher views, and the distillation recipe (low resolution, photos
mixed into every batch).

A training step allocates and frees activations of tens of megabytes. glibc's malloc hands blocks
that large straight back to the kernel (``munmap``) and gets fresh zeroed pages on the next step, so a
CPU run can spend a large share of its time in page faults (system time). jemalloc and tcmalloc keep
freed memory for reuse. ``LD_PRELOAD`` swaps the allocator without changing a line of code.

Each peer is a worker process (this script with ``--worker``) with one allocator preloaded; it builds
the real ``Trainer`` (PP-LCNet-2.5x, ArcMargin, triplet and distillation from the ImageNet
EfficientNet-Lite0 teacher) on a data folder, runs warm-up steps, then times ``--steps`` optimizer
steps and reports images/s and the minor page faults per step. Workers of all peers run round-robin.
One more peer runs the last allocator found with ``teacher_views`` (the teacher's features of a few
fixed views per image, cached), its cache filled before timing, as it is once every view has been seen.
The last peer is the distillation recipe with that allocator: ``--recipe-size`` px, each batch of
products joined by as many distillation photos, mixed with mixup/CutMix, the teacher run live.

Share of peak: a training image costs about 3 student forwards (forward, and a backward of twice its
work) and one teacher forward, 2 FLOPs per multiply-accumulate (``shitu.nn.lcnet.count_macs``), against
``common.peak_gflops`` of the threads used: an assumption, printed with the result.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cpu_ghz, parse, parser, peak_gflops, report, show, spread  # noqa: E402

from shitu.train.allocator import find_allocator  # noqa: E402

DEFAULT_DATA = REPO / "tests" / "synthetic" / "demo"


def prefill_teacher_cache(trainer, images, indices, size: int):
    """Every view of ``indices`` through the teacher once: the cache as it is after the first epochs."""
    import torch

    for start in range(0, len(indices), 32):
        chunk = torch.as_tensor(indices[start:start + 32])
        for view in range(trainer.config.teacher_views):
            views = torch.full((len(chunk),), view)
            x = trainer.fixed_view_batch(images[chunk], chunk, views, size)
            trainer.cached_teacher_features(x, chunk, views, size)


def flops_per_image(trainer, size: int) -> int:
    """Training FLOPs of one image: 3 student forwards and one teacher forward, 2 per MAC."""
    from shitu.nn.lcnet import count_macs

    teacher = count_macs(trainer.teacher, size) if trainer.teacher is not None else 0
    return 2 * (3 * count_macs(trainer.model, size) + teacher)


def worker(data: Path, size: int, batch_classes: int, steps: int, warmup: int, teacher: str,
           teacher_views: int, distill: bool) -> dict:
    """Time ``steps`` training steps of the real Trainer after ``warmup`` untimed ones.

    ``distill``: each batch also carries as many photos of ``data`` as products, mixed (the recipe).
    """
    import numpy as np
    import torch

    from shitu.train.config import TrainConfig
    from shitu.train.loop import Trainer

    recipe = dict(distill_data=str(data), distill_batch=batch_classes * 4, mix="both") if distill else {}
    config = TrainConfig(data=str(data), resolutions=[[0, size]], batch_classes=batch_classes,
                         teacher=teacher, teacher_views=teacher_views, epochs=1, **recipe).validate()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, Path(run_dir), device="cpu")
        images = trainer.cache(trainer.items, round(size * 1.25), "train")
        photos = trainer.cache(trainer.distill_items, round(size * 1.25), "distill") if distill else None
        labels = torch.from_numpy(trainer.labels)
        batches = []
        for epoch in range(warmup + steps):  # enough epochs for any data size
            batches += list(trainer.sampler.epoch(epoch))
            if len(batches) >= warmup + steps:
                break
        if teacher_views:
            prefill_teacher_cache(trainer, images, np.unique(np.concatenate(batches)), size)
        timed, faults = [], 0
        for step, batch in enumerate(batches[:warmup + steps]):
            before = resource.getrusage(resource.RUSAGE_SELF)
            extra = photos[torch.randint(len(photos), (config.distill_batch,))] if distill else None
            start = time.perf_counter()
            trainer.train_step(images[batch], labels[batch], size, 0, config.lr, batch, extra)
            elapsed = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            if step >= warmup:
                timed.append(elapsed)
                faults += after.ru_minflt - before.ru_minflt
        return {"seconds_per_step": timed, "batch": len(batch) + config.distill_batch,
                "minor_faults_per_step": faults / steps, "threads": torch.get_num_threads(),
                "flops_per_image": flops_per_image(trainer, size)}


def run_worker(args, peer: "Peer") -> dict:
    """One worker process with the peer's allocator preloaded (None: the C library's own malloc)."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if peer.library:
        env["LD_PRELOAD"] = peer.library
    command = [sys.executable, __file__, "--worker", "--data", str(args.data), "--size", str(peer.size),
               "--batch-classes", str(args.batch_classes), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--teacher", args.teacher,
               "--teacher-views", str(peer.teacher_views), *(["--distill"] if peer.distill else [])]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"worker failed ({peer.library or 'glibc'}): {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Peer:
    """One timed setting: allocator library (None: glibc), image side, cached views, the recipe or not."""

    library: str | None
    size: int
    teacher_views: int = 0
    distill: bool = False


def peers_of(args) -> dict[str, Peer]:
    """Every allocator found at ``--size``; then the last one with cached views and with the recipe."""
    peers = {"glibc malloc": Peer(None, args.size)}
    for name in ("jemalloc", "tcmalloc_minimal"):
        library = find_allocator(name)
        if library:
            peers[name] = Peer(library, args.size)
    name, last = list(peers.items())[-1]
    if args.teacher and args.teacher_views:
        peers[f"{name}, teacher_views = {args.teacher_views}"] = Peer(last.library, args.size, args.teacher_views)
    if args.teacher and args.recipe_size:
        peers[f"{name}, distillation recipe at {args.recipe_size} px"] = Peer(last.library, args.recipe_size,
                                                                             distill=True)
    return peers


def main(argv=None):
    args = parser("train_speed", __doc__)
    args.add_argument("--data", type=Path, default=DEFAULT_DATA, help="training images, gallery layout "
                      "(default: the demo gallery; the pixels do not change the speed)")
    args.add_argument("--size", type=int, default=160, help="training image side (default: %(default)s)")
    args.add_argument("--batch-classes", type=int, default=8, help="classes per batch, 4 photos each "
                      "(default: %(default)s, i.e. batch 32)")
    args.add_argument("--steps", type=int, default=12, help="timed steps per worker (default: %(default)s)")
    args.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: %(default)s)")
    args.add_argument("--rounds", type=int, default=2, help="workers per allocator (default: %(default)s)")
    args.add_argument("--teacher", default="efficientnet_lite0", help="'' to time without distillation")
    args.add_argument("--teacher-views", type=int, default=4, help="also time the last allocator with "
                      "this many cached teacher views per image, the cache already full (0: skip; default: "
                      "%(default)s)")
    args.add_argument("--recipe-size", type=int, default=96, help="also time the distillation recipe "
                      "(as many photos as products per batch, mixed) at this side (0: skip; default: %(default)s)")
    args.add_argument("--distill", action="store_true", help=argparse.SUPPRESS)
    args.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parse(args, argv, quick={"size": 48, "batch_classes": 2, "steps": 2, "warmup": 1, "rounds": 1,
                                    "teacher_views": 2, "recipe_size": 40})
    if args.worker:
        print(json.dumps(worker(args.data, args.size, args.batch_classes, args.steps, args.warmup,
                                args.teacher, args.teacher_views, args.distill)))
        return
    peers = peers_of(args)
    results = {name: [] for name in peers}
    for _ in range(args.rounds):  # round-robin, so a busy spell slows every peer alike
        for name, peer in peers.items():
            results[name].append(run_worker(args, peer))
    ghz = cpu_ghz()
    rows, data = [], []
    for name, runs in results.items():
        seconds = [s for run in runs for s in run["seconds_per_step"]]
        batch, threads, flops = runs[0]["batch"], runs[0]["threads"], runs[0]["flops_per_image"]
        images_per_second = spread([batch / s for s in seconds])
        peak = peak_gflops(threads, ghz)
        share = images_per_second["median"] * flops / 1e9 / peak if peak else None
        faults = sum(run["minor_faults_per_step"] for run in runs) / len(runs)
        rows.append([name, peers[name].size, batch, show(images_per_second),
                     f"{share:.1%}" if share is not None else "n/a", f"{faults:,.0f}"])
        data.append({"peer": name, **asdict(peers[name]), "batch": batch, "images_per_second": images_per_second,
                     "flops_per_image": flops, "share_of_peak": share, "minor_faults_per_step": faults,
                     "seconds_per_step": seconds, "threads": threads})
    report("train_speed", args.json, f"Training steps, teacher {args.teacher or 'none'}",
           [("", ["peer", "px", "batch", "images/s, median (min-max)", "share of FP32 peak",
                  "minor page faults per step"], rows)],
           {"settings": {k: str(v) for k, v in vars(args).items()}, "peak_gflops_per_thread": peak_gflops(1, ghz),
            "results": data},
           notes=["each allocator via LD_PRELOAD; run one with: LD_PRELOAD=<library> shitu train ...",
                  f"peak: threads x {ghz:.2f} GHz (highest cpu MHz in /proc/cpuinfo) x FP32 FLOP/cycle, assumed"])


if __name__ == "__main__":
    main()
