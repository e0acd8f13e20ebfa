"""Shared fixtures: a tiny real open_clip model saved as a local folder, and the shared data location."""
from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(os.environ.get("ZEROSHOT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT_FINGERPRINT = "da5502d49bf54daf"  # the shipped default model's (zeroshot/default_model/training.json)

# A small open_clip model: timm's test_resnet image tower (0.4M params) and a 2-layer text transformer.
TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"timm_model_name": "test_resnet", "timm_model_pretrained": False, "timm_pool": "avg",
                   "timm_proj": "linear", "image_size": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def shared(*parts: str) -> Path:
    """Path under the shared data folder; skips the test with a clear reason when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set ZEROSHOT_SHARED_DATA)")
    return path


def npz_slice(folder: Path, *source: str, rows=slice(None)) -> Path:
    """``rows`` of a shared ``.npz`` set (images, labels, ids) saved in ``folder`` under the same name, with its
    ``classes.json`` beside it, so that tests encode a few hundred real images instead of thousands."""
    src = shared(*source)
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(src, allow_pickle=False) as z:
        np.savez(folder / src.name, **{k: z[k][rows] for k in ("images", "labels", "ids") if k in z})
    (folder / "classes.json").write_text((src.parent / "classes.json").read_text())
    return folder / src.name


def flickr_slice(folder: Path, n_images: int) -> Path:
    """The first ``n_images`` Flickr8k-1k photos (symlinked) and their captions as a caption dataset folder."""
    source = shared("flickr8k_1k")
    with open(source / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    names = sorted({r["image"] for r in rows})[:n_images]
    (folder / "images").mkdir(parents=True)
    for name in names:
        (folder / "images" / name).symlink_to(source / "images" / name)
    with open(folder / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption_idx", "caption"])
        writer.writeheader()
        writer.writerows(r for r in rows if r["image"] in set(names))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A seeded tiny model saved through the local-folder path (open_clip_config.json + safetensors)."""
    import open_clip
    import torch

    from zeroshot import save_backbone_folder

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_MODEL_CFG)
    return save_backbone_folder(model, tmp_path_factory.mktemp("tiny_model"), TINY_MODEL_CFG, {"size": 32})


@pytest.fixture(scope="session")
def tiny_backbone(tiny_model_dir):
    from zeroshot import load_backbone

    return load_backbone(tiny_model_dir, device="cpu")


@pytest.fixture(autouse=True)
def private_default_cache(tmp_path_factory, monkeypatch):
    """cache_dir=None means the default cache: point it at a fresh folder so tests never share or touch ~/.cache."""
    monkeypatch.setenv("ZEROSHOT_CACHE", str(tmp_path_factory.mktemp("default_cache")))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for every Ray test of the session; yields its address, which a subprocess
    passes as ``--address`` to join it. Skips where ``ray`` is not installed (``pip install -e '.[test]'`` has it)."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[test]' (or '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """Good real photos plus every kind of file a real folder throws at us."""
    folder = tmp_path / "messy"
    folder.mkdir()
    for src in sorted(shared("dtd10", "all", "banded").glob("*.jpg"))[:3]:
        (folder / src.name).write_bytes(src.read_bytes())
    photo = Image.open(next(iter(sorted(folder.glob("*.jpg"))))).convert("RGB")
    full = (folder / "whole.jpg")
    photo.save(full, quality=90)
    data = full.read_bytes()
    full.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image\n")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "tiny_1x1.png")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    gradient = (np.arange(48 * 48, dtype=np.uint32).reshape(48, 48) * 28).astype(np.uint16)
    Image.fromarray(gradient).save(folder / "deep_16bit.png")
    return folder


BAD_FILES = {"truncated.jpg", "empty.jpg", "notes.png"}  # the files of messy_folder that cannot be decoded


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """Every matplotlib Figure saved during the test (still written to its file), so a test can read what a plot
    shows: legend entries, tick labels, texts."""
    from matplotlib.figure import Figure

    saved, original = [], Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open an internet connection fails the test (local unix sockets, used by DataLoader
    workers, still work)."""
    original_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address}")
        return original_connect(sock, address)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def zeroshot_notes():
    """The messages of the ``zeroshot`` logger's records (INFO and up) during the test, whatever handlers and
    propagation an earlier in-process CLI run left on it."""
    import logging

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    messages: list[str] = []
    logger, handler = logging.getLogger("zeroshot"), Collect(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)
