"""What every plot's title says about its run, so a PNG read on its own names its data and model."""
from __future__ import annotations

import os
from pathlib import Path

from .backbone import DEFAULT_MODEL_DIR


def dataset_label(path: str | os.PathLike) -> str:
    """A short name for a dataset path: its last two components (``mnist_rgb/test.npz``)."""
    return "/".join(Path(str(path).rstrip("/")).parts[-2:])


def model_label(name: str) -> str:
    """A backbone name as a reader knows it: ``default`` for the shipped model, a model folder's own name,
    an open_clip or hub name as it is."""
    if name == f"local-dir:{DEFAULT_MODEL_DIR}":
        return "default"
    if name.startswith("local-dir:"):
        return Path(name[len("local-dir:"):]).name
    return name


def run_title(card: str | None, dataset: str | os.PathLike, model: str, fingerprint: str) -> str:
    """``cifar10 · default (cb438070)``: the dataset card (else the dataset's short path, never a bare
    ``test.npz``), the model and the first 8 hex digits of its fingerprint (two runs of one model name differ)."""
    return f"{card or dataset_label(dataset)} · {model_label(model)} ({fingerprint[:8]})"
