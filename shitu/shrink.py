"""A smaller copy of a photo collection, with the same layout, to move it to a training machine.

Why: training decodes every photo at 1.25 x its resolution (200 px for 160 px training, 280 px for
224), so pixels past that are never used, yet they fill the disk, the transfer and the decode time. A
copy whose shorter side is ``side`` keeps what training at up to ``side / 1.25`` px sees; the relative
paths do not change, so gallery folders and list files work with the copy as their root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from shitu.errors import BadImage, ShituError
from shitu.gallery import GalleryItem
from shitu.imageio import load_rgb
from shitu.progress import SILENT, Reporter


@dataclass
class ShrinkReport:
    """What a shrink did, for its summary line."""

    shrunk: int = 0
    copied: int = 0  # already small enough: copied byte for byte
    bad: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0


def shrink_file(source: Path, target: Path, side: int, quality: int = 85) -> bool:
    """Write ``target``: ``source`` upright with its shorter side scaled to ``side``, in the format its
    name says (``quality`` for JPEG and WebP). A photo no larger than that is copied unchanged. True
    when it was scaled; raises ``BadImage``."""
    image = load_rgb(source, side)  # a JPEG may come out of its decoder already reduced, down to side
    with Image.open(source) as original:
        small_enough = min(original.size) <= side
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if small_enough:
            shutil.copyfile(source, partial)
        else:
            scale = side / min(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            save_as(image.resize(size, Image.LANCZOS), partial, target.suffix, quality, source)
        os.replace(partial, target)
    except OSError as exc:  # the copy's side: a full disk, no permission, --out is a file
        with contextlib.suppress(OSError):
            partial.unlink()
        raise ShituError(f"cannot write {target}: {exc.strerror or exc}") from None
    return not small_enough


def save_as(image: Image.Image, path: Path, suffix: str, quality: int, source: Path):
    """Save in the format ``suffix`` names; a suffix Pillow cannot write makes the source a bad image."""
    try:
        image.save(path, format=Image.registered_extensions().get(suffix.lower()), quality=quality)
    except (ValueError, KeyError) as exc:
        path.unlink(missing_ok=True)
        raise BadImage(f"{source}: cannot write it as {suffix} ({exc})") from None


def check_destination(root: Path, out: Path):
    """The copy must not land on, inside or around the collection it copies."""
    root, out = root.resolve(), out.resolve()
    if out == root or root in out.parents:
        raise ShituError(f"--out {out} is inside {root}; choose a folder outside the collection")
    if out in root.parents:
        raise ShituError(f"--out {out} contains the collection {root}; choose a folder outside it")


def safe_target(root: Path, out: Path, relpath: str) -> Path:
    """Where the copy of ``relpath`` goes, refused if it would land inside the collection ``root``.

    The target's folder is resolved, symlinks and all, before anything is written: a sub-folder of
    ``--out`` that links into the collection would otherwise overwrite the originals.
    """
    target = out / relpath
    landing = Path(os.path.realpath(target.parent)) / target.name
    real_root = Path(os.path.realpath(root))
    if landing == real_root or real_root in landing.parents:
        raise ShituError(f"{target} would be written inside the collection {real_root} (through a symbolic "
                         f"link under --out); nothing was written. Remove the link or choose another --out")
    return target


def shrink_collection(root: Path, items: list[GalleryItem], out: Path, side: int, quality: int = 85,
                      reporter: Reporter = SILENT) -> ShrinkReport:
    """Copy ``items`` (images of the collection ``root``) to the same relative paths under ``out``.

    Unreadable images are skipped and reported; the originals are only ever read: every target is
    checked before the first is written.
    """
    check_destination(Path(root), Path(out))
    targets = [safe_target(Path(root), Path(out), item.relpath) for item in items]
    report = ShrinkReport()
    with reporter.progress(len(items), f"shrinking to {side}px") as bar:
        for item, target in zip(items, targets):
            try:
                scaled = shrink_file(item.path, target, side, quality)
            except BadImage as exc:
                report.bad.append(str(exc))
                reporter.warn(f"skipped {exc}")
            else:
                report.shrunk += scaled
                report.copied += not scaled
                report.bytes_before += item.path.stat().st_size
                report.bytes_after += target.stat().st_size
            bar.advance()
    return report

