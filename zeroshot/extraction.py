"""The extraction engine: images in once, a cached, resumable FeatureSet out.

DataLoader workers decode and transform to uint8 tensors (4x less inter-process traffic than floats); the main
process pins, copies non-blocking, normalises on the device and runs the image tower under ``inference_mode``
and autocast (on CPU, :func:`cpu_streams` batches at once on threads that split the torch threads). Work is cut
into fixed shards of whole batches, so a resumed run encodes exactly the batches an uninterrupted run would have,
and the features come out bit-identical.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from .backbone import Backbone
from .cache import images_entry, read_json, resolve_cache_dir
from .datasets import Dataset, ShardPlan, open_dataset
from .engines.session import check_engine
from .features import MANIFEST, FeatureSet, ShardStore
from .images import BadImage, decode_raw

log = logging.getLogger(__name__)


def default_batch_size(device: str) -> int:
    return 256 if str(device).startswith("cuda") else 64


def default_num_workers(device: str) -> int:
    """GPU: every core decodes. CPU: the forward pass shares the cores, so at most 4 workers (2 on 2 cores,
    measured faster than 0 or 1 there: decoding then overlaps the forward instead of waiting for it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1) if str(device).startswith("cuda") else min(cores, 4)


class DecodedImages:
    """Index -> (uint8 CHW tensor or None, index, failure reason or None): one image decoded and transformed, a
    failure kept as its reason (the local engine's DataLoader workers and the Ray engine's threads both use it)."""

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


def collate_decoded(items):
    """:class:`DecodedImages` items -> (uint8 batch of the decoded ones or None, their indices, [(index, reason)])."""
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
    loader = DataLoader(DecodedImages(dataset, transform), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_decoded)
    bar = progress_bar(len(dataset), 0, progress, f"decoding {Path(dataset.location).name}")
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


def extract(backbone: Backbone, dataset: Dataset | str | os.PathLike, *,
            cache_dir: str | os.PathLike | None | bool = None, batch_size: int | None = None,
            num_workers: int | None = None, shard_batches: int = 16, progress: bool = True, engine: str = "local",
            address: str | None = None, ray_workers: int | None = None, gpus_per_worker: float = 0) -> FeatureSet:
    """Encode every image of ``dataset`` with ``backbone`` into a :class:`FeatureSet`, cached on disk.

    A finished cache for the same (backbone fingerprint, data) returns at once, memory-mapped; an unfinished one
    resumes from its last complete shard, and a damaged one re-encodes what is missing. Any number of processes
    may extract the same data into the same cache at once: they share the shards and all return the same features.
    Files that cannot be decoded are skipped and listed in ``FeatureSet.failed`` (id -> reason). The batch size is
    fixed per cache so resumed results are identical. ``cache_dir``: None = the default cache
    (:func:`zeroshot.cache.resolve_cache_dir`), False = no cache (encoded in a temporary folder, returned in memory).

    ``engine="ray"`` encodes the same shard plan on a Ray actor pool (:mod:`zeroshot.engines.extract`) and writes
    the same bytes: ``address`` of a running cluster (None starts a local one for this call), ``ray_workers``
    actors (default: one per ``gpus_per_worker`` GPUs, or one per 2 CPUs), each decoding on ``num_workers`` threads.
    """
    check_engine(engine)
    if not isinstance(dataset, Dataset):
        dataset = open_dataset(dataset)
    signature = data_signature(backbone, dataset)

    def layout() -> dict:  # a new cache entry's batches: only then is the device (and so torch) needed
        size = batch_size or default_batch_size("cuda" if engine == "ray" and gpus_per_worker else backbone.device)
        return {"batch_size": size, "shard_size": size * shard_batches}

    run = partial(_extract_into, backbone=backbone, dataset=dataset, signature=signature, layout=layout,
                  progress=progress,
                  encode=partial(_encode_missing, num_workers=num_workers) if engine == "local" else
                  partial(_encode_on_ray, address=address, workers=ray_workers, gpus_per_worker=gpus_per_worker,
                          decode_threads=num_workers))
    cache = resolve_cache_dir(cache_dir)
    if cache is None:
        with tempfile.TemporaryDirectory(prefix="zeroshot-extract-") as tmp:
            fs = run(Path(tmp))
            return FeatureSet(np.array(fs.features), fs.labels, fs.ids, fs.meta)
    return run(images_entry(cache, backbone.fingerprint, signature))


def data_signature(backbone: Backbone, dataset: Dataset) -> dict:
    """What keys a dataset's features in the cache: the data's own signature and the backbone's preprocessing."""
    return {**dataset.signature(), "transform": backbone.transform.fingerprint()}


def is_cached(backbone: Backbone, dataset: Dataset, cache_dir: str | os.PathLike | None | bool = None) -> bool:
    """Whether :func:`extract` would return ``dataset``'s features from a finished cache entry, decoding nothing
    (nothing is created or locked to find out)."""
    cache = resolve_cache_dir(cache_dir)
    return cache is not None and bool(
        read_json(images_entry(cache, backbone.fingerprint, data_signature(backbone, dataset)) / MANIFEST)
        .get("complete"))


def _extract_into(folder: Path, *, backbone: Backbone, dataset: Dataset, signature: dict, layout, progress: bool,
                  encode) -> FeatureSet:
    """The cache entry ``folder`` made complete (``encode(store, plan, backbone, dataset, progress)`` encodes what no
    process has committed yet) and loaded; ``layout()``: the batch and shard size of a new entry."""
    store = ShardStore(folder, {
        "fingerprint": backbone.fingerprint, "space": backbone.space, "backbone": backbone.name, "dataset": signature,
        "dim": backbone.embed_dim,
    }, layout)
    plan = ShardPlan(len(dataset), store.header["batch_size"], store.header["shard_size"])  # a resume keeps them
    meta = {"fingerprint": backbone.fingerprint, "space": backbone.space, "backbone": backbone.name,
            "dataset": signature, "transform": backbone.transform.fingerprint(), "classes": dataset.classes}
    for _ in range(3):  # a shard can vanish under a pass (a concurrent prune, a damaged file): encode it again
        result = store.complete_set()
        if result is None:
            encode(store, plan, backbone, dataset, progress=progress)
            result = store.finish(len(plan), dataset.labels, dataset.ids, meta)
        if result is not None:
            if result.failed:
                log.warning("skipped %d unreadable file(s): %s", len(result.failed),
                            ", ".join(f"{i} ({r})" for i, r in list(result.failed.items())[:10]))
            return result
    raise RuntimeError(f"the shards of {folder} keep disappearing while it is being extracted: is another "
                       "process deleting this cache? Run again once it has finished")


def work_order(store: ShardStore, plan: ShardPlan) -> list[int]:
    """The units of ``plan`` not committed yet, in the order this process takes them: from an offset set by its
    pid, so that concurrent processes (local engines or Ray drivers) start on different units and share the work."""
    todo = [shard for shard in range(len(plan)) if not store.done(shard)]
    start = os.getpid() % len(todo) if todo else 0
    return todo[start:] + todo[:start]


def encode_unit(backbone: Backbone, decoded, ids: list[str], *, skip: bool = False, on_batch=None,
                streams: int = 1):
    """One unit of the plan from its decoded batches (``(uint8 batch or None, kept indices, [(index, reason)])``):
    ``(rows, features, failed id -> reason)``; ``skip`` only drains the batches (another process committed it).
    ``streams`` > 1 encodes that many batches at once on threads (:func:`cpu_streams`), the results in order."""
    features, rows, failed = [np.zeros((0, backbone.embed_dim), np.float32)], [np.zeros(0, np.int64)], {}

    def take(good, bad, encoded) -> None:
        if encoded is not None:
            features.append(encoded.result().cpu().numpy())
            rows.append(good)
        failed.update({ids[i]: reason for i, reason in bad})
        if on_batch is not None:
            on_batch(len(good) + len(bad))

    with _Streams(streams) as pool:
        pending = collections.deque()
        for batch, good, bad in decoded:
            pending.append((good, bad, pool.submit(backbone.encode_images, batch)
                            if batch is not None and not skip else None))
            if len(pending) > streams:
                take(*pending.popleft())
        while pending:
            take(*pending.popleft())
    return np.concatenate(rows), np.concatenate(features), failed


def streams_for(backbone: Backbone) -> int:
    """How many batches ``backbone`` encodes at once: 1 on a GPU, :func:`cpu_streams` on CPU (both engines, so that
    a Ray actor and a local run with the same threads compute the same bytes)."""
    return 1 if str(backbone.device).startswith("cuda") else cpu_streams()


def cpu_streams() -> int:
    """How many batches CPU extraction encodes at once: one per torch thread, at most 4. Independent forward passes
    keep every core busy while the decode workers take their share, where one multi-threaded pass waits at every
    layer for its slowest thread (1.09-1.27x over one stream on 2 cores, decode-bound: model_zoo). Features can
    differ from a multi-threaded pass by float rounding (kernels may sum in another order); a resumed run uses the
    same streams."""
    import torch

    return max(1, min(torch.get_num_threads(), 4))


class _Streams:
    """``submit(fn, x)``: on ``n`` threads that share this process's torch threads between them (one each on 2
    cores), or at once in this thread when n is 1 (a finished future either way)."""

    def __init__(self, n: int):
        self.n = n
        self.pool = None
        self.threads = None

    def __enter__(self) -> "_Streams":
        if self.n > 1:
            import torch
            from concurrent.futures import ThreadPoolExecutor

            self.threads = torch.get_num_threads()
            self.pool = ThreadPoolExecutor(self.n, initializer=torch.set_num_threads,
                                           initargs=(max(1, self.threads // self.n),))
        return self

    def submit(self, fn, arg):
        if self.pool is not None:
            return self.pool.submit(fn, arg)
        from concurrent.futures import Future

        done = Future()
        done.set_result(fn(arg))
        return done

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            import torch

            self.pool.shutdown()
            torch.set_num_threads(self.threads)  # the streams' setting is process-wide in torch


def _encode_missing(store: ShardStore, plan: ShardPlan, backbone: Backbone, dataset: Dataset, *,
                    num_workers: int | None, progress: bool) -> None:
    """The local engine: encode and write every shard not committed yet (:func:`work_order`), skipping those another
    process commits meanwhile."""
    from torch.utils.data import DataLoader

    order = work_order(store, plan)
    if not order:
        return
    backbone.model  # build the network before workers fork and before the progress bar starts timing
    workers = default_num_workers(backbone.device) if num_workers is None else num_workers
    on_gpu = str(backbone.device).startswith("cuda")
    loader = DataLoader(
        DecodedImages(dataset, backbone.transform), batch_sampler=[b for shard in order for b in plan.batches(shard)],
        num_workers=workers, collate_fn=collate_decoded, pin_memory=on_gpu, prefetch_factor=4 if workers else None,
        worker_init_fn=None if on_gpu else _lower_priority,
    )
    bar = progress_bar(total=plan.n, initial=plan.n - sum(len(plan.rows(s)) for s in order), enabled=progress,
                       desc=f"encoding {Path(dataset.location).name}")
    decoded = iter(loader)
    streams = streams_for(backbone)
    for shard in order:
        if store.complete:  # another process joined every shard: nothing left to do
            break
        skip = store.done(shard)  # another process committed it while we decoded
        batches = itertools.islice(decoded, len(plan.batches(shard)))
        rows, features, failed = encode_unit(backbone, batches, dataset.ids, skip=skip, on_batch=bar.update,
                                             streams=streams)
        if not skip:
            store.write_shard(shard, rows, features, failed)
    bar.close()


def _encode_on_ray(store: ShardStore, plan: ShardPlan, backbone: Backbone, dataset: Dataset, **options) -> None:
    from .engines.extract import encode_on_ray

    encode_on_ray(store, plan, backbone, dataset, **options)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=desc, smoothing=0.1, file=sys.stderr,
                mininterval=0.5)

