"""A folder tree of natural photos as distillation list files, with a validation split carved out.

``python -m shitu.distillset ../shared/data/distill lists/distill`` writes ``train.txt`` and
``val.txt`` (``path<TAB>label``, the label being the photo's folder relative to the root, e.g.
``caltech101/accordion``). Training uses only the teacher's output on these photos; the labels serve
the validation split, a category-level retrieval check that may pick checkpoints (unlike ``unseen/``).
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from pathlib import Path

from shitu.gallery import iter_images


def photos_by_folder(root: Path) -> dict[str, list[str]]:
    """Relative photo paths under ``root``, grouped by their folder (relative, POSIX style)."""
    groups = defaultdict(list)
    for path in iter_images(root):
        relative = path.relative_to(root)
        groups[relative.parent.as_posix()].append(relative.as_posix())
    return groups


def split(groups: dict[str, list[str]], per_folder: int, min_folder: int, seed: int) -> tuple[list, list]:
    """``(train, val)`` lists of ``(path, label)``: ``per_folder`` photos of each folder holding at
    least ``min_folder`` go to val (so each val photo has same-folder neighbours), the rest to train."""
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(groups):
        paths = sorted(groups[label])
        chosen = set(rng.sample(paths, per_folder)) if len(paths) >= min_folder else set()
        for path in paths:
            (val if path in chosen else train).append((path, label))
    return train, val


def write(pairs: list[tuple[str, str]], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{path}\t{label}\n" for path, label in pairs), encoding="utf-8")
    return out


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="root of the photo folders")
    parser.add_argument("out", type=Path, help="folder for train.txt and val.txt")
    parser.add_argument("--val-per-folder", type=int, default=10)
    parser.add_argument("--min-folder", type=int, default=61, help="only folders this large give val photos "
                        "(61: Tiny-ImageNet's 64-px folders of 60 stay out)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"not a folder: {args.data}")
    if not 1 <= args.val_per_folder < args.min_folder:
        parser.error("--val-per-folder must be between 1 and --min-folder - 1")
    train, val = split(photos_by_folder(args.data), args.val_per_folder, args.min_folder, args.seed)
    for name, pairs in (("train", train), ("val", val)):
        print(f"{write(pairs, args.out / f'{name}.txt')}: {len(pairs)} photos")


if __name__ == "__main__":
    main()
