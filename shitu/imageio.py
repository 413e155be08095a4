"""Open any image file safely and turn it into an RGB picture.

Phone photos carry EXIF rotation, web images come as palettes with alpha, scanners write CMYK or
16-bit: all become 8-bit RGB here, so training and inference see the same pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

MAX_PIXELS = 80_000_000  # refuse decompression bombs; a 108 MP phone photo still fits after draft()
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
ImageFile.LOAD_TRUNCATED_IMAGES = False

from shitu.errors import BadImage  # noqa: E402


def load_rgb(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Decode ``path`` upright in RGB; with ``min_side``, JPEGs are downscaled while decoding.

    Raises ``BadImage`` with the reason for anything that is not a readable image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise BadImage(f"{path}: {image.width}x{image.height} pixels is larger than the "
                                   f"{MAX_PIXELS // 1_000_000} MP limit")
                if min_side and image.format == "JPEG":
                    image.draft("RGB", (min_side, min_side))
                image.load()
                upright = ImageOps.exif_transpose(image) or image
                return to_rgb(upright)
    except BadImage:
        raise
    except FileNotFoundError:
        raise BadImage(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadImage(f"{path}: is a directory") from None
    except Image.UnidentifiedImageError:
        raise BadImage(f"{path}: not an image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"{path}: too many pixels (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct_error()) as exc:
        raise BadImage(f"{path}: damaged image ({exc})") from None


def struct_error() -> type[Exception]:
    """Pillow lets ``struct.error`` escape from some damaged headers."""
    import struct

    return struct.error


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        gray = np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def resize_square(image: Image.Image, size: int) -> np.ndarray:
    """Resize to ``size`` x ``size`` (bilinear, whole image, no crop) as an HxWx3 uint8 array."""
    return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def is_image_name(path: Path) -> bool:
    """Whether a file name looks like an image we should try to read."""
    return path.suffix.lower() in IMAGE_SUFFIXES
