"""FeatureSet: the L2-normalised feature matrix every head works on, and its crash-safe on-disk store.

A store is a folder: ``manifest.json`` plus ``.npy`` files. While extraction runs, each finished shard's arrays are
written under temporary names unique to the writer and renamed into place, then committed by the shard's own
sidecar JSON, so a run killed at any instant leaves a consistent store that the next run resumes from, and several
processes can fill the same store at once. When all shards are done they are joined, under the entry's lock, into
``features.npy`` / ``labels.npy`` / ``ids.npy``, which load memory-mapped.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbone import check_fingerprint
from .cache import (atomic_concat_npy, atomic_save_npy, atomic_write_json, entry_lock, npy_intact, read_json,
                    touch_last_used)

MANIFEST = "manifest.json"
NORM_TOLERANCE = 1e-3  # rows further than this from unit length are renormalised with a warning
NORM_SAMPLE = 4096  # sampled checks: the norms of all rows up to this many, else this many evenly spaced rows
FORMAT_VERSION = 1


def read_manifest(folder: Path) -> dict:
    """A store's manifest, or {} when there is none yet."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def check_features(X, *, dim: int | None = None, name: str = "X", finite: bool = True) -> np.ndarray:
    """Validate a feature matrix: dense, 2-D, real numbers (integers are converted), at least one feature, finite,
    the expected width. Returns float32 (a view when possible). Messages use scikit-learn's wording where its
    estimator checks look for it. ``finite=False`` skips the finiteness pass, for callers that check a smaller
    result of X instead."""
    if hasattr(X, "tocsr"):  # a SciPy sparse matrix or array, recognised without importing SciPy
        raise TypeError(f"{name} is sparse: sparse input is not supported, give a dense array (X.toarray())")
    X = np.asarray(X)
    if X.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} must hold real numbers")
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_samples, dim) feature matrix, got shape {X.shape}: Reshape your "
                         "data, e.g. X.reshape(1, -1) for a single sample")
    if X.shape[1] == 0:
        raise ValueError(f"{name} has 0 feature(s) (shape={X.shape}) while a minimum of 1 is required: give at least one feature column")
    if dim is not None and X.shape[1] != dim:
        raise ValueError(f"{name} has {X.shape[1]} features, but it is expecting {dim} features as input: were "
                         "these features made by another backbone?")
    X = X.astype(np.float32, copy=False)
    if finite and not np.isfinite(X).all():
        bad = int((~np.isfinite(X).all(axis=1)).sum())
        raise ValueError(f"{name} contains NaN or inf in {bad} rows: re-extract those images or drop the rows")
    return X


def rows_look_unit(X: np.ndarray, *, sampled: bool = False) -> bool:
    """Whether the rows of float32 X are unit length (within NORM_TOLERANCE): every row, or with ``sampled`` up to
    NORM_SAMPLE evenly spaced ones. A sample catches unnormalised features but may miss a stray row in a large
    matrix; checking every norm is a second pass over X (max-logit and energy measured at 1.3-1.4x the plain
    formula at 100k rows, against a 1.2x target: scripts/bench_head_overhead.py)."""
    rows = X[:: max(1, -(-len(X) // NORM_SAMPLE))] if sampled else X
    sq = np.einsum("ij,ij->i", rows, rows)
    low, high = (1 - NORM_TOLERANCE) ** 2, (1 + NORM_TOLERANCE) ** 2
    return bool(((sq >= low) & (sq <= high)).all())


def unit_rows(X, *, dim: int | None = None, name: str = "X", sampled: bool = False) -> np.ndarray:
    """Checked C-contiguous float32 rows, normalised; warns when inputs were not unit length (> 1e-3 off). The
    norms and the finiteness check are one pass over X (a NaN or inf makes its row's sum of squares one).
    ``sampled``: trust rows whose sample of norms reads unit (:func:`rows_look_unit`; features are unit rows from
    extraction on) and only check every norm when it does not."""
    X = check_features(X, dim=dim, name=name, finite=sampled)
    if sampled and rows_look_unit(X, sampled=True):
        return np.ascontiguousarray(X)
    squares = np.einsum("ij,ij->i", X, X)  # one pass: the squared norms, NaN or inf in every row that holds one
    if not np.isfinite(squares).all():
        check_features(X, name=name)  # names the rows holding NaN or inf; finite rows that overflowed float32 pass
        squares = np.einsum("ij,ij->i", X, X, dtype=np.float64)
    norms = np.sqrt(squares)
    if (norms == 0).any():
        raise ValueError(f"{name} has all-zero rows, which have no direction to search by")
    if np.abs(norms - 1).max(initial=0) > NORM_TOLERANCE:
        warnings.warn(f"{name} rows are not unit length (norms {norms.min():.3g}..{norms.max():.3g}); "
                      "normalising them (cosine search)", stacklevel=3)
        return np.ascontiguousarray(X / norms[:, None], dtype=np.float32)
    return np.ascontiguousarray(X, dtype=np.float32)


def normalise_rows(X: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, silently (for vectors the caller makes, e.g. class means); all-zero rows
    stay zero. Keeps X's float dtype."""
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


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
        return save_set(folder, lambda path: atomic_save_npy(path, np.ascontiguousarray(self.features, np.float32)),
                        self.labels, self.ids, self.meta)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, fingerprint: str | None = None, mmap: bool = True) -> "FeatureSet":
        """Read a saved set (memory-mapped). ``fingerprint`` refuses a set made by another backbone."""
        folder = Path(folder)
        meta = read_manifest(folder)
        if not meta:
            raise FileNotFoundError(f"no feature set in {folder} ({MANIFEST} missing)")
        if not meta.get("complete"):
            raise ValueError(f"{folder} holds an unfinished extraction: rerun extract() to resume it")
        if fingerprint is not None:
            check_fingerprint(meta.get("fingerprint") or "unknown", fingerprint, str(folder),
                              "extract the features again with this backbone")
        for key in ("version", "complete", "n"):
            meta.pop(key, None)
        return cls(load_npy(folder / "features.npy", mmap), load_npy(folder / "labels.npy", False),
                   load_npy(folder / "ids.npy", False), meta)


def save_set(folder: str | os.PathLike, write_features, labels, ids, meta: dict) -> Path:
    """Write a complete store: ``write_features(path)`` writes ``features.npy`` (whole or streamed), then labels,
    ids and, last, the manifest that marks it complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_features(folder / "features.npy")
    atomic_save_npy(folder / "labels.npy", np.asarray(labels, dtype=np.int64))
    atomic_save_npy(folder / "ids.npy", np.asarray(ids, dtype=str))
    atomic_write_json(folder / MANIFEST, {**meta, "version": FORMAT_VERSION, "complete": True, "n": len(labels)})
    return folder


class ShardStore:
    """The resumable store behind :func:`zeroshot.extract`: fixed index ranges, each written atomically by any
    number of processes (they write identical bytes), each committed by its own sidecar ``shard-NNNNN.json``.

    ``manifest.json`` holds only the header until :meth:`finish` joins the shards; no process ever rewrites it from
    its own memory of which shards are done: that is read from the sidecars on disk. ``layout()`` gives header
    fields only a new entry needs (the batch size depends on the device, and knowing the device imports torch).
    """

    def __init__(self, folder: Path, header: dict, layout: Callable[[], dict] = dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        header = json.loads(json.dumps(header))  # compare like with like: tuples come back from JSON as lists
        manifest = self._manifest()
        if not manifest:
            with entry_lock(self.folder):  # a new entry: the first process writes the header, once
                manifest = self._manifest() or {**header, **layout(), "version": FORMAT_VERSION,
                                                                 "complete": False}
                atomic_write_json(self.folder / MANIFEST, manifest)
        if manifest.get("fingerprint") != header["fingerprint"]:
            raise ValueError(f"cache {self.folder} belongs to backbone {manifest.get('fingerprint')}, "
                             f"not {header['fingerprint']}: use another cache_dir or delete this folder")
        if manifest.get("dataset") != header["dataset"]:
            raise ValueError(f"cache {self.folder} was made from other data; delete it to re-extract")
        self.header = {k: v for k, v in manifest.items() if k not in ("version", "complete", "n", "failed", "shards")}

    def _manifest(self) -> dict:
        """The manifest on disk now (another process may have replaced it), {} when missing or unreadable."""
        return read_json(self.folder / MANIFEST)

    @property
    def complete(self) -> bool:
        """Whether the manifest on disk says the shards were joined (by any process)."""
        return bool(self._manifest().get("complete"))

    def _path(self, shard: int, kind: str) -> Path:
        return self.folder / (f"shard-{shard:05d}.json" if kind == "json" else f"shard-{shard:05d}.{kind}.npy")

    def done(self, shard: int) -> bool:
        """Whether ``shard`` is committed: its sidecar exists and both its arrays are whole."""
        rows = read_json(self._path(shard, "json")).get("rows")
        return (rows is not None and npy_intact(self._path(shard, "features"), (rows, self.header["dim"]))
                and npy_intact(self._path(shard, "rows"), (rows,)))

    def write_shard(self, shard: int, rows: np.ndarray, features: np.ndarray, failed: dict[str, str]) -> None:
        """Write a shard's arrays, then commit them with its sidecar (the img2dataset resume pattern)."""
        atomic_save_npy(self._path(shard, "features"), features)
        atomic_save_npy(self._path(shard, "rows"), rows)
        atomic_write_json(self._path(shard, "json"), {"rows": int(len(rows)), "failed": failed})

    def _whole(self) -> FeatureSet | None:
        """The joined set when the manifest is complete and its arrays whole (sizes checked, not hashed)."""
        manifest = self._manifest()
        n = manifest.get("n")
        if not (manifest.get("complete") and npy_intact(self.folder / "features.npy", (n, manifest.get("dim")))
                and npy_intact(self.folder / "labels.npy", (n,)) and npy_intact(self.folder / "ids.npy", (n,))):
            return None
        touch_last_used(self.folder)
        return FeatureSet.load(self.folder)

    def complete_set(self) -> FeatureSet | None:
        """The finished set, or None; a complete entry whose arrays are damaged is marked unfinished again, so
        the missing shards get encoded instead of failing every later run."""
        fs = self._whole()
        if fs is None and self.complete:
            with entry_lock(self.folder):
                fs = self._whole()
                if fs is None and self.complete:  # still damaged under the lock: nobody repaired it meanwhile
                    atomic_write_json(self.folder / MANIFEST, {**self.header, "version": FORMAT_VERSION,
                                                               "complete": False})
        return fs

    def finish(self, n_shards: int, labels: np.ndarray, ids: list[str], meta: dict) -> FeatureSet | None:
        """Join the shards into one memory-mappable set (once, whoever finishes first) and drop the shard files.

        Returns None when a shard is missing (deleted or damaged meanwhile): encode it, then finish again.
        """
        with entry_lock(self.folder):
            fs = self._whole()
            if fs is None:
                if not all(self.done(shard) for shard in range(n_shards)):
                    return None
                self._join(n_shards, labels, ids, meta)
                fs = self._whole()
            for path in self.folder.glob("shard-*"):  # the complete set is in place: nobody reads shards now
                path.unlink(missing_ok=True)
        return fs

    def _join(self, n_shards: int, labels: np.ndarray, ids: list[str], meta: dict) -> None:
        """Write the joined set, streaming the feature shards one at a time into ``features.npy``."""
        rows = [load_npy(self._path(s, "rows"), mmap=False) for s in range(n_shards)]
        failed = {k: v for s in range(n_shards) for k, v in read_json(self._path(s, "json"))["failed"].items()}
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        features = (load_npy(self._path(s, "features"), mmap=False) for s in range(n_shards))
        ids_array = np.asarray(ids, dtype=str)[rows] if len(rows) else np.zeros(0, dtype=str)
        save_set(self.folder, lambda path: atomic_concat_npy(path, features, (len(rows), self.header["dim"]),
                                                             np.float32),
                 labels[rows], ids_array, {**self.header, **meta, "failed": failed})
