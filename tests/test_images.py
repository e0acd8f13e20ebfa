"""Image decoding (robust to bad files, any PIL mode) and the eval transform's exactness against open_clip."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import zeroshot.images as images_mod
from conftest import shared
from zeroshot.images import BadImage, ImageTransform, open_image, to_rgb


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth-ish random RGB content, so resampling differences show up in the pixels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 4), max(2, width // 4), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


# --- open_image: bad files ---------------------------------------------------------------------------------------

def test_truncated_jpeg_raises_bad_image(tmp_path):
    data = encode(noise_image(64, 48), "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="truncated"):
        open_image(path)


def test_truncated_jpeg_bytes_raise_bad_image():
    data = encode(noise_image(64, 48), "JPEG", quality=90)
    with pytest.raises(BadImage, match="cannot decode"):
        open_image(data[: len(data) // 2])


def test_zero_byte_file_raises_bad_image(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(BadImage, match="empty file"):
        open_image(path)
    with pytest.raises(BadImage, match="empty file"):
        open_image(b"")


def test_text_file_named_png_raises_bad_image(tmp_path):
    path = tmp_path / "readme.png"
    path.write_text("this is not an image\n")
    with pytest.raises(BadImage, match="not a decodable image"):
        open_image(path)


def test_missing_file_raises_bad_image_not_oserror(tmp_path):
    with pytest.raises(BadImage):
        open_image(tmp_path / "nope.jpg")


def test_bad_image_message_is_not_empty(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(BadImage) as info:
        open_image(path)
    assert len(str(info.value)) > 10


# --- open_image: modes -> RGB ------------------------------------------------------------------------------------

def test_one_pixel_png_decodes_to_rgb(tmp_path):
    path = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    img = open_image(path)
    assert img.mode == "RGB" and img.size == (1, 1)
    assert img.getpixel((0, 0)) == (10, 20, 30)


def test_cmyk_jpeg_decodes_to_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    img = open_image(path)
    assert img.mode == "RGB"
    r, g, b = np.asarray(img)[4, 4].astype(int)
    assert r > 230 and g < 25 and b < 25


def test_16bit_greyscale_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 255, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # really stored as 16-bit
    img = open_image(path)
    assert img.mode == "RGB"
    out = np.asarray(img)
    assert (out[0, :, 0] == out[0, :, 1]).all() and (out[0, :, 0] == out[0, :, 2]).all()
    assert out[0, 0, 0] == 0
    assert out[0, 1, 0] == 1  # 255/65535 of full scale, not 255 as clipping would give
    assert abs(int(out[0, 2, 0]) - 128) <= 1
    assert out[0, 3, 0] == 255


def test_16bit_gradient_png_is_monotonic_over_full_range(tmp_path):
    gradient = np.linspace(0, 65535, 256).round().astype(np.uint16).reshape(16, 16)
    path = tmp_path / "gradient.png"
    Image.fromarray(gradient).save(path)
    grey = np.asarray(open_image(path))[..., 0].ravel().astype(int)
    assert grey[0] == 0 and grey[-1] == 255
    assert (np.diff(grey) >= 0).all()
    assert len(np.unique(grey)) > 200  # spread over the range, not a saturated step


def test_float_mode_is_rescaled_to_its_maximum():
    img = Image.fromarray(np.array([[0.0, 0.5, 2.0]], dtype=np.float32), mode="F")
    out = np.asarray(to_rgb(img))[0, :, 0]
    assert out.tolist() == [0, 64, 255]


def test_la_png_decodes_to_rgb(tmp_path):
    path = tmp_path / "la.png"
    Image.new("LA", (5, 3), (200, 128)).save(path)
    img = open_image(path)
    assert img.mode == "RGB" and img.size == (5, 3)
    assert img.getpixel((2, 1)) == (200, 200, 200)


def test_palette_png_with_transparency_decodes_to_rgb(tmp_path):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    pal.putpixel((1, 1), 1)
    path = tmp_path / "pal.png"
    pal.save(path, transparency=1)
    img = open_image(path)
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((1, 1)) == (0, 0, 255)


def test_decompression_bomb_guard(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(path)
    monkeypatch.setattr(images_mod, "MAX_PIXELS", 100)
    with pytest.raises(BadImage, match="too large"):
        open_image(path)
    with pytest.raises(BadImage, match="too large"):
        open_image(path.read_bytes())
    small = tmp_path / "small.png"
    Image.new("RGB", (10, 10)).save(small)
    assert open_image(small).size == (10, 10)  # at the limit is still fine


# --- ImageTransform: exact match with open_clip ------------------------------------------------------------------

_OPEN_CLIP_TRANSFORMS: dict = {}


def open_clip_eval(size: int, **kwargs):
    open_clip = pytest.importorskip("open_clip")
    key = (size, tuple(sorted(kwargs.items())))
    if key not in _OPEN_CLIP_TRANSFORMS:
        _OPEN_CLIP_TRANSFORMS[key] = open_clip.image_transform(size, is_train=False, **kwargs)
    return _OPEN_CLIP_TRANSFORMS[key]


def real_image_paths():
    dtd = sorted(shared("dtd10", "all").glob("*/*.jpg"))[::400][:3]
    flickr = sorted(shared("flickr8k_1k", "images").glob("*.jpg"))[:3]
    assert len(dtd) == 3 and len(flickr) == 3
    return dtd + flickr


def assert_matches_open_clip(img: Image.Image, size: int, **kwargs):
    ours = ImageTransform(size=size, **kwargs)
    tensor = ours(img)
    assert tensor.dtype == torch.uint8
    assert tensor.shape == (3, size, size)
    reference = open_clip_eval(size, **kwargs)(img.convert("RGB"))
    got = ours.normalize(tensor[None])[0]
    assert got.dtype == reference.dtype
    assert torch.equal(got, reference), f"max diff {(got - reference).abs().max().item()}"


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 64])
def test_transform_matches_open_clip_on_real_images(size):
    for path in real_image_paths():
        assert_matches_open_clip(open_image(path), size)


@pytest.mark.parametrize("size", [224, 64])
@pytest.mark.parametrize("wh", [(301, 157), (90, 233), (50, 30), (64, 64)])
def test_transform_matches_open_clip_on_synthetic_images(size, wh):
    assert_matches_open_clip(noise_image(*wh, seed=wh[0]), size)


def test_transform_matches_open_clip_on_greyscale_image():
    grey = noise_image(120, 80).convert("L")
    tensor = ImageTransform(size=64)(grey)
    assert tensor.shape == (3, 64, 64)
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])
    assert_matches_open_clip(grey, 64)


@pytest.mark.parametrize("kwargs", [{"resize_mode": "squash"}, {"interpolation": "bilinear"}])
def test_transform_options_match_open_clip(kwargs):
    assert_matches_open_clip(noise_image(200, 120, seed=3), 64, **kwargs)


def test_transform_accepts_uint8_array_like_pil():
    img = noise_image(97, 61)
    t = ImageTransform(size=32)
    assert torch.equal(t(np.asarray(img)), t(img))


def test_load_equals_open_then_transform(tmp_path):
    path = tmp_path / "a.png"
    noise_image(70, 40).save(path)
    t = ImageTransform(size=32)
    assert torch.equal(t.load(path), t(Image.open(path)))
    with pytest.raises(BadImage):
        t.load(b"garbage")


def test_normalize_uses_mean_and_std():
    t = ImageTransform(size=2, mean=(0.5, 0.0, 1.0), std=(0.5, 1.0, 0.25))
    batch = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = t.normalize(batch)
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 1.0, 0.0]))


# --- draft decoding and validation -------------------------------------------------------------------------------

@pytest.mark.slow
def test_draft_decode_is_close_but_distinct():
    path = sorted(shared("dtd10", "all").glob("*/*.jpg"))[0]
    exact = ImageTransform(size=64)
    draft = ImageTransform(size=64, decode="draft")
    assert draft.draft_size == 64 and exact.draft_size is None
    a, b = exact.load(path), draft.load(path)
    assert a.shape == b.shape == (3, 64, 64)
    assert not torch.equal(a, b)  # the DCT-scaled decode really was used
    assert (a.float() - b.float()).abs().mean() < 6
    assert draft.fingerprint() != exact.fingerprint()
    assert draft.fingerprint()["decode"] == "draft"


def test_draft_decode_keeps_both_sides_at_least_size(tmp_path):
    path = tmp_path / "wide.jpg"
    noise_image(400, 130).save(path, quality=90)
    img = open_image(path, draft_size=64)
    assert img.mode == "RGB"
    assert min(img.size) >= 64 and img.size[0] < 400  # reduced, but never below the target
    assert ImageTransform(size=64, decode="draft").load(path).shape == (3, 64, 64)


def test_draft_is_a_no_op_for_png(tmp_path):
    path = tmp_path / "a.png"
    noise_image(300, 200).save(path)
    assert torch.equal(ImageTransform(size=64, decode="draft").load(path), ImageTransform(size=64).load(path))


def test_fingerprint_reflects_every_field():
    base = ImageTransform()
    assert base.fingerprint() == ImageTransform().fingerprint()
    for change in ({"size": 256}, {"interpolation": "bilinear"}, {"resize_mode": "squash"}, {"decode": "draft"},
                   {"mean": (0.5, 0.5, 0.5)}):
        assert ImageTransform(**change).fingerprint() != base.fingerprint(), change


@pytest.mark.parametrize("kwargs", [{"decode": "fast"}, {"resize_mode": "longest"}, {"interpolation": "nearest"}])
def test_invalid_transform_options_raise(kwargs):
    with pytest.raises(ValueError):
        ImageTransform(**kwargs)
