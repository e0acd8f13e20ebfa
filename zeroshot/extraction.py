"""The extraction engine: images in once, a cached, resumable FeatureSet out.

DataLoader workers decode and transform to uint8 tensors (4x less inter-process traffic than floats); the main
process pins, copies non-blocking, normalises on the device and runs the image tower under ``inference_mode``
and autocast. Work is cut into fixed shards of whole batches, so a resumed run encodes exactly the batches an
uninterrupted run would have, and the features come out bit-identical.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from .backbone import Backbone
from .datasets import Dataset, open_dataset
from .features import FeatureSet, ShardStore, read_manifest
from .images import BadImage, decode_raw


def default_cache_dir() -> Path:
    """``$ZEROSHOT_CACHE`` or ``~/.cache/zeroshot``."""
    return Path(os.environ.get("ZEROSHOT_CACHE", Path.home() / ".cache" / "zeroshot"))


def default_batch_size(device: str) -> int:
    return 256 if str(device).startswith("cuda") else 64


def default_num_workers(device: str) -> int:
    """GPU: every core decodes. CPU: the forward pass shares the cores, so at most 4 workers (2 on 2 cores,
    measured faster than 0 or 1 there: decoding then overlaps the forward instead of waiting for it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1) if str(device).startswith("cuda") else min(cores, 4)


class _Decoded:
    """Index -> (uint8 CHW tensor or None, index, failure reason or None)."""

    def __init__(self, dataset: Dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return decode_raw(self.dataset.raw(index), self.transform), index, None
        except BadImage as exc:
            return None, index, str(exc)
        except OSError as exc:  # unreadable file (permissions, vanished)
            return None, index, f"cannot read: {exc}"


def _lower_priority(_worker_id: int) -> None:
    """CPU extraction: decoders fill the cycles the forward pass leaves idle instead of preempting it."""
    os.nice(10)


def _collate(items):
    import torch

    good = [(t, i) for t, i, _ in items if t is not None]
    failed = [(i, reason) for t, i, reason in items if t is None]
    batch = torch.stack([t for t, _ in good]) if good else None
    return batch, np.array([i for _, i in good], dtype=np.int64), failed


def decode_all(dataset: Dataset, transform, *, batch_size: int = 256, num_workers: int | None = None,
               progress: bool = True):
    """Decode a whole dataset into one uint8 (N, 3, S, S) tensor (for training). Returns (images, rows kept,
    failed id -> reason); undecodable files are skipped, as in :func:`extract`."""
    import torch
    from torch.utils.data import DataLoader

    workers = default_num_workers("cpu") if num_workers is None else num_workers
    loader = DataLoader(_Decoded(dataset, transform), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate)
    bar = _progress(len(dataset), 0, progress, f"decoding {Path(dataset.location).name}")
    images, rows, failed = [], [], {}
    for batch, good, bad in loader:
        if batch is not None:
            images.append(batch)
            rows.append(good)
        failed.update({dataset.ids[i]: reason for i, reason in bad})
        bar.update(len(good) + len(bad))
    bar.close()
    size = transform.size
    return (torch.cat(images) if images else torch.zeros(0, 3, size, size, dtype=torch.uint8),
            np.concatenate(rows) if rows else np.zeros(0, np.int64), failed)


def _cache_folder(cache_dir: Path, backbone: Backbone, signature: dict) -> Path:
    key = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / backbone.fingerprint / "images" / key


def extract(backbone: Backbone, dataset: Dataset | str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
            batch_size: int | None = None, num_workers: int | None = None, shard_batches: int = 16,
            progress: bool = True) -> FeatureSet:
    """Encode every image of ``dataset`` with ``backbone`` into a :class:`FeatureSet`, cached on disk.

    A finished cache for the same (backbone fingerprint, data) returns at once, memory-mapped; an unfinished one
    resumes from its last complete shard. Files that cannot be decoded are skipped and listed in
    ``FeatureSet.failed`` (id -> reason). The batch size is fixed per cache so resumed results are identical.
    """
    if not isinstance(dataset, Dataset):
        dataset = open_dataset(dataset)
    signature = {**dataset.signature(), "transform": backbone.transform.fingerprint()}
    folder = _cache_folder(Path(cache_dir) if cache_dir else default_cache_dir(), backbone, signature)
    if read_manifest(folder).get("complete"):
        return FeatureSet.load(folder, fingerprint=backbone.fingerprint)
    from torch.utils.data import DataLoader

    batch_size = batch_size or default_batch_size(backbone.device)
    store = ShardStore(folder, {
        "fingerprint": backbone.fingerprint, "space": backbone.space, "backbone": backbone.name, "dataset": signature,
        "batch_size": batch_size, "shard_size": batch_size * shard_batches, "dim": backbone.embed_dim,
    })
    batch_size, shard_size = store.manifest["batch_size"], store.manifest["shard_size"]  # a resume keeps the original
    n = len(dataset)
    n_shards = -(-n // shard_size)
    plan = {shard: [list(range(lo, min(lo + batch_size, (shard + 1) * shard_size, n)))
                    for lo in range(shard * shard_size, min((shard + 1) * shard_size, n), batch_size)]
            for shard in range(n_shards) if not store.done(shard)}
    backbone.model  # build the network before workers fork and before the progress bar starts timing
    workers = default_num_workers(backbone.device) if num_workers is None else num_workers
    on_gpu = str(backbone.device).startswith("cuda")
    loader = DataLoader(
        _Decoded(dataset, backbone.transform), batch_sampler=[b for batches in plan.values() for b in batches],
        num_workers=workers, collate_fn=_collate, pin_memory=on_gpu, prefetch_factor=4 if workers else None,
        worker_init_fn=None if on_gpu else _lower_priority,
    )
    bar = _progress(total=n, initial=n - sum(map(len, (b for bs in plan.values() for b in bs))),
                    enabled=progress and bool(plan), desc=f"encoding {Path(dataset.location).name}")
    decoded = iter(loader)
    for shard, batches in plan.items():
        features, rows, failed = [np.zeros((0, backbone.embed_dim), np.float32)], [np.zeros(0, np.int64)], {}
        for _ in batches:
            batch, good, bad = next(decoded)
            if batch is not None:
                features.append(backbone.encode_images(batch).cpu().numpy())
                rows.append(good)
            failed.update({dataset.ids[i]: reason for i, reason in bad})
            bar.update(len(good) + len(bad))
        store.write_shard(shard, np.concatenate(rows), np.concatenate(features), failed)
    bar.close()
    result = store.finish(n_shards, dataset.labels, dataset.ids, {
        "fingerprint": backbone.fingerprint, "space": backbone.space, "backbone": backbone.name, "dataset": signature,
        "transform": backbone.transform.fingerprint(), "classes": dataset.classes,
    })
    if result.failed and progress:
        print(f"skipped {len(result.failed)} unreadable file(s): " +
              ", ".join(f"{i} ({r})" for i, r in list(result.failed.items())[:10]), file=sys.stderr)
    return result


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, initial: int, enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=desc, smoothing=0.1, file=sys.stderr,
                mininterval=0.5)

