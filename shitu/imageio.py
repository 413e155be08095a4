"""Open any image file safely and turn it into an RGB picture.

Phone photos carry EXIF rotation, web images come as palettes with alpha, scanners write CMYK or
16-bit: all become 8-bit RGB here, so training and inference see the same pixels.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

MAX_PIXELS = 80_000_000  # refuse decompression bombs; a 108 MP phone photo still fits after draft()
MAX_FILE_BYTES = 1 << 30  # no photo of MAX_PIXELS needs more; a huge (or sparse) file is refused unread
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
ImageFile.LOAD_TRUNCATED_IMAGES = False

from shitu.errors import BadImage  # noqa: E402


@dataclass(frozen=True)
class Upload:
    """An encoded image that arrived as bytes (a service upload); decoded with the same limits as a file,
    and named ``name`` in every message about it."""

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name


def load_rgb(path: str | Path, min_side: int | None = None, regular_only: bool = True) -> Image.Image:
    """Decode ``path`` upright in RGB; with ``min_side``, JPEGs are downscaled while decoding.

    ``regular_only=False`` lets a user's own argument be a pipe (``<(cat photo.jpg)``); gallery files
    must be regular files (see ``open_image_file``). Raises ``BadImage`` with the reason for anything
    that is not a readable image.
    """
    try:
        with open_image_file(path, regular_only) as handle, warnings.catch_warnings():
            # Pillow warns above ~89 MP before draft() could shrink a JPEG; MAX_PIXELS below counts the
            # drafted size instead. Its hard error (twice that) still stops absurd headers at open.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                if min_side and image.format == "JPEG":
                    image.draft("RGB", (min_side, min_side))
                if image.width * image.height > MAX_PIXELS:
                    raise BadImage(f"{path}: {image.width}x{image.height} pixels is larger than the "
                                   f"{MAX_PIXELS // 1_000_000} MP limit")
                image.load()
                upright = ImageOps.exif_transpose(image) or image
                return to_rgb(upright)
    except BadImage:
        raise
    except Image.UnidentifiedImageError:
        raise BadImage(f"{path}: not an image file") from None
    except Image.DecompressionBombError:
        raise BadImage(f"{path}: too many pixels (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct_error()) as exc:
        raise BadImage(f"{path}: damaged image ({exc})") from None


def open_image_file(path: str | Path, regular_only: bool = True):
    """``path`` opened for reading, after checking it is a file worth reading; raises ``BadImage``.

    Why: reading a FIFO blocks forever, ``/dev/zero`` never ends, and a sparse 1 TB file would be read
    in full before any decoder could refuse it. The file is opened non-blocking and checked with
    ``fstat`` on that same descriptor, so nothing can be swapped in between the check and the read.
    An ``Upload`` is already in memory: only its size is checked.
    """
    if isinstance(path, Upload):
        if len(path.data) > MAX_FILE_BYTES:
            raise BadImage(f"{path}: {len(path.data) / 2**30:.1f} GiB is larger than any image file "
                           f"({MAX_FILE_BYTES >> 30} GiB limit)")
        return io.BytesIO(path.data)
    flags = os.O_RDONLY | (os.O_NONBLOCK if regular_only else 0)
    try:
        descriptor = os.open(path, flags)
    except ValueError:  # an embedded NUL byte, from a list file
        raise BadImage(f"{str(path)!r}: the path contains a NUL byte") from None
    except FileNotFoundError:
        raise BadImage(f"{path}: no such file") from None
    except OSError as exc:
        raise BadImage(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise BadImage(f"{path}: is a directory")
        if regular_only and not stat.S_ISREG(info.st_mode):
            raise BadImage(f"{path}: not a regular file ({file_kind(info.st_mode)})")
        if stat.S_ISREG(info.st_mode) and info.st_size > MAX_FILE_BYTES:
            raise BadImage(f"{path}: {info.st_size / 2**30:.1f} GiB is larger than any image file "
                           f"({MAX_FILE_BYTES >> 30} GiB limit)")
        if regular_only:
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def file_kind(mode: int) -> str:
    """What a non-regular file is, for the skip message."""
    kinds = [(stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def struct_error() -> type[Exception]:
    """Pillow lets ``struct.error`` escape from some damaged headers."""
    import struct

    return struct.error


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64))
        top = full_scale(image.mode, pixels)
        gray = np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def full_scale(mode: str, pixels: np.ndarray) -> float:
    """The value that means white: 65535 for 16 bits (or values above 255), 1.0 for a float image in
    0..1 (the usual convention for float TIFFs), else 255."""
    if mode.startswith("I;16") or pixels.max(initial=0) > 255:
        return 65535.0
    if mode == "F" and pixels.max(initial=0) <= 1.0:
        return 1.0
    return 255.0


def resize_square(image: Image.Image, size: int) -> np.ndarray:
    """Resize to ``size`` x ``size`` (bilinear, whole image, no crop) as an HxWx3 uint8 array."""
    return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def is_image_name(path: Path) -> bool:
    """Whether a file name looks like an image we should try to read."""
    return path.suffix.lower() in IMAGE_SUFFIXES
