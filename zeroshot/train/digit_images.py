"""Digit training images (0-9) with captions, built offline from data already installed, so the default model learns
digits, which are outside its Tiny ImageNet + Flickr world (issue 19). Never uses an MNIST image.

Two sources, mixed roughly half and half per class:

- **Fonts**: digits rendered with Pillow from the TrueType files under ``/usr/share/fonts`` (``installed_fonts()``),
  with random font, size (digit height 40-90 % of the image), position, rotation (+-15 deg), stroke width (thick pen
  strokes), polarity (light on dark like MNIST, or dark on light), sometimes a slight blur, and faint noise. Found
  where this was written (Debian packages): Liberation 1.07.4 (Sans, Sans Narrow, Serif, Mono; 16 files), licensed
  under the Liberation Fonts license -- GPL v2 with a font-embedding exception, (c) 2007 Red Hat (not yet SIL OFL,
  which only Liberation 2.x uses; ``/usr/share/doc/fonts-liberation/copyright`` and the fonts' name table); DejaVu
  2.37 (Sans, Sans Condensed, Sans Mono, Serif, Serif Condensed, Math TeX Gyre; 22 files), under the Bitstream Vera
  font license, DejaVu changes in the public domain (``/usr/share/doc/fonts-dejavu-core/copyright``). Only the
  rendered pixels are used; no font file is copied or distributed. Fonts that cannot draw ten distinct digits are
  skipped. **If no usable font is installed, every image comes from the second source.** Rendered images depend on
  the installed fonts (and FreeType), so the same seed gives the same bytes only on the same installation.
- **scikit-learn's digits** (``sklearn.datasets.load_digits``): 1,797 handwritten 8x8 digits (values 0-16) from 13
  writers, "a copy of the test set of the UCI ML hand-written digits datasets" (Optical Recognition of Handwritten
  Digits, E. Alpaydin, 1998), bundled with scikit-learn under its BSD-3-Clause licence, no download. Each is drawn
  with replacement, upscaled with bicubic resampling under a small random affine (scale, rotation, shear, shift),
  random polarity.

Captions: ``DIGIT_CAPTIONS`` / ``digit_captions(label)``, the MNIST card's template plus a few more, with the digit as
a numeral and as an English word.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_ROOT = Path("/usr/share/fonts")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# "{}" is the numeral, "{word}" the English word. The first is the MNIST card's own template (data/mnist.json).
DIGIT_CAPTIONS = [
    'a photo of the number: "{}".',
    "the digit {}",
    "a handwritten {}",
    "the number {word}",
    "a black and white photo of the number {}",
    "a photo of the digit {}.",
    "a handwritten digit {}.",
    "the numeral {}",
    "the number {} ({word})",
    "a handwritten {word}",
    "{}",
]

SOURCES = ("font", "sklearn")  # values of the ``sources`` array from ``digit_image_sources``

_REF_PX = 100  # font size at which a digit's glyph height is measured


def digit_captions(label: int) -> list[str]:
    """The captions of digit ``label`` (0-9), one per template in ``DIGIT_CAPTIONS``."""
    if not 0 <= int(label) <= 9:
        raise ValueError(f"digit label must be 0-9, got {label}")
    return [t.format(int(label), word=DIGIT_WORDS[int(label)]) for t in DIGIT_CAPTIONS]


def installed_fonts(root: str | Path = FONT_ROOT) -> list[Path]:
    """Sorted TrueType files (``*.ttf``, any case) under ``root``; empty when there are none."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.suffix.lower() == ".ttf" and p.is_file())


@functools.lru_cache(maxsize=4096)
def _font(path: str, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, px)


@functools.cache
def _digit_heights(path: str) -> tuple[float, ...] | None:
    """Per digit, its glyph height at ``_REF_PX``; None when the font cannot draw ten distinct, non-empty digits."""
    try:
        font = _font(path, _REF_PX)
    except OSError:
        return None
    heights, shapes = [], set()
    for d in range(10):
        left, top, right, bottom = font.getbbox(str(d))
        if bottom - top < 10 or right - left < 3:
            return None
        mask = font.getmask(str(d))
        shapes.add((mask.size, bytes(mask)))
        heights.append(float(bottom - top))
    return tuple(heights) if len(shapes) == 10 else None


def _usable(fonts: Sequence[str | Path]) -> list[str]:
    return [str(p) for p in fonts if _digit_heights(str(p)) is not None]


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # a zero border, so that bicubic resampling fades the ink at the 8x8 box's edge instead of cutting it
    padded = np.pad(bunch.images.astype(np.float32) / 16.0, ((0, 0), (2, 2), (2, 2)))
    return padded, bunch.target.astype(np.int64)


class _Canvas:
    """The output images and, per image, its background and ink grey and noise level; ``put`` composites one."""

    def __init__(self, n: int, size: int, rng: np.random.Generator):
        self.images = np.empty((n, size, size, 3), np.uint8)
        self.rng = rng
        light_on_dark = rng.random(n) < 0.5  # like MNIST; else dark ink on a light ground
        dark, light, ink_dark = rng.uniform(0, 50, size=n), rng.uniform(195, 255, size=n), rng.uniform(0, 60, size=n)
        self.bg = np.where(light_on_dark, dark, light).astype(np.float32)
        self.fg = np.where(light_on_dark, light, ink_dark).astype(np.float32)
        self.noise = np.where(rng.random(n) < 0.5, rng.uniform(0, 6, size=n), 0.0).astype(np.float32)

    def put(self, row: int, ink: np.ndarray) -> None:
        """Image ``row`` from its ink coverage ``ink`` (size, size), float32 in [0, 1]; overwrites ``ink``."""
        grey = ink
        grey *= self.fg[row] - self.bg[row]
        grey += self.bg[row]
        if self.noise[row] > 0:
            grey += self.noise[row] * self.rng.standard_normal(grey.shape, dtype=np.float32)
        np.clip(grey, 0, 255, out=grey)
        np.rint(grey, out=grey)
        self.images[row] = grey[..., None]


def _render_font(canvas: _Canvas, rows: np.ndarray, labels: np.ndarray, fonts: list[str]) -> None:
    """Images ``rows``: digits ``labels`` rendered from fonts."""
    rng, n, size = canvas.rng, len(labels), canvas.images.shape[1]
    font_idx = rng.integers(len(fonts), size=n)
    height = rng.uniform(0.40, 0.90, size=n) * size
    angle = rng.uniform(-15.0, 15.0, size=n)
    # 0-3 px for the tallest digits at 64 px, thinner for small ones (a thick stroke fills a small digit's holes)
    stroke = np.rint(rng.uniform(0, 3.49, size=n) * height / (0.9 * 64)).astype(int)
    jitter = rng.uniform(-1.0, 1.0, size=(n, 2))
    blur = np.where(rng.random(n) < 0.3, rng.uniform(0.4, 1.2, size=n) * size / 64, 0.0)
    for i in range(n):
        path, text = fonts[font_idx[i]], str(int(labels[i]))
        px = max(4, round(float(height[i]) * _REF_PX / _digit_heights(path)[labels[i]]))
        font = _font(path, px)
        left, top, right, bottom = font.getbbox(text, stroke_width=int(stroke[i]))
        w, h = right - left, bottom - top
        # keep the rotated box inside the image where it fits; the shift is a fraction of the room left
        a = math.radians(abs(angle[i]))
        rw, rh = w * math.cos(a) + h * math.sin(a), w * math.sin(a) + h * math.cos(a)
        cx = size / 2 + jitter[i, 0] * max(0.0, (size - rw) / 2)
        cy = size / 2 + jitter[i, 1] * max(0.0, (size - rh) / 2)
        img = Image.new("L", (size, size), 0)
        ImageDraw.Draw(img).text((cx - (left + right) / 2, cy - (top + bottom) / 2), text, fill=255, font=font,
                                 stroke_width=int(stroke[i]), stroke_fill=255)
        img = img.rotate(float(angle[i]), resample=Image.Resampling.BILINEAR, center=(cx, cy), fillcolor=0)
        if blur[i] > 0:
            img = img.filter(ImageFilter.GaussianBlur(float(blur[i])))
        canvas.put(rows[i], np.asarray(img, np.float32) * (1 / 255))


def _render_sklearn(canvas: _Canvas, rows: np.ndarray, labels: np.ndarray) -> None:
    """Images ``rows``: scikit-learn digits of classes ``labels``, drawn with replacement, upscaled and jittered."""
    images, targets = _sklearn_digits()
    rng, n, size = canvas.rng, len(labels), canvas.images.shape[1]
    by_class = [np.flatnonzero(targets == d) for d in range(10)]
    counts = np.array([len(c) for c in by_class])
    which = (rng.random(n) * counts[labels]).astype(np.int64)  # uniform within the class, with replacement
    pick = np.array([by_class[d][j] for d, j in zip(labels, which)], dtype=np.int64)
    scale = rng.uniform(0.60, 0.95, size=n) * size / 8  # output px per input px: the 8x8 box spans 60-95 %
    aspect = np.exp(rng.uniform(-0.1, 0.1, size=n))
    angle = np.radians(rng.uniform(-12.0, 12.0, size=n))
    shear = rng.uniform(-0.15, 0.15, size=n)
    shift = rng.uniform(-0.08, 0.08, size=(n, 2)) * size
    contrast = rng.uniform(1.0, 1.6, size=n)  # steeper ink edges than plain bicubic blobs, sometimes
    for i in range(n):
        # forward map (input -> output): A = R(angle) @ Shear @ diag(scale*aspect, scale/aspect), centred; PIL wants
        # the inverse (output pixel -> input pixel)
        c, s = math.cos(angle[i]), math.sin(angle[i])
        fwd = np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear[i]], [0.0, 1.0]]) @ np.diag(
            [scale[i] * aspect[i], scale[i] / aspect[i]])
        inv = np.linalg.inv(fwd)
        centre_out = np.array([size / 2, size / 2]) + shift[i]
        offset = np.array([6.0, 6.0]) - inv @ centre_out  # the padded 12x12 digit's centre
        data = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
        img = Image.fromarray(images[pick[i]]).transform(
            (size, size), Image.Transform.AFFINE, data, resample=Image.Resampling.BICUBIC, fillcolor=0.0)
        ink = np.asarray(img, np.float32) * contrast[i] - (contrast[i] - 1) * 0.25
        canvas.put(rows[i], np.clip(ink, 0.0, 1.0, out=ink))


def digit_image_sources(n_per_class: int, *, size: int = 64, seed: int = 0, fonts: Sequence[str | Path] | None = None,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like ``digit_images``, also returning per image its source: 0 = font, 1 = scikit-learn (``SOURCES``).

    ``fonts`` overrides ``installed_fonts()``; fonts that cannot draw ten distinct digits are skipped, and with no
    usable font every image comes from scikit-learn's digits.
    """
    if n_per_class < 0:
        raise ValueError(f"n_per_class must be >= 0, got {n_per_class}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    rng = np.random.default_rng(seed)
    usable = _usable(installed_fonts() if fonts is None else fonts)
    n_font = (n_per_class + 1) // 2 if usable else 0
    order = rng.permutation(10 * n_per_class)  # shuffled; each image is rendered straight into its place
    labels = np.repeat(np.arange(10, dtype=np.int64), n_per_class)[order]
    sources = np.tile(np.r_[np.zeros(n_font, np.int64), np.ones(n_per_class - n_font, np.int64)], 10)[order]

    canvas = _Canvas(len(labels), size, rng)
    font_rows, sk_rows = np.flatnonzero(sources == 0), np.flatnonzero(sources == 1)
    if len(font_rows):
        _render_font(canvas, font_rows, labels[font_rows], usable)
    if len(sk_rows):
        _render_sklearn(canvas, sk_rows, labels[sk_rows])
    return canvas.images, labels, sources


def digit_images(n_per_class: int, *, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` images of each digit 0-9, shuffled: (N, size, size, 3) uint8 RGB and (N,) int64 labels.

    About half of each class is rendered from installed fonts, the rest drawn from scikit-learn's handwritten digits
    (all of it when no font is installed); see the module docstring. Deterministic in ``seed`` (a numpy Generator,
    no global state) on a given installation.
    """
    images, labels, _ = digit_image_sources(n_per_class, size=size, seed=seed)
    return images, labels
