"""End-to-end ``build-index`` throughput (image file to stored vector) against model-only throughput.

Peers, interleaved, each over the same number of images:

* build of the shared grocery photos (``../shared/data/grocery/train``; skipped, with a message, when
  that folder is absent), evenly sampled across the folder;
* build of phone-size JPEGs (4000x3000 by default, half of them with an EXIF rotation) that this
  script writes to a temp folder;
* model only: ``Embedder.embed_arrays`` on pre-made inputs, batch 32.

Builds go through ``shitu.index.Index.build`` with one open ``Embedder``, exactly as ``shitu build-index``
does (hashing, threaded decoding, resizing, inference, SQLite, FAISS), each time into an empty
folder so nothing is reused. Why: the ratio end-to-end / model-only says how much of a build is
spent outside the network, i.e. whether a faster model (int8, fewer threads) would speed builds up
or whether decoding large JPEGs is the limit.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, interleave, parse, parser, rate, report, show, spread  # noqa: E402

GROCERY = REPO.parent / "shared" / "data" / "grocery" / "train"
EXIF_ORIENTATION = 0x0112


def grocery_items(count: int):
    """``count`` grocery training photos, evenly spread over the sorted list; None when absent."""
    from shitu.gallery import read_gallery

    if not GROCERY.is_dir():
        print(f"note: {GROCERY} not found; skipping the grocery photos", file=sys.stderr)
        return None
    items = read_gallery(GROCERY)
    step = max(1, len(items) // count)
    return items[::step][:count]


def phone_items(folder: Path, count: int, width: int, height: int):
    """Write ``count`` phone-like JPEGs (smooth scene plus sensor noise, quality 90) into label folders."""
    from PIL import Image

    from shitu.gallery import read_gallery

    rng = np.random.default_rng(0)
    for n in range(count):
        scene = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height),
                                                                                         Image.BICUBIC)
        noise = rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
        pixels = np.clip(np.asarray(scene, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6 if n % 2 else 1  # 6: the camera was held upright, rotate on decode
        path = folder / f"product {n % 4}" / f"IMG_{n:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90, exif=exif.tobytes())
    return read_gallery(folder)


def build_call(items, work: Path, embedder):
    """A call that indexes ``items`` into a fresh folder under ``work``."""
    from shitu.index import Index

    counter = iter(range(1_000_000))

    def call():
        Index(work / f"index-{next(counter)}", embedder=embedder).build(items)
    return call


def model_call(embedder, count: int, batch: int = 32):
    """A call that embeds ``count`` pre-made inputs in batches of ``batch``: the network alone."""
    side = embedder.info.input_size
    inputs = np.random.default_rng(0).standard_normal((batch, 3, side, side), dtype=np.float32)
    sizes = [min(batch, count - start) for start in range(0, count, batch)]

    def call():
        for size in sizes:
            embedder.embed_arrays(inputs[:size])
    return call


def clear_indexes(work: Path):
    """Delete the indexes earlier calls wrote (untimed), so disk use stays flat."""
    def clear():
        for folder in work.glob("index-*"):
            shutil.rmtree(folder, ignore_errors=True)
    return clear


def file_stats(items) -> dict:
    sizes = [item.path.stat().st_size for item in items]
    return {"files": len(items), "mean_mb": float(np.mean(sizes)) / 1e6}


def main(argv=None):
    args = parser("build_throughput", __doc__)
    args.add_argument("--model", type=Path, help="shitu ONNX model (default: the shipped one)")
    args.add_argument("--images", type=int, default=256, help="images per peer and call")
    args.add_argument("--phone-size", default="4000x3000", help="WIDTHxHEIGHT of the generated JPEGs")
    args.add_argument("--rounds", type=int, default=3, help="timed calls per peer")
    args.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores, as the CLI)")
    args = parse(args, argv, quick={"images": 4, "phone_size": "640x480", "rounds": 1})
    width, height = (int(v) for v in args.phone_size.lower().split("x"))

    from shitu.embed import Embedder

    embedder = Embedder(args.model, args.threads)
    with tempfile.TemporaryDirectory(prefix="shitu-bench-build-") as tmp:
        work = Path(tmp)
        datasets = {"grocery photos": grocery_items(args.images),
                    f"phone JPEGs {width}x{height}": phone_items(work / "phone", args.images, width, height)}
        datasets = {name: items for name, items in datasets.items() if items}
        peers = {f"build: {name}": build_call(items, work, embedder) for name, items in datasets.items()}
        peers["model only (batch 32)"] = model_call(embedder, args.images)
        samples = interleave(peers, args.rounds, warmup=1, between=clear_indexes(work))
        stats = {name: file_stats(items) for name, items in datasets.items()}

    results = summarize(samples, args.images, stats)
    model_rate = results["model only (batch 32)"]["images_per_s"]["median"]
    rows = [[name, r["files"], f"{r['mean_mb']:.2f}" if r["mean_mb"] else "-",
             show(r["images_per_s"]), f"{r['images_per_s']['median'] / model_rate:.3g}"]
            for name, r in results.items()]
    notes = [f"model {embedder.info.describe()} at {embedder.info.input_size} px, "
             f"{embedder.session.get_session_options().intra_op_num_threads} onnxruntime threads",
             "images/s: median (min-max) over the timed calls; each build starts from an empty index folder",
             "ratio = images/s of the row / images/s of the model alone (1.00 = the network is the only cost)"]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report("build_throughput", args.json, "build-index throughput: end to end against the model alone",
           [("", ["peer", "images", "mean file MB", "images/s", "ratio to model only"], rows)],
           {"settings": settings, "model": embedder.info.describe(), "results": results}, notes)


def summarize(samples: dict[str, list[float]], images: int, stats: dict) -> dict:
    results = {}
    for name, seconds in samples.items():
        dataset = name.removeprefix("build: ")
        files = stats.get(dataset, {"files": images, "mean_mb": 0.0})
        results[name] = {**files, "seconds_per_call": spread(seconds),
                         "images_per_s": rate(spread(seconds), files["files"])}
    return results


if __name__ == "__main__":
    main()
