"""Concept counting on Ray: the corpus's partition plan counted one partition per task, merged on the driver.

Each task runs the local engine's own per-partition function (:func:`zeroshot.concepts.matching.count_partition`)
on its byte range or file and sends back that partition's counts (:class:`PartitionCounts`: matched caption ids, per
variant counts, first examples, missing lemmas); :func:`merge_partitions` turns them into exactly the counts that
the local engine gets from the whole corpus in one pass.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache

from ..concepts.corpus import Partition, iter_partition, plan_partitions
from ..concepts.lemmas import Lemmatiser, get_lemmatiser
from ..concepts.matching import (
    Concept,
    ConceptCount,
    CorpusSummary,
    PartitionCounts,
    count_partition,
    merge_partitions,
)
from .session import in_order, ray_session


def count_on_ray(source: str | os.PathLike, concepts: Sequence[Concept | str], *, mode: str, lemmatiser: Lemmatiser,
                 examples: int, column: str | None, address: str | None, num_workers: int | None,
                 partition_bytes: int) -> tuple[CorpusSummary, list[ConceptCount]]:
    """Count ``concepts`` in the corpus at ``source`` on Ray (arguments as in
    :func:`zeroshot.concepts.matching.count_corpus`); workers build ``lemmatiser`` again by its name.

    ``num_workers`` caps the tasks in flight (and the CPUs of a local cluster this call starts; default: all)."""
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers (--num-workers) must be at least 1, not {num_workers}")
    plan = plan_partitions(source, partition_bytes=partition_bytes)
    with ray_session(address, num_cpus=num_workers) as ray:
        task = ray.remote(num_cpus=1)(count_one_partition)
        shared = ray.put((list(concepts), mode, lemmatiser.name, examples, column))
        parts = list(in_order(ray, lambda partition: task.remote(partition, shared), plan, num_workers))
    return merge_partitions(parts, lemmatiser, examples)


def count_one_partition(partition: Partition, job: tuple) -> PartitionCounts:
    """A Ray task: the counts of one partition, ``job`` being ``(concepts, mode, lemmatiser name, examples,
    column)``."""
    concepts, mode, lemmatiser, examples, column = job
    index, counts = count_partition(lambda: iter_partition(partition, column=column), concepts, mode=mode,
                                    lemmatiser=worker_lemmatiser(lemmatiser), examples=examples)
    return PartitionCounts.of(index, counts)


@cache
def worker_lemmatiser(name: str) -> Lemmatiser:
    """One lemmatiser per worker process and name: its word cache then serves every partition the process counts."""
    return get_lemmatiser(name)
