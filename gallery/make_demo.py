"""Build shitu's demo from the Grocery Store Dataset: real photos of products the default model never saw.

The products are the first 10, in sorted order, of the 21 classes that ``python -m shitu.grocery DATA
lists --hold-out 21 --seed 0`` keeps out of training. The rule is fixed before looking at any answer,
so the demo shows what a user sees with products of their own.

Output, next to this script (``--out`` to change):
  demo/<label>/   the gallery: the product's iconic web-shop image and its first 2 ``train`` photos
  queries/        the first 3 ``test`` photos of each product as ``<label>__<n>.jpg``, and labels.tsv
  LICENSE         the dataset's MIT licence, which travels with its photos

    python gallery/make_demo.py ../shared/data/grocery
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from shitu.grocery import class_table, held_out_classes, split_lines

PRODUCTS, GALLERY_PHOTOS, QUERY_PHOTOS = 10, 2, 3


def demo_products(data: Path) -> list[str]:
    """The first ``PRODUCTS`` held-out classes in sorted order."""
    return sorted(held_out_classes(data, 21, seed=0))[:PRODUCTS]


def photos_of(data: Path, split: str, label: str, count: int) -> list[Path]:
    """The first ``count`` photos of ``label`` in ``split``, in sorted order."""
    paths = sorted(line.split("\t")[0] for line in split_lines(data, split, {label}))
    return [data / path for path in paths[:count]]


def build(data: Path, out: Path) -> tuple[int, int]:
    """Write the demo under ``out``; returns (gallery photos, queries)."""
    iconic = {row["name"]: data / row["iconic"] for row in class_table(data)}
    for sub in ("demo", "queries"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "queries").mkdir(parents=True)
    gallery, labels = 0, []
    for label in demo_products(data):
        folder = out / "demo" / label
        folder.mkdir(parents=True)
        shutil.copyfile(iconic[label], folder / f"iconic{iconic[label].suffix.lower()}")
        for photo in photos_of(data, "train", label, GALLERY_PHOTOS):
            shutil.copyfile(photo, folder / photo.name)
        gallery += 1 + GALLERY_PHOTOS
        for n, photo in enumerate(photos_of(data, "test", label, QUERY_PHOTOS), 1):
            name = f"{label}__{n}{photo.suffix.lower()}"
            shutil.copyfile(photo, out / "queries" / name)
            labels.append(f"{name}\t{label}")
    (out / "queries" / "labels.tsv").write_text("\n".join(labels) + "\n", encoding="utf-8")
    shutil.copyfile(data / "LICENSE", out / "LICENSE")
    return gallery, len(labels)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the Grocery Store Dataset folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    gallery, queries = build(args.data, args.out)
    print(f"wrote {gallery} gallery photos and {queries} queries under {args.out}")


if __name__ == "__main__":
    main()
