"""Digit training images: shapes, determinism, balance, both polarities and sources, the no-font fallback, captions,
and that the digits are learnable (a linear classifier on 8x8 thumbnails transfers from one seed to another)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from zeroshot.train.digit_images import (
    DIGIT_CAPTIONS, DIGIT_WORDS, SOURCES, digit_captions, digit_image_sources, digit_images, installed_fonts,
)

N = 30  # per class
needs_fonts = pytest.mark.skipif(not installed_fonts(), reason="no TrueType fonts under /usr/share/fonts")


@pytest.fixture(scope="module")
def seed0():
    return digit_image_sources(N, seed=0)


@pytest.fixture(scope="module")
def seed1():
    return digit_image_sources(N, seed=1)


def border_grey(images: np.ndarray) -> np.ndarray:
    """Per image, the median grey of its one-pixel frame: the background."""
    g = images[..., 0]
    frame = np.concatenate([g[:, 0, :], g[:, -1, :], g[:, :, 0], g[:, :, -1]], axis=1)
    return np.median(frame, axis=1)


def thumbnails(images: np.ndarray) -> np.ndarray:
    """8x8 thumbnails as scikit-learn's digits were made: ink light on dark (dark-on-light images inverted), cropped
    to the ink's square bounding box, downsampled, standardised per image."""
    g = images[..., 0].astype(np.float32)
    g = np.where((border_grey(images) > 127)[:, None, None], 255 - g, g)
    s = g.shape[1]
    out = []
    for x in g:
        x = np.clip(x - np.median(x), 0, None)
        rows, cols = np.flatnonzero((x > 0.4 * x.max()).any(1)), np.flatnonzero((x > 0.4 * x.max()).any(0))
        h = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        cy, cx = (rows[0] + rows[-1] + 1) / 2 + s, (cols[0] + cols[-1] + 1) / 2 + s  # + s: the padding below
        box = (cx - h / 2, cy - h / 2, cx + h / 2, cy + h / 2)
        out.append(np.asarray(Image.fromarray(np.pad(x, s)).resize((8, 8), Image.Resampling.BILINEAR, box=box)))
    t = np.asarray(out, np.float32).reshape(len(g), 64)
    return (t - t.mean(1, keepdims=True)) / (t.std(1, keepdims=True) + 1e-6)


def test_shapes_dtypes_and_balanced_labels(seed0):
    images, labels, sources = seed0
    assert images.shape == (10 * N, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == sources.shape == (10 * N,) and labels.dtype.kind == "i"
    assert np.array_equal(np.bincount(labels, minlength=10), np.full(10, N))
    assert np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2])
    assert 0 < images.std() and images.min() < 30 and images.max() > 225


def test_digit_images_is_the_images_and_labels_of_digit_image_sources(seed0):
    images, labels = digit_images(N, seed=0)
    assert np.array_equal(images, seed0[0]) and np.array_equal(labels, seed0[1])
    small, small_labels = digit_images(2, size=32, seed=5)
    assert small.shape == (20, 32, 32, 3) and np.array_equal(np.bincount(small_labels), np.full(10, 2))


def test_deterministic_in_the_seed(seed0, seed1):
    again = digit_image_sources(N, seed=0)
    for a, b in zip(seed0, again):
        assert a.tobytes() == b.tobytes()
    assert seed0[0].tobytes() != seed1[0].tobytes()
    assert not np.array_equal(seed0[1], seed1[1])  # the shuffle differs too


@needs_fonts
def test_both_sources_about_half_per_class(seed0):
    _, labels, sources = seed0
    assert set(np.unique(sources)) == {0, 1} and SOURCES == ("font", "sklearn")
    for d in range(10):
        assert abs((sources[labels == d] == 0).sum() - N / 2) <= 1


def test_both_polarities_in_each_source(seed0):
    images, _, sources = seed0
    bg = border_grey(images)
    assert np.all((bg < 90) | (bg > 165))  # a clear background, dark or light
    for src in np.unique(sources):
        dark = bg[sources == src] < 128
        assert 0.25 < dark.mean() < 0.75, (SOURCES[src], dark.mean())


def test_without_fonts_every_image_comes_from_sklearn(tmp_path):
    assert installed_fonts(tmp_path) == [] and installed_fonts(tmp_path / "missing") == []
    broken = tmp_path / "broken.ttf"
    broken.write_bytes(b"not a font")
    assert installed_fonts(tmp_path) == [broken]
    for fonts in ([], [broken]):
        images, labels, sources = digit_image_sources(3, seed=0, fonts=fonts)
        assert images.shape == (30, 64, 64, 3) and np.all(sources == 1)
        assert np.array_equal(np.bincount(labels), np.full(10, 3))


def test_installed_fonts_are_sorted_truetype_files():
    fonts = installed_fonts()
    assert fonts == sorted(fonts) and all(p.suffix.lower() == ".ttf" and p.is_file() for p in fonts)


def test_captions_name_the_digit():
    assert DIGIT_CAPTIONS[0] == 'a photo of the number: "{}".'  # the MNIST card's template
    for d in range(10):
        caps = digit_captions(d)
        assert len(caps) == len(DIGIT_CAPTIONS) == len(set(caps))
        assert all(str(d) in c or DIGIT_WORDS[d] in c for c in caps)
        assert caps[0] == f'a photo of the number: "{d}".' and f"the number {DIGIT_WORDS[d]}" in caps
    with pytest.raises(ValueError):
        digit_captions(10)


def test_digits_are_learnable_across_seeds(seed0, seed1):
    clf = LogisticRegression(C=0.1, max_iter=1000).fit(thumbnails(seed0[0]), seed0[1])
    pred = clf.predict(thumbnails(seed1[0]))
    assert (pred == seed1[1]).mean() > 0.5  # chance is 0.1; about 0.9 where written
    for src in np.unique(seed1[2]):
        rows = seed1[2] == src
        assert (pred[rows] == seed1[1][rows]).mean() > 0.5, SOURCES[src]
