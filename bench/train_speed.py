"""Training images/s of ``shitu train``: each memory allocator the machine has, and cached teacher views.

A training step allocates and frees activations of tens of megabytes. glibc's malloc hands blocks
that large straight back to the kernel (``munmap``) and gets fresh zeroed pages on the next step, so a
CPU run can spend a large share of its time in page faults (system time). jemalloc and tcmalloc keep
freed memory for reuse. ``LD_PRELOAD`` swaps the allocator without changing a line of code.

Each peer is a worker process (this script with ``--worker``) with one allocator preloaded; it builds
the real ``Trainer`` (PP-LCNet-2.5x, ArcMargin, triplet and distillation from the ImageNet
EfficientNet-Lite0 teacher) on a data folder, runs warm-up steps, then times ``--steps`` optimizer
steps and reports images/s and the minor page faults per step. Workers of all peers run round-robin.
One more peer runs the fastest allocator with ``teacher_views`` (the teacher's features of a few fixed
views per image, cached), its cache filled before timing, as it is once every view has been seen.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, parse, parser, report, show, spread  # noqa: E402

from shitu.train.allocator import find_allocator  # noqa: E402

DEFAULT_DATA = REPO / "gallery" / "demo"


def prefill_teacher_cache(trainer, images, indices, size: int):
    """Every view of ``indices`` through the teacher once: the cache as it is after the first epochs."""
    import torch

    for start in range(0, len(indices), 32):
        chunk = torch.as_tensor(indices[start:start + 32])
        for view in range(trainer.config.teacher_views):
            views = torch.full((len(chunk),), view)
            x = trainer.fixed_view_batch(images[chunk], chunk, views, size)
            trainer.cached_teacher_features(x, chunk, views, size)


def worker(data: Path, size: int, batch_classes: int, steps: int, warmup: int, teacher: str,
           teacher_views: int) -> dict:
    """Time ``steps`` training steps of the real Trainer after ``warmup`` untimed ones."""
    import numpy as np
    import torch

    from shitu.train.config import TrainConfig
    from shitu.train.loop import Trainer

    config = TrainConfig(data=str(data), resolutions=[[0, size]], batch_classes=batch_classes,
                         teacher=teacher, teacher_views=teacher_views, epochs=1).validate()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, Path(run_dir), device="cpu", quiet=True)
        images = trainer.cache(trainer.items, round(size * 1.25), "train")
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
            start = time.perf_counter()
            trainer.train_step(images[batch], labels[batch], size, 0, config.lr, batch)
            elapsed = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            if step >= warmup:
                timed.append(elapsed)
                faults += after.ru_minflt - before.ru_minflt
        return {"seconds_per_step": timed, "batch": len(batch), "minor_faults_per_step": faults / steps,
                "threads": torch.get_num_threads()}


def run_worker(args, library: str | None, teacher_views: int) -> dict:
    """One worker process with ``library`` preloaded (None: the C library's own malloc)."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if library:
        env["LD_PRELOAD"] = library
    command = [sys.executable, __file__, "--worker", "--data", str(args.data), "--size", str(args.size),
               "--batch-classes", str(args.batch_classes), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--teacher", args.teacher, "--teacher-views", str(teacher_views)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"worker failed ({library or 'glibc'}): {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


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
    args.add_argument("--teacher-views", type=int, default=4, help="also time the fastest allocator with "
                      "this many cached teacher views per image, the cache already full (0: skip; default: "
                      "%(default)s)")
    args.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parse(args, argv, quick={"size": 48, "batch_classes": 2, "steps": 2, "warmup": 1, "rounds": 1,
                                    "teacher_views": 2})
    if args.worker:
        print(json.dumps(worker(args.data, args.size, args.batch_classes, args.steps, args.warmup,
                                args.teacher, args.teacher_views)))
        return
    peers = {"glibc malloc": (None, 0)}  # name -> (allocator library, teacher_views)
    for name in ("jemalloc", "tcmalloc_minimal"):
        library = find_allocator(name)
        if library:
            peers[name] = (library, 0)
    if args.teacher and args.teacher_views:
        name, (library, _) = list(peers.items())[-1]
        peers[f"{name}, teacher_views = {args.teacher_views}"] = (library, args.teacher_views)
    results = {name: [] for name in peers}
    for _ in range(args.rounds):  # round-robin, so a busy spell slows every peer alike
        for name, (library, views) in peers.items():
            results[name].append(run_worker(args, library, views))
    rows, data = [], []
    for name, runs in results.items():
        seconds = [s for run in runs for s in run["seconds_per_step"]]
        batch = runs[0]["batch"]
        images_per_second = spread([batch / s for s in seconds])
        faults = sum(run["minor_faults_per_step"] for run in runs) / len(runs)
        rows.append([name, show(images_per_second), f"{faults:,.0f}"])
        data.append({"peer": name, "library": peers[name][0], "teacher_views": peers[name][1], "batch": batch,
                     "images_per_second": images_per_second, "minor_faults_per_step": faults,
                     "seconds_per_step": seconds, "threads": runs[0]["threads"]})
    report("train_speed", args.json, f"Training steps at {args.size} px, batch {data[0]['batch']}, teacher "
           f"{args.teacher or 'none'}", [("", ["peer", "images/s, median (min-max)",
                                               "minor page faults per step"], rows)],
           {"settings": {k: str(v) for k, v in vars(args).items()}, "results": data},
           notes=["each allocator via LD_PRELOAD; run one with: LD_PRELOAD=<library> shitu train ..."])


if __name__ == "__main__":
    main()
