"""Feature extraction on Ray: the local engine's shard plan, encoded by an actor pool, committed by the driver.

Each actor (:class:`UnitEncoder`) loads the model once and encodes whole units of the plan, decoding a unit's
batches on threads while the previous batch is encoded. The driver writes every returned unit through the same
:class:`~zeroshot.features.ShardStore` as the local engine (arrays first, then the unit's sidecar), so the
FeatureSet is byte-identical, a killed run resumes from the committed units, and local and Ray runs may share one
cache. An actor that dies is restarted and its unit retried. Only the images (and model files) must be readable at
the same paths on every node: features travel back through Ray's object store.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..backbone import Backbone
from ..datasets import Dataset, ShardPlan
from ..extraction import DecodedImages, collate_decoded, encode_unit, progress_bar, streams_for, work_order
from ..features import ShardStore
from .session import ray_session

log = logging.getLogger(__name__)

UNITS_IN_FLIGHT = 2  # per actor: the next unit waits in its queue while one encodes, so actors never idle
ACTOR_RESTARTS = 3  # an actor process that dies is restarted this often (each time its unit is retried)


class UnitEncoder:
    """A Ray actor: one model, loaded at its first unit and kept, encoding units of the plan. ``decode_threads``
    decode the batches of a unit ahead of the forward pass (Pillow releases the GIL while it decodes and resizes).
    The model and dataset come as object refs with every call (not to the constructor), so a restarted actor
    loads them again from the driver's copies."""

    def __init__(self, decode_threads: int):
        self.pool = ThreadPoolExecutor(max(1, decode_threads))
        self.backbone: Backbone | None = None

    def _load(self, shared: list) -> None:
        import ray

        self.backbone, self.dataset = ray.get(shared)
        self.decoded = DecodedImages(self.dataset, self.backbone.transform)
        self.backbone.model  # build the network once

    def _decode(self, batch: list[int]):
        return collate_decoded([self.decoded[i] for i in batch])

    def encode(self, shared: list, shard: int, batches: list[list[int]]):
        """``(shard, rows, features, failed)`` for one unit; ``shared`` = [backbone ref, dataset ref]."""
        if self.backbone is None:
            self._load(shared)
        return (shard, *encode_unit(self.backbone, self.pool.map(self._decode, batches), self.dataset.ids,
                                    streams=streams_for(self.backbone)))


def worker_shape(resources: dict, workers: int | None, gpus_per_worker: float) -> tuple[int, int]:
    """(actors, CPUs per actor) for a cluster's ``resources``: one actor per ``gpus_per_worker`` GPUs, or on CPUs
    one per 2 CPUs (the forward pass of one actor uses every thread it is given); CPUs are shared out evenly."""
    cpus = int(resources.get("CPU", 1))
    if gpus_per_worker:
        gpus = resources.get("GPU", 0)
        if gpus < gpus_per_worker:
            raise RuntimeError(f"--gpus-per-worker {gpus_per_worker}: the Ray cluster has {gpus:g} GPUs; start it "
                               "on GPU machines or drop --gpus-per-worker to encode on CPUs")
        workers = workers or int(gpus // gpus_per_worker)
    workers = workers or max(1, cpus // 2)
    if workers < 1:
        raise ValueError(f"--num-workers must be at least 1, got {workers}")
    return workers, max(1, cpus // workers)


def encode_on_ray(store: ShardStore, plan: ShardPlan, backbone: Backbone, dataset: Dataset, *,
                  address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0,
                  decode_threads: int | None = None, progress: bool = True) -> None:
    """Encode every unit of ``plan`` that ``store`` has not committed, on Ray actors, and commit each one."""
    todo = work_order(store, plan)
    if progress and len(todo) < len(plan):
        log.info("%d of %d units already in the cache; encoding the other %d", len(plan) - len(todo), len(plan),
                 len(todo))
    if not todo:
        return
    with ray_session(address) as ray:
        actors, cpus = worker_shape(ray.cluster_resources(), workers, gpus_per_worker)
        actors = min(actors, len(todo))
        remote = ray.remote(UnitEncoder).options(num_cpus=cpus, num_gpus=gpus_per_worker,
                                                 max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)
        device = "cuda" if gpus_per_worker else "cpu"
        # unbuilt: each actor builds its own, quietly (the driver's "loading model" note would repeat per worker)
        model = dataclasses.replace(backbone, requested_device=device, loading=contextlib.nullcontext)
        shared = [ray.put(model), ray.put(dataset)]  # held here until the end: restarted actors fetch them again
        pool = [remote.remote(decode_threads or cpus) for _ in range(actors)]
        bar = progress_bar(total=plan.n, initial=plan.n - sum(len(plan.rows(s)) for s in todo), enabled=progress,
                           desc=f"encoding {Path(dataset.location).name} on {actors} Ray worker(s)")
        queue, running = iter(todo), {}  # running: object ref -> (actor, shard)

        def submit(actor) -> None:
            shard = next((s for s in queue if not store.done(s)), None)  # a concurrent writer may have done it
            if shard is not None:
                running[actor.encode.remote(shared, shard, plan.batches(shard))] = actor, shard

        for actor in pool:
            for _ in range(UNITS_IN_FLIGHT):
                submit(actor)
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, shard = running.pop(ref)
            try:
                _, rows, features, failed = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as exc:
                raise RuntimeError(f"a Ray worker died {ACTOR_RESTARTS + 1} times encoding unit {shard} "
                                   f"({type(exc).__name__}); the committed units stay in the cache: rerun to go on, "
                                   "with a smaller --batch-size if workers ran out of memory") from None
            if not store.done(shard):
                store.write_shard(shard, rows, features, failed)
            bar.update(len(plan.rows(shard)))
            submit(actor)
        bar.close()
