"""Small JPEGs of gallery photos for the web page, made on first request and kept in memory."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from shitu.imageio import load_rgb

SIDE = 256  # longest side of a thumbnail, in pixels: sharp in a 128 px card on a 2x screen
QUALITY = 82


def thumbnail_jpeg(path: Path, side: int = SIDE) -> bytes:
    """The photo upright, fitted into ``side`` x ``side``, as JPEG bytes (decoded with the gallery's limits)."""
    image = load_rgb(path, min_side=side)
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()


class ThumbnailCache:
    """Least-recently-used thumbnails keyed by row id and content hash, so a replaced photo is remade.

    Row ids are never reused by the index, so a cached thumbnail can never show another photo."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self.items: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[int, str], make) -> bytes:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        data = make()
        with self.lock:
            self.items[key] = data
            while len(self.items) > self.capacity:
                self.items.popitem(last=False)
        return data
