"""The Grocery Store Dataset (Klasson et al., WACV 2019) as shitu list files.

Its split files say ``path, fine_id, coarse_id``; shitu wants ``path<TAB>label`` with readable labels.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SPLITS = ("train", "val", "test")


def class_table(root: Path) -> list[dict]:
    """Rows of ``classes.csv`` as dicts with ``id``, ``name`` and ``iconic`` (relative path)."""
    with open(root / "classes.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    return [{"id": int(r[1]), "name": r[0], "iconic": r[4].lstrip("/")} for r in rows]


def split_lines(root: Path, split: str, classes: set[str] | None = None) -> list[str]:
    """``path<TAB>label`` lines of one split (``iconic`` included), optionally only some classes."""
    table = class_table(root)
    names = {row["id"]: row["name"] for row in table}
    if split == "iconic":
        pairs = [(row["iconic"], row["name"]) for row in table]
    else:
        pairs = []
        for line in (root / f"{split}.txt").read_text().splitlines():
            if line.strip():
                path, fine_id, _ = (part.strip() for part in line.split(","))
                pairs.append((path, names[int(fine_id)]))
    return [f"{path}\t{label}" for path, label in pairs if classes is None or label in classes]


def write_list(root: Path, split: str, out: Path, classes: set[str] | None = None) -> Path:
    """Write one split's list file to ``out`` and return it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(split_lines(root, split, classes)) + "\n", encoding="utf-8")
    return out


def held_out_classes(root: Path, count: int, seed: int = 0) -> set[str]:
    """``count`` class names drawn with ``seed``: products a model trained on the others never saw."""
    names = [row["name"] for row in class_table(root)]
    if not 0 < count < len(names):
        raise ValueError(f"--hold-out must be between 1 and {len(names) - 1}")
    return pick_held_out(names, count, seed)


def pick_held_out(names, count: int, seed: int = 0) -> set[str]:
    """The one draw of held-out classes, so every tool that holds out ``count`` with ``seed`` holds out
    the same ones."""
    return set(random.Random(seed).sample(sorted(names), count))


def main(argv: list[str] | None = None):
    """``python -m shitu.grocery DATA OUT``: write train, val, test and iconic list files into OUT.

    With ``--hold-out N`` it also writes ``OUT/seen/`` (train, val, iconic of the other classes: what
    to train on; test: the known queries of the open-set protocol) and ``OUT/held_out/`` (train as
    gallery, test as queries, of N classes never trained on), to measure how a recipe does on products
    that are not in its training set, and to have unknown products for ``shitu eval --unknown``.
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("data", type=Path, help="the Grocery Store Dataset folder")
    parser.add_argument("out", type=Path, help="folder for the list files")
    parser.add_argument("--hold-out", type=int, default=0, help="classes to keep out of training")
    parser.add_argument("--seed", type=int, default=0, help="which classes --hold-out picks")
    args = parser.parse_args(argv)
    for split in (*SPLITS, "iconic"):
        print(write_list(args.data, split, args.out / f"{split}.txt"))
    if args.hold_out:
        try:
            held = held_out_classes(args.data, args.hold_out, args.seed)
        except ValueError as exc:
            parser.error(str(exc))
        seen = {row["name"] for row in class_table(args.data)} - held
        for split in ("train", "val", "test", "iconic"):
            print(write_list(args.data, split, args.out / "seen" / f"{split}.txt", seen))
        for split in ("train", "test"):
            print(write_list(args.data, split, args.out / "held_out" / f"{split}.txt", held))


if __name__ == "__main__":
    main()
