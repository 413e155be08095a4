"""Regenerate shitu's small demo gallery of synthetic product photos.

Why this exists: the project needs a gallery it can ship, test against and show in examples without
copying anyone's photos, fonts or artwork. Every package is drawn here with Pillow and numpy
(Pillow's own bundled font included), from fixed seeds, so running the script twice writes
byte-identical files.

Output, under ``--out`` (default: the folder of this script):

* ``demo/<label>/NN_<style>.jpg``: 12 products, 3 clean catalogue-style photos each. Labels carry
  spaces and accents on purpose, and some products are near-twins (same brand, another flavour colour).
* ``queries/<label>__<n>.jpg`` and ``queries/labels.tsv``: 2 phone-snapshot-like shelf photos per
  product (perspective, lighting, colour cast, blur, clutter, occlusion, JPEG noise) with their truth.

Only ``demo/`` and ``queries/`` under ``--out`` are deleted and recreated.

    python tests/synthetic/make_demo.py [--out tests/synthetic]
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

RGB = tuple[int, int, int]
PHOTO_SIZE = 320
JPEG_QUALITY = 88
SEED = 20240611
GALLERY_STYLES = ("catalogue", "rotated", "lighting")
QUERIES_PER_PRODUCT = 2


@dataclass(frozen=True)
class Product:
    """What one package looks like; ``accent`` is the 'flavour colour' that tells twins apart."""

    label: str
    brand: str
    name: str
    shape: str  # box | carton | can | bag | tub
    body: RGB
    accent: RGB
    ink: RGB
    logo: str  # circles | star | stripes | wedges | diamond
    tagline: str


PRODUCTS: tuple[Product, ...] = (
    Product("Nordmilk Whole Milk", "Nordmilk", "Whole\nMilk", "carton",
            (240, 244, 250), (205, 35, 45), (25, 55, 130), "wedges", "1 L  3.5 %"),
    Product("Nordmilk Skim Milk", "Nordmilk", "Skim\nMilk", "carton",
            (240, 244, 250), (60, 170, 215), (25, 55, 130), "wedges", "1 L  0.1 %"),
    Product("Crème Fraîche", "Laiterie Belle", "Crème\nFraîche", "tub",
            (250, 245, 228), (40, 120, 70), (30, 70, 40), "star", "200 g"),
    Product("Müsli Crunch", "Hafergold", "Müsli\nCrunch", "box",
            (235, 180, 40), (150, 60, 20), (90, 40, 10), "wedges", "750 g"),
    Product("Oat Biscuits", "Hafergold", "Oat\nBiscuits", "box",
            (120, 70, 35), (235, 180, 40), (250, 240, 220), "wedges", "300 g"),
    Product("Café Crema", "Bruno", "Café\nCrema", "bag",
            (60, 35, 25), (215, 170, 80), (245, 230, 200), "circles", "500 g"),
    Product("Café Espresso", "Bruno", "Café\nEspresso", "bag",
            (60, 35, 25), (185, 30, 40), (245, 230, 200), "circles", "500 g"),
    Product("Sunny Cola", "Sunny", "Cola", "can",
            (200, 20, 30), (250, 250, 250), (255, 255, 255), "stripes", "330 ml"),
    Product("Sunny Cola Zero", "Sunny", "Cola\nZero", "can",
            (30, 30, 35), (200, 20, 30), (255, 255, 255), "stripes", "330 ml"),
    Product("Tomato Soup", "Rosso", "Tomato\nSoup", "can",
            (245, 240, 230), (180, 25, 25), (150, 20, 20), "circles", "400 g"),
    Product("Pâté Maison", "Le Terroir", "Pâté\nMaison", "box",
            (95, 30, 50), (220, 190, 120), (240, 225, 190), "diamond", "180 g"),
    Product("Jalapeño Chips", "Crispo", "Jalapeño\nChips", "bag",
            (40, 140, 60), (240, 200, 30), (255, 255, 255), "star", "175 g"),
)

# Printable front panel (width, height) of each package shape, and where it sits on the package.
PANEL_SIZE = {"box": (170, 230), "carton": (150, 200), "can": (130, 190), "bag": (180, 200),
              "tub": (200, 150)}
PANEL_OFFSET = {"box": (0, 14), "carton": (0, 50), "can": (0, 16), "bag": (0, 24), "tub": (0, 36)}
PACKAGE_SIZE = {"box": (190, 244), "carton": (150, 250), "can": (130, 222), "bag": (180, 244),
                "tub": (200, 186)}


# ---------------------------------------------------------------- drawing helpers


@lru_cache(maxsize=None)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font with basic layout, so libraqm's presence cannot change pixels."""
    default = ImageFont.load_default(size=size)
    if not isinstance(default, ImageFont.FreeTypeFont):
        raise SystemExit("this script needs Pillow built with FreeType (ImageFont.load_default(size=...))")
    return default.font_variant(layout_engine=ImageFont.Layout.BASIC)


def shade(colour: RGB, factor: float) -> RGB:
    """Darker (factor < 1) or lighter (> 1, towards white) version of a colour, for 3-D faces."""
    if factor <= 1:
        return tuple(int(c * factor) for c in colour)  # type: ignore[return-value]
    return tuple(int(c + (255 - c) * (factor - 1)) for c in colour)  # type: ignore[return-value]


def split_accents(line: str) -> list[tuple[str, str]]:
    """(base letter, combining accents) pairs: the bundled font only has ASCII glyphs, so the
    accents of labels like "Crème Fraîche" are drawn as strokes on top of the plain letters."""
    pairs: list[tuple[str, str]] = []
    for char in unicodedata.normalize("NFD", line):
        if unicodedata.combining(char) and pairs:
            pairs[-1] = (pairs[-1][0], pairs[-1][1] + char)
        else:
            pairs.append((char, ""))
    return pairs


def split_plain(line: str) -> str:
    """The line without its accents: what the bundled font actually lays out."""
    return "".join(base for base, _ in split_accents(line))


def draw_accent(draw: ImageDraw.ImageDraw, mark: str, cx: float, bottom: float, unit: float) -> None:
    """One accent (grave, acute, circumflex, tilde, diaeresis) sitting on ``bottom``, centred at ``cx``."""
    stroke = max(1, round(unit * 0.6))
    if mark == "\u0301":
        draw.line((cx - unit, bottom, cx + unit, bottom - 2 * unit), fill=255, width=stroke)
    elif mark == "\u0300":
        draw.line((cx + unit, bottom, cx - unit, bottom - 2 * unit), fill=255, width=stroke)
    elif mark == "\u0302":
        chevron = (cx - 1.5 * unit, bottom, cx, bottom - 1.8 * unit, cx + 1.5 * unit, bottom)
        draw.line(chevron, fill=255, width=stroke)
    elif mark == "\u0303":
        wave = [(cx + t * 2.0 * unit, bottom - unit + 0.8 * unit * math.sin(t * math.pi))
                for t in np.linspace(-1, 1, 11)]
        draw.line(wave, fill=255, width=stroke)
    elif mark == "\u0308":
        for dx in (-1.1 * unit, 1.1 * unit):
            dot = (cx + dx - 0.6 * unit, bottom - 1.4 * unit, cx + dx + 0.6 * unit, bottom - 0.2 * unit)
            draw.ellipse(dot, fill=255)


def draw_text_line(draw: ImageDraw.ImageDraw, line: str, size: int, centre_x: float, baseline: float) -> None:
    """One centred line into an L mask: plain letters first, then their accents (dotless for i/j)."""
    pairs = split_accents(line)
    plain = split_plain(line)
    left = centre_x - draw.textlength(plain, font=font(size)) / 2
    draw.text((left, baseline), plain, font=font(size), fill=255, anchor="ls")
    x_height = font(size).getbbox("x", anchor="ls")[1]
    for position, (base, marks) in enumerate(pairs):
        if not marks:
            continue
        x = left + draw.textlength(plain[:position], font=font(size))
        glyph_left, glyph_top, glyph_right, _ = font(size).getbbox(base, anchor="ls")
        if base in "ij":  # remove the dot, the accent takes its place
            draw.rectangle((x + glyph_left - 1, baseline + glyph_top - 1, x + glyph_right + 1,
                            baseline + x_height - 1), fill=0)
            glyph_top = x_height
        for mark in marks:
            mark_x = x + (glyph_left + glyph_right) / 2
            draw_accent(draw, mark, mark_x, baseline + glyph_top - size * 0.08, size * 0.08)


def text_mask(text: str, size: int) -> Image.Image:
    """Multi-line centred text as an L mask cropped to its ink, so it can be fitted and centred."""
    lines = text.split("\n")
    width = max(math.ceil(font(size).getlength(split_plain(line))) for line in lines) + 8
    pitch = round(size * 1.15)
    mask = Image.new("L", (width, pitch * len(lines) + size), 0)
    draw = ImageDraw.Draw(mask)
    for number, line in enumerate(lines):
        draw_text_line(draw, line, size, width / 2, round(size * 1.35) + number * pitch)
    return mask.crop(mask.getbbox())


def draw_fitted_text(image: Image.Image, centre: tuple[float, float], text: str,
                     box: tuple[float, float], largest: int, fill: RGB) -> None:
    """Centre (multi-line) text at the largest font size whose ink fits ``box`` (width, height)."""
    for size in range(largest, 7, -1):
        mask = text_mask(text, size)
        if mask.width <= box[0] and mask.height <= box[1]:
            break
    image.paste(fill, (round(centre[0] - mask.width / 2), round(centre[1] - mask.height / 2)), mask)


def star_points(cx: float, cy: float, radius: float, points: int = 5) -> list[tuple[float, float]]:
    """Corners of a star polygon, alternating outer and inner radius."""
    corners = []
    for i in range(points * 2):
        r = radius if i % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + i * math.pi / points
        corners.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return corners


def draw_logo(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, product: Product) -> None:
    """A simple geometric brand mark: enough structure for embeddings to latch on to."""
    box = (cx - r, cy - r, cx + r, cy + r)
    draw.ellipse(box, fill=product.ink if kind != "stripes" else product.accent)
    if kind == "circles":
        for k, colour in enumerate((product.accent, product.body, product.accent)):
            inset = r * (0.2 + 0.25 * k)
            draw.ellipse((cx - r + inset, cy - r + inset, cx + r - inset, cy + r - inset), fill=colour)
    elif kind == "star":
        draw.polygon(star_points(cx, cy, r * 0.85), fill=product.accent)
    elif kind == "wedges":
        for k in range(0, 360, 60):
            draw.pieslice(box, k, k + 30, fill=product.accent)
        draw.ellipse((cx - r / 3, cy - r / 3, cx + r / 3, cy + r / 3), fill=product.body)
    elif kind == "stripes":
        for k in range(-2, 3):
            y = cy + k * r * 0.36
            half = math.sqrt(max(r * r - (y - cy) ** 2, 0)) * 0.9
            draw.line((cx - half, y, cx + half, y), fill=product.body, width=max(2, int(r * 0.14)))
    elif kind == "diamond":
        draw.polygon([(cx, cy - r * 0.8), (cx + r * 0.8, cy), (cx, cy + r * 0.8), (cx - r * 0.8, cy)],
                     fill=product.accent)


# ---------------------------------------------------------------- one package


def draw_panel(product: Product) -> Image.Image:
    """The printed front of the package: brand, logo, flavour swoosh, name and a tagline band."""
    width, height = PANEL_SIZE[product.shape]
    panel = Image.new("RGB", (width, height), product.body)
    draw = ImageDraw.Draw(panel)
    draw.polygon([(0, 0.52 * height), (width, 0.40 * height), (width, 0.58 * height), (0, 0.68 * height)],
                 fill=product.accent)
    draw_fitted_text(panel, (width / 2, 0.11 * height), product.brand, (width * 0.85, 0.16 * height),
                     28, product.ink)
    radius = 0.15 * min(width, height * 1.2)
    draw_logo(draw, product.logo, width / 2, 0.34 * height, radius, product)
    draw_fitted_text(panel, (width / 2, 0.76 * height), product.name, (width * 0.8, 0.22 * height),
                     30, product.ink)
    band_top = 0.89 * height
    draw.rectangle((width * 0.18, band_top, width * 0.82, height - 3), fill=(252, 252, 246))
    draw_fitted_text(panel, (width / 2, (band_top + height - 3) / 2), product.tagline,
                     (width * 0.6, height - 3 - band_top), 14, (30, 30, 30))
    return panel


def shape_mask(shape: str) -> Image.Image:
    """Silhouette of the package (white = package), drawn in package coordinates."""
    width, height = PACKAGE_SIZE[shape]
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "box":
        draw.polygon([(0, 14), (20, 0), (width, 0), (width, height - 14), (width - 20, height), (0, height)],
                     fill=255)
    elif shape == "carton":
        draw.polygon([(0, 50), (15, 10), (15, 0), (width - 15, 0), (width - 15, 10), (width, 50),
                      (width, height), (0, height)], fill=255)
    elif shape == "can":
        draw.rectangle((0, 12, width, height - 12), fill=255)
        draw.ellipse((0, 0, width, 26), fill=255)
        draw.ellipse((0, height - 26, width, height), fill=255)
    elif shape == "bag":
        zigzag_top = [(x, 6 if (x // 10) % 2 else 0) for x in range(0, width + 1, 10)]
        zigzag_bottom = [(x, height - (6 if (x // 10) % 2 else 0)) for x in range(width, -1, -10)]
        draw.polygon(zigzag_top + zigzag_bottom, fill=255)
    elif shape == "tub":
        draw.polygon([(0, 30), (width, 30), (width - 18, height), (18, height)], fill=255)
        draw.ellipse((0, 0, width, 40), fill=255)
    return mask


def draw_shape_details(package: Image.Image, product: Product) -> None:
    """Faces, lids, rims and crimps that turn a flat panel into a box, carton, can, bag or tub."""
    draw = ImageDraw.Draw(package)
    width, height = package.size
    body = product.body
    if product.shape == "box":
        draw.polygon([(0, 14), (20, 0), (width, 0), (width - 20, 14)], fill=shade(body, 1.3))
        draw.polygon([(width - 20, 14), (width, 0), (width, height - 14), (width - 20, height)],
                     fill=shade(body, 0.6))
    elif product.shape == "carton":
        draw.polygon([(0, 50), (15, 10), (width - 15, 10), (width, 50)], fill=shade(body, 0.85))
        draw.rectangle((15, 0, width - 15, 10), fill=shade(body, 0.75))
        draw.line((0, 50, width, 50), fill=shade(body, 0.6), width=2)
    elif product.shape == "can":
        draw.rectangle((0, height - 16, width, height), fill=(170, 172, 178))
        draw.ellipse((0, height - 26, width, height), fill=(150, 152, 158))
        draw.ellipse((0, 0, width, 26), fill=(196, 198, 204))
        draw.ellipse((10, 4, width - 10, 22), fill=(160, 162, 168))
    elif product.shape == "bag":
        for top, bottom in ((0, 24), (height - 20, height)):
            draw.rectangle((0, top, width, bottom), fill=shade(body, 0.7))
            for x in range(4, width, 8):
                draw.line((x, top, x, bottom), fill=shade(body, 0.55), width=1)
    elif product.shape == "tub":
        draw.rectangle((0, 20, width, 38), fill=shade(product.accent, 0.8))
        draw.ellipse((0, 0, width, 36), fill=product.accent)
        draw.ellipse((14, 5, width - 14, 29), fill=shade(product.accent, 1.25))


def cylinder_light(package: Image.Image, strength: float) -> Image.Image:
    """Brighter middle, darker sides: how light falls on a can or a stuffed bag."""
    width = package.width
    x = np.linspace(0.0, math.pi, width)
    profile = 1.0 - strength + strength * 1.25 * np.sin(x) ** 0.8
    profile += 0.18 * strength * np.exp(-((x - 1.0) ** 2) / 0.02)  # a specular stripe left of centre
    pixels = np.asarray(package, dtype=np.float32) * profile[None, :, None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@lru_cache(maxsize=None)
def package_image(index: int) -> Image.Image:
    """The package of ``PRODUCTS[index]`` as RGBA on a transparent background (cached, reused)."""
    product = PRODUCTS[index]
    package = Image.new("RGB", PACKAGE_SIZE[product.shape], product.body)
    package.paste(draw_panel(product), PANEL_OFFSET[product.shape])
    draw_shape_details(package, product)
    if product.shape in ("can", "bag", "tub"):
        package = cylinder_light(package, {"can": 0.35, "bag": 0.15, "tub": 0.2}[product.shape])
    package.putalpha(shape_mask(product.shape))
    return package


# ---------------------------------------------------------------- composing photos


def place_package(scene: Image.Image, package: Image.Image, centre: tuple[float, float],
                  fit: tuple[float, float], angle: float = 0.0,
                  shadow: float = 0.35) -> tuple[int, int, int, int]:
    """Scale ``package`` into ``fit`` (w, h), rotate, paste with a soft drop shadow; return its box."""
    scale = min(fit[0] / package.width, fit[1] / package.height)
    new_size = (round(package.width * scale), round(package.height * scale))
    sized = package.resize(new_size, Image.Resampling.LANCZOS)
    if angle:
        sized = sized.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    left, top = round(centre[0] - sized.width / 2), round(centre[1] - sized.height / 2)
    if shadow:
        soft = sized.getchannel("A").filter(ImageFilter.GaussianBlur(6)).point(lambda v: int(v * shadow))
        scene.paste((0, 0, 0), (left + 6, top + 8), soft)
    scene.paste(sized, (left, top), sized)
    return left, top, left + sized.width, top + sized.height


def gradient_image(base: np.ndarray, falloff: tuple[float, float]) -> Image.Image:
    """A flat colour that darkens from top to bottom: the simplest believable backdrop."""
    rows = np.linspace(falloff[0], falloff[1], PHOTO_SIZE, dtype=np.float32)[:, None, None]
    pixels = np.broadcast_to(base[None, None, :] * rows, (PHOTO_SIZE, PHOTO_SIZE, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def gallery_photo(index: int, style: str, rng: np.random.Generator) -> Image.Image:
    """One catalogue shot; the three styles differ a little (pose, backdrop tint, lighting)."""
    tint = {"catalogue": 0.0, "rotated": 6.0, "lighting": 16.0}[style]
    base = np.array([244.0, 243.0, 240.0]) + rng.uniform(-tint, tint, 3)
    scene = gradient_image(np.clip(base, 0, 255), (1.0, 0.92))
    angle = float(rng.uniform(5, 10) * rng.choice([-1, 1])) if style == "rotated" else 0.0
    fit = (250.0, 260.0) if style == "catalogue" else (rng.uniform(215, 240), rng.uniform(225, 250))
    shift = (0.0, 0.0) if style == "catalogue" else tuple(rng.uniform(-12, 12, 2))
    place_package(scene, package_image(index), (160 + shift[0], 160 + shift[1]), fit, angle)
    if style == "lighting":
        scene = ImageEnhance.Brightness(scene).enhance(rng.uniform(0.85, 0.95))
        scene = ImageEnhance.Contrast(scene).enhance(rng.uniform(1.05, 1.15))
        scene = ImageEnhance.Color(scene).enhance(rng.uniform(0.85, 1.15))
    return scene


def shelf_background(rng: np.random.Generator) -> Image.Image:
    """A store shelf: a muted back wall between two shelf boards, each with a dark front edge."""
    wall = rng.uniform(90, 190, 3)
    scene = gradient_image(wall, (1.1, 0.8))
    draw = ImageDraw.Draw(scene)
    board = tuple(int(v) for v in rng.uniform(150, 230, 3))
    for y in (int(rng.integers(-10, 20)), int(rng.integers(285, 305))):
        draw.rectangle((0, y, PHOTO_SIZE, y + 18), fill=board)
        draw.rectangle((0, y + 18, PHOTO_SIZE, y + 26), fill=shade(board, 0.5))
    return scene


def add_clutter(scene: Image.Image, rng: np.random.Generator, count: int = 12) -> None:
    """Random blobs and bars in muted colours: the busy, unrelated parts of a real shelf."""
    draw = ImageDraw.Draw(scene)
    for _ in range(count):
        x, y = rng.uniform(0, PHOTO_SIZE, 2)
        w, h = rng.uniform(15, 70, 2)
        colour = tuple(int(v) for v in rng.uniform(40, 230, 3))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.rectangle((x, y, x + w, y + h), fill=colour)


def add_neighbours(scene: Image.Image, rng: np.random.Generator, index: int) -> None:
    """Parts of two other products at the frame edges (never the target's own brand)."""
    brand = PRODUCTS[index].brand
    candidates = [i for i, product in enumerate(PRODUCTS) if product.brand != brand]
    for side, pick in zip((-1, 1), rng.choice(candidates, 2, replace=False)):
        centre = (160 + side * rng.uniform(185, 215), rng.uniform(150, 185))
        place_package(scene, package_image(int(pick)), centre, (220.0, 250.0), shadow=0.25)


def perspective_coefficients(target: np.ndarray, source: np.ndarray) -> tuple[float, ...]:
    """The 8 numbers Pillow's PERSPECTIVE transform wants to map ``target`` corners to ``source``."""
    rows, values = [], []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        values.extend([u, v])
    return tuple(np.linalg.solve(np.array(rows, dtype=np.float64), np.array(values, dtype=np.float64)))


def perspective_warp(package: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The package seen off-axis: one side farther away, plus a little jitter on every corner."""
    width, height = package.size
    margin = round(0.2 * max(width, height))
    source = np.array([(0, 0), (width, 0), (width, height), (0, height)], dtype=np.float64)
    yaw = rng.uniform(0.06, 0.14) * rng.choice([-1, 1])  # >0: right edge farther away (shorter)
    right, left = max(yaw, 0.0) * height, max(-yaw, 0.0) * height
    squeeze = np.array([(0, left), (0, right), (0, -right), (0, -left)])  # corners TL, TR, BR, BL
    jitter = rng.uniform(-0.05, 0.05, (4, 2)) * (width, height)
    target = source + squeeze + jitter + margin
    size = (width + 2 * margin, height + 2 * margin)
    coefficients = perspective_coefficients(target, source)
    return package.transform(size, Image.Transform.PERSPECTIVE, coefficients, Image.Resampling.BICUBIC)


def add_occlusion(scene: Image.Image, rng: np.random.Generator, box: tuple[int, int, int, int]) -> None:
    """Something in front of the package: a thumb from the frame edge or a skewed price sticker."""
    left, top, right, bottom = box
    draw = ImageDraw.Draw(scene)
    if rng.random() < 0.5:
        skin = tuple(int(v) for v in rng.uniform([170, 120, 95], [225, 170, 140]))
        x = left + rng.uniform(-20, 30) if rng.random() < 0.5 else right - rng.uniform(-20, 30)
        draw.ellipse((x - 38, bottom - 95, x + 38, PHOTO_SIZE + 60), fill=skin)
        draw.ellipse((x - 22, bottom - 88, x + 22, bottom - 52), fill=shade(skin, 1.15))  # nail
        return
    sticker = Image.new("RGBA", (96, 46), (250, 220, 40, 255))
    draw_fitted_text(sticker, (48, 23), f"{rng.uniform(0.5, 9.9):.2f}", (84, 36), 26, (200, 20, 20))
    sticker = sticker.rotate(float(rng.uniform(-25, 25)), Image.Resampling.BICUBIC, expand=True)
    corner = (int(rng.uniform(left - 30, right - 60)), int(rng.uniform(top + 20, bottom - 50)))
    scene.paste(sticker, corner, sticker)


def lighting_field(rng: np.random.Generator) -> np.ndarray:
    """Uneven light (HxW multipliers): a linear falloff in a random direction plus a vignette."""
    axis = np.linspace(-1.0, 1.0, PHOTO_SIZE, dtype=np.float32)
    xs, ys = np.meshgrid(axis, axis)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / 2.0  # about -0.7 .. 0.7
    vignette = 1.0 - 0.25 * (xs ** 2 + ys ** 2) / 2.0
    return (rng.uniform(0.85, 1.0) + rng.uniform(0.25, 0.45) * ramp) * vignette


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """Compress hard and decode again: the blocky artefacts of a messaging-app photo."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def camera_effects(scene: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Phone-camera look: uneven light, colour cast, defocus blur, sensor noise, heavy JPEG."""
    cast = rng.uniform([0.85, 0.9, 0.75], [1.1, 1.05, 1.1]).astype(np.float32)
    pixels = np.asarray(scene, dtype=np.float32) * lighting_field(rng)[..., None] * cast
    blurred = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    blurred = blurred.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 1.6))))
    noisy = np.asarray(blurred, dtype=np.float32) + rng.normal(0.0, 4.0, (PHOTO_SIZE, PHOTO_SIZE, 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    return jpeg_roundtrip(image, int(rng.integers(30, 50)))


def query_photo(index: int, rng: np.random.Generator) -> Image.Image:
    """A phone snapshot of the package on a cluttered shelf: harder, but still the same product."""
    scene = shelf_background(rng)
    add_clutter(scene, rng)
    add_neighbours(scene, rng, index)
    package = perspective_warp(package_image(index), rng)
    centre = (160 + rng.uniform(-20, 20), 160 + rng.uniform(-15, 15))
    fit = (rng.uniform(260, 320), rng.uniform(270, 330))  # the warp canvas has a transparent margin
    box = place_package(scene, package, centre, fit, float(rng.uniform(-6, 6)), shadow=0.3)
    add_occlusion(scene, rng, visible_box(box, package))
    return camera_effects(scene, rng)


def visible_box(box: tuple[int, int, int, int], package: Image.Image) -> tuple[int, int, int, int]:
    """Shrink a pasted box to the package's opaque pixels (the warp canvas has a transparent margin)."""
    left, top, right, bottom = box
    opaque_left, opaque_top, opaque_right, opaque_bottom = package.getchannel("A").getbbox()
    scale_x, scale_y = (right - left) / package.width, (bottom - top) / package.height
    return (int(left + opaque_left * scale_x), int(top + opaque_top * scale_y),
            int(left + opaque_right * scale_x), int(top + opaque_bottom * scale_y))


# ---------------------------------------------------------------- writing files


def save_jpeg(image: Image.Image, path: Path) -> None:
    """Plain baseline JPEG without EXIF or timestamps, so reruns are byte-identical."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=JPEG_QUALITY)


def write_gallery(folder: Path) -> int:
    """``folder/<label>/NN_<style>.jpg`` for every product and style; returns the image count."""
    for index, product in enumerate(PRODUCTS):
        for number, style in enumerate(GALLERY_STYLES, 1):
            rng = np.random.default_rng([SEED, 1, index, number])
            save_jpeg(gallery_photo(index, style, rng), folder / product.label / f"{number:02d}_{style}.jpg")
    return len(PRODUCTS) * len(GALLERY_STYLES)


def write_queries(folder: Path) -> int:
    """``folder/<label>__<n>.jpg`` plus ``labels.tsv`` (``filename<TAB>label``); returns the count."""
    lines = []
    for index, product in enumerate(PRODUCTS):
        for number in range(1, QUERIES_PER_PRODUCT + 1):
            rng = np.random.default_rng([SEED, 2, index, number])
            name = f"{product.label}__{number}.jpg"
            save_jpeg(query_photo(index, rng), folder / name)
            lines.append(f"{name}\t{product.label}\n")
    (folder / "labels.tsv").write_text("".join(lines), encoding="utf-8", newline="\n")
    return len(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: only the output folder can be chosen; everything else is fixed for determinism."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder that receives demo/ and queries/ (default: this script's folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Delete and recreate ``demo/`` and ``queries/`` under ``--out``; nothing else is touched."""
    out = parse_args(argv).out
    for sub in ("demo", "queries"):
        shutil.rmtree(out / sub, ignore_errors=True)
    gallery_count = write_gallery(out / "demo")
    query_count = write_queries(out / "queries")
    print(f"wrote {gallery_count} gallery images to {out / 'demo'}")
    print(f"wrote {query_count} queries to {out / 'queries'}")


if __name__ == "__main__":
    main()
