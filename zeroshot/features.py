"""FeatureSet: the L2-normalised feature matrix every head works on, and its crash-safe on-disk store.

A store is a folder: ``manifest.json`` plus ``.npy`` files. While extraction runs, each finished shard is written
to a temporary name and renamed into place, then the manifest is replaced the same way, so a run killed at any
instant leaves a consistent store that the next run resumes from. When all shards are done they are joined into
``features.npy`` / ``labels.npy`` / ``ids.npy``, which load memory-mapped.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
NORM_TOLERANCE = 1e-3  # rows further than this from unit length are renormalised with a warning
FORMAT_VERSION = 1


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict:
    """A store's manifest, or {} when there is none yet."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def check_features(X, *, dim: int | None = None, name: str = "X") -> np.ndarray:
    """Validate a feature matrix: 2-D, finite, the expected width. Returns float32 (a view when possible)."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_samples, dim) feature matrix, got shape {X.shape}")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"{name} has {X.shape[1]} features per row but {dim} were expected: "
                         "were these features made by another backbone?")
    if not np.issubdtype(X.dtype, np.floating):
        raise ValueError(f"{name} must hold floats, got {X.dtype}")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X).all(axis=1)).sum())
        raise ValueError(f"{name} contains NaN or inf in {bad} rows: re-extract those images or drop the rows")
    return X


def unit_rows(X, *, dim: int | None = None, name: str = "X") -> np.ndarray:
    """Checked C-contiguous float32 rows, normalised; warns when inputs were not unit length (> 1e-3 off)."""
    X = check_features(X, dim=dim, name=name)
    norms = np.linalg.norm(X, axis=1)
    if (norms == 0).any():
        raise ValueError(f"{name} has all-zero rows, which have no direction to search by")
    if np.abs(norms - 1).max(initial=0) > NORM_TOLERANCE:
        warnings.warn(f"{name} rows are not unit length (norms {norms.min():.3g}..{norms.max():.3g}); "
                      "normalising them (cosine search)", stacklevel=3)
        return np.ascontiguousarray(X / norms[:, None], dtype=np.float32)
    return np.ascontiguousarray(X, dtype=np.float32)


@dataclass
class FeatureSet:
    """Features ``(N, D)`` float32 with ``labels`` (-1 = none), ``ids`` and ``meta``.

    ``meta`` holds the backbone ``fingerprint``, the dataset signature, the transform, ``classes`` and
    ``failed`` (id -> reason for files that could not be decoded).
    """

    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.features)
        if len(self.labels) != n or len(self.ids) != n:
            raise ValueError(f"features ({n}), labels ({len(self.labels)}) and ids ({len(self.ids)}) differ in length")

    def __len__(self) -> int:
        return len(self.features)

    @property
    def fingerprint(self) -> str | None:
        return self.meta.get("fingerprint")

    @property
    def space(self) -> str | None:
        """The embedding space of the backbone that made it (see :attr:`Backbone.space`)."""
        return self.meta.get("space")

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def classes(self) -> list[str] | None:
        return self.meta.get("classes")

    @property
    def failed(self) -> dict[str, str]:
        return self.meta.get("failed", {})

    def subset(self, rows) -> "FeatureSet":
        rows = np.asarray(rows)
        return FeatureSet(np.asarray(self.features[rows]), self.labels[rows], self.ids[rows], dict(self.meta))

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(folder / "features.npy", np.ascontiguousarray(self.features, dtype=np.float32))
        atomic_save_npy(folder / "labels.npy", np.asarray(self.labels, dtype=np.int64))
        atomic_save_npy(folder / "ids.npy", np.asarray(self.ids, dtype=str))
        atomic_write_json(folder / MANIFEST, {**self.meta, "version": FORMAT_VERSION, "complete": True, "n": len(self)})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, *, fingerprint: str | None = None, mmap: bool = True) -> "FeatureSet":
        """Read a saved set (memory-mapped). ``fingerprint`` refuses a set made by another backbone."""
        folder = Path(folder)
        meta = read_manifest(folder)
        if not meta:
            raise FileNotFoundError(f"no feature set in {folder} ({MANIFEST} missing)")
        if not meta.get("complete"):
            raise ValueError(f"{folder} holds an unfinished extraction: rerun extract() to resume it")
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            raise ValueError(f"{folder} was made by backbone {meta.get('fingerprint')}, not {fingerprint}: "
                             "extract the features again with this backbone")
        for key in ("version", "complete", "n"):
            meta.pop(key, None)
        return cls(load_npy(folder / "features.npy", mmap), load_npy(folder / "labels.npy", False),
                   load_npy(folder / "ids.npy", False), meta)


class ShardStore:
    """The resumable store behind :func:`zeroshot.extract`: fixed index ranges, each written once, atomically."""

    def __init__(self, folder: Path, header: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        header = json.loads(json.dumps(header))  # compare like with like: tuples come back from JSON as lists
        manifest = read_manifest(self.folder)
        if manifest:
            if manifest.get("fingerprint") != header["fingerprint"]:
                raise ValueError(f"cache {self.folder} belongs to backbone {manifest.get('fingerprint')}, "
                                 f"not {header['fingerprint']}: use another cache_dir or delete this folder")
            if manifest.get("dataset") != header["dataset"]:
                raise ValueError(f"cache {self.folder} was made from other data; delete it to re-extract")
        else:
            manifest = {**header, "version": FORMAT_VERSION, "complete": False, "shards": {}, "failed": {}}
            atomic_write_json(self.folder / MANIFEST, manifest)
        self.manifest = manifest

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def done(self, shard: int) -> bool:
        return str(shard) in self.manifest["shards"]

    def write_shard(self, shard: int, rows: np.ndarray, features: np.ndarray, failed: dict[str, str]) -> None:
        atomic_save_npy(self.folder / f"shard-{shard:05d}.features.npy", features)
        atomic_save_npy(self.folder / f"shard-{shard:05d}.rows.npy", rows)
        self.manifest["shards"][str(shard)] = int(len(rows))
        self.manifest["failed"].update(failed)
        atomic_write_json(self.folder / MANIFEST, self.manifest)

    def finish(self, n_shards: int, labels: np.ndarray, ids: list[str], meta: dict) -> FeatureSet:
        """Join the shards into one memory-mappable set and drop the shard files."""
        feats, rows = [], []
        for shard in range(n_shards):
            feats.append(load_npy(self.folder / f"shard-{shard:05d}.features.npy", mmap=False))
            rows.append(load_npy(self.folder / f"shard-{shard:05d}.rows.npy", mmap=False))
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        dim = self.manifest["dim"]
        features = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
        ids_array = np.asarray(ids, dtype=str)[rows] if len(rows) else np.zeros(0, dtype=str)
        meta = {**meta, "failed": self.manifest["failed"]}
        result = FeatureSet(features, labels[rows], ids_array, meta).save(self.folder)
        for shard in range(n_shards):
            for kind in ("features", "rows"):
                (self.folder / f"shard-{shard:05d}.{kind}.npy").unlink(missing_ok=True)
        return FeatureSet.load(result)
