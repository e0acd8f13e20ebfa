"""Image decoding and the CLIP eval transform, robust to the files real folders contain.

Decoding never raises anything but :class:`BadImage`, so a dataset can skip the file and report it by id.
The transform reproduces open_clip's eval preprocessing (resize shortest side, bicubic, centre crop) up to
the uint8 tensor; normalisation happens on the device in the extraction engine, so workers ship 4x less data.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # larger images are refused before decoding (decompression-bomb guard)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class BadImage(Exception):
    """A file that cannot be turned into an RGB image; the message says why."""


def open_image(source: str | os.PathLike | bytes, draft_size: int | None = None) -> Image.Image:
    """Decode a path or encoded bytes into an RGB PIL image, or raise :class:`BadImage`.

    ``draft_size`` lets JPEG decoding use DCT scaling (1/2, 1/4, 1/8) while keeping both sides >= it.
    """
    try:
        if isinstance(source, bytes):
            if not source:
                raise BadImage("empty file (0 bytes)")
            fp = io.BytesIO(source)
        else:
            if os.path.getsize(source) == 0:
                raise BadImage("empty file (0 bytes)")
            fp = source
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            width, height = img.size
            if width * height > MAX_PIXELS:
                img.close()
                raise BadImage(f"image too large: {width}x{height} exceeds {MAX_PIXELS} pixels")
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
        return to_rgb(img)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not a decodable image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"cannot decode: {exc}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, rescaling 16/32-bit integer data instead of clipping it."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max(initial=0)), 1e-12)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class ImageTransform:
    """Eval transform: shortest side -> ``size`` (or squash), centre crop, uint8 CHW tensor.

    ``decode="draft"`` lets JPEGs decode at a reduced DCT scale first; it changes pixels slightly, so it is part
    of :meth:`fingerprint` and never mixed with exact decoding in one cache.
    """

    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    decode: str = "exact"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATION:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATION)}, got {self.interpolation!r}")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode must be 'shortest' or 'squash', got {self.resize_mode!r}")
        if self.decode not in ("exact", "draft"):
            raise ValueError(f"decode must be 'exact' or 'draft', got {self.decode!r}")

    @property
    def draft_size(self) -> int | None:
        return self.size if self.decode == "draft" else None

    def fingerprint(self) -> dict:
        return asdict(self)

    def load(self, source: str | os.PathLike | bytes):
        """Decode and transform one file; raises :class:`BadImage`."""
        return self(open_image(source, self.draft_size))

    def load_array(self, source: str | os.PathLike | bytes) -> np.ndarray:
        """Decode one file into a (size, size, 3) uint8 array, without torch; raises :class:`BadImage`."""
        return self.to_array(open_image(source, self.draft_size))

    def __call__(self, img: Image.Image | np.ndarray):
        """PIL image or HxWx3 uint8 array -> uint8 (3, size, size) torch tensor."""
        import torch

        return torch.from_numpy(self.to_array(img)).permute(2, 0, 1)

    def to_array(self, img: Image.Image | np.ndarray) -> np.ndarray:
        """PIL image or HxWx3 uint8 array -> resized, centre-cropped (size, size, 3) uint8 array (no torch)."""
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        img = to_rgb(img)
        resample = _INTERPOLATION[self.interpolation]
        width, height = img.size
        if self.resize_mode == "squash":
            img = img.resize((self.size, self.size), resample)
        else:
            # torchvision.transforms.Resize(int) then CenterCrop: same integer arithmetic, same pixels.
            if width <= height:
                new_w, new_h = self.size, int(self.size * height / width)
            else:
                new_w, new_h = int(self.size * width / height), self.size
            if (new_w, new_h) != (width, height):
                img = img.resize((new_w, new_h), resample)
            top = int(round((new_h - self.size) / 2.0))
            left = int(round((new_w - self.size) / 2.0))
            if (new_w, new_h) != (self.size, self.size):
                img = img.crop((left, top, left + self.size, top + self.size))
        return np.array(img, dtype=np.uint8)

    def normalize_array(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, 3) arrays -> float32 (B, 3, H, W) normalised pixels (:meth:`normalize` in NumPy)."""
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        pixels = (batch.astype(np.float32) / np.float32(255) - mean) / std
        return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))

    def normalize(self, batch):
        """uint8 (B,3,H,W) -> float normalised, on whatever device ``batch`` lives (ToTensor + Normalize)."""
        import torch

        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return batch.float().div_(255).sub_(mean).div_(std)



def decode_raw(raw, transform: ImageTransform):
    """Apply ``transform`` to what ``Dataset.raw`` returned (path, bytes or array): a uint8 (3, size, size) tensor."""
    import torch

    return torch.from_numpy(decode_raw_array(raw, transform)).permute(2, 0, 1)


def decode_raw_array(raw, transform: ImageTransform) -> np.ndarray:
    """What ``Dataset.raw`` returned as a (size, size, 3) uint8 array, without torch; raises :class:`BadImage`."""
    if isinstance(raw, np.ndarray):
        if raw.ndim == 3 and raw.shape[2] == 1:  # (H,W,1) greyscale: PIL cannot take a single-channel 3-D array
            raw = raw[..., 0]
        return transform.to_array(raw if raw.ndim == 3 else np.repeat(raw[..., None], 3, axis=2))
    return transform.load_array(raw)
