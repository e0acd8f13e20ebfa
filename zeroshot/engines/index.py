"""Index building on Ray: the row chunks of a trained, empty faiss index are encoded by parallel tasks and merged
into one index in chunk order, so that the result is the index the local engine builds (retrieval.md section 7:
train once, add shards in parallel, merge).

Each task gets the empty index through the object store (``faiss.serialize_index``, put once), reads its rows
from the memory-mapped ``features.npy`` by path (workers on the same machine or a shared filesystem; rows held in
memory travel through the object store instead), encodes them (``sa_encode``: list number and code per row) and
returns the codes with the exact neighbours of the tuning queries among its rows. The driver appends the codes
in chunk order (``add_sa_codes``). Returning whole partial indexes (``serialize_index``, then ``merge_from``)
was measured first: serializing a 65,536-row IVF-Flat part took 2-11 s in the task, longer than encoding it.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..retrieval.index import chunk_neighbours, mapped_file, read_rows
from .session import in_order, ray_session


def check_mergeable(faiss_index, factory: str) -> None:
    """Refuse, before training, an index whose parts cannot be merged: IVF indexes (any coarse quantizer,
    behind OPQ) and flat code indexes (Flat, SQ, PQ) can; HNSW graphs cannot."""
    import faiss

    if faiss.try_extract_index_ivf(faiss_index) is None and not isinstance(
            faiss.downcast_index(faiss_index), faiss.IndexFlatCodes):
        raise ValueError(f"the ray engine (--engine ray) merges IVF and Flat indexes, not {factory}: its parts "
                         "cannot be merged; build it with the local engine or choose an IVF index")


def add_codes(faiss_index, codes: np.ndarray) -> None:
    """Append rows encoded by ``sa_encode`` of the same trained index (list number and code per row, for IVF) to
    ``faiss_index``, in order, as ``add`` would have stored them."""
    import faiss

    inner = faiss.try_extract_index_ivf(faiss_index)
    inner = faiss_index if inner is None else inner
    inner.add_sa_codes(codes)
    faiss_index.ntotal = inner.ntotal  # an OPQ wrapper keeps its own count


def encode_chunk(empty: np.ndarray, source, start: int, stop: int, skip: np.ndarray, queries: np.ndarray,
                 k: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """A Ray task: rows [start, stop) less ``skip`` of ``source`` (``(path, offset, dtype, shape)`` of a mapped
    file such as ``features.npy``, or the rows themselves) encoded by the serialized empty index (``sa_encode``:
    coarse assignment and codes, the costly part of adding); returns (codes, exact top-k of queries)."""
    import faiss

    if isinstance(source, tuple):
        path, offset, dtype, shape = source
        source = np.memmap(path, np.dtype(dtype), "r", offset=offset, shape=tuple(shape))
    rows = read_rows(source, start, stop, skip=skip)
    return faiss.deserialize_index(empty).sa_encode(rows), chunk_neighbours(queries, rows, k)


def add_chunks_on_ray(faiss_index, X: np.ndarray, plan: list, queries: np.ndarray, k: int, *,
                      address: str | None = None, num_workers: int | None = None
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Encode the chunks of ``plan`` (``(start, stop, skip)``, :func:`zeroshot.retrieval.index.chunk_plan`) on
    Ray, at most ``num_workers`` at once (default: the cluster's CPUs), appending each chunk's codes to
    ``faiss_index`` in plan order; yields each chunk's exact top-k of ``queries`` as the local engine does."""
    import faiss

    mapped = mapped_file(X)
    with ray_session(address, num_cpus=num_workers) as ray:
        workers = num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(num_cpus=1)(encode_chunk)
        empty, queries_ref = ray.put(faiss.serialize_index(faiss_index)), ray.put(queries)

        def submit(start: int, stop: int, skip: np.ndarray):
            if mapped is not None:  # the task maps the file itself
                return task.remote(empty, (*mapped, X.dtype.str, X.shape), start, stop, skip, queries_ref, k)
            return task.remote(empty, np.ascontiguousarray(X[start:stop]), 0, stop - start, skip - start,
                               queries_ref, k)

        for codes, found in in_order(ray, lambda chunk: submit(*chunk), plan, workers):
            add_codes(faiss_index, codes)
            yield found
