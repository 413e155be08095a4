"""Training data: labelled records decoded once into an in-memory uint8 cache, and P x K batches."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from shitu.errors import BadImage, ShituError
from shitu.gallery import GalleryItem, read_gallery
from shitu.imageio import load_rgb, resize_square


def read_records(root: str, lists: list[str]) -> list[GalleryItem]:
    """Items of the gallery folder, or of its list files together (image paths relative to ``root``)."""
    return read_gallery(root, lists)


def decode_all(items: list[GalleryItem], side: int, threads: int = 2, progress=None) -> np.ndarray:
    """Decode and resize every image to ``side`` x ``side``; unreadable files are an error here."""
    def one(item):
        try:
            return resize_square(load_rgb(item.path, side), side)
        except BadImage as exc:
            raise ShituError(f"training image unreadable: {exc}") from None

    out = np.empty((len(items), side, side, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for i, array in enumerate(pool.map(one, items)):
            out[i] = array
            if progress:
                progress()
    return out


class PKSampler:
    """Batches of P classes x K images each, so every anchor has positives and negatives."""

    def __init__(self, labels: np.ndarray, classes: int, per_class: int, seed: int):
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self.classes, self.per_class = min(classes, len(self.by_class)), per_class
        self.steps = max(1, len(labels) // (self.classes * per_class))
        self.seed = seed

    def epoch(self, epoch: int):
        """The batches (arrays of indices) of one epoch; deterministic given seed and epoch."""
        rng = np.random.default_rng(self.seed * 100_003 + epoch)
        for _ in range(self.steps):
            chosen = rng.choice(len(self.by_class), self.classes, replace=False)
            yield np.concatenate([
                rng.choice(self.by_class[c], self.per_class, replace=len(self.by_class[c]) < self.per_class)
                for c in chosen
            ])
