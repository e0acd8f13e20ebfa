"""Index: a faiss index over unit feature rows, searched by inner product (= cosine) and answering with ids.

Follows ``../shared/methods/retrieval.md`` sections 1-4, 6 and 7: every index is made with ``index_factory`` and
``METRIC_INNER_PRODUCT``; rows and queries are normalised; faiss positions are mapped to the caller's ids (never
``-1``); a folder holds the faiss index (``faiss.write_index``), ids and image paths as ``.npy`` (no pickle), optional
captions (JSON) with their text embeddings (``.npy``), and an ``index.json`` manifest naming them; an index refuses
queries from another backbone fingerprint. Image paths are stored relative to the folder the images were indexed
from, and that folder relative to the index folder (and absolute), so an index folder moved together with its images
still finds them.

Rows are never copied as a whole: training reads a seeded sample, and adding, exact search and tuning read the
matrix ``CHUNK_ROWS`` rows at a time, so a FeatureSet larger than memory (a memory-mapped ``features.npy``) can be
indexed (section 7). With ``engine="ray"`` the chunks are encoded by parallel Ray tasks (:mod:`zeroshot.engines.index`).
"""
from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import re
import uuid
import warnings
from pathlib import Path

import numpy as np

from ..backbone import check_fingerprint
from ..features import (
    FeatureSet,
    atomic_save_npy,
    atomic_write_json,
    check_features,
    load_npy,
    unit_rows,
)

MANIFEST = "index.json"
FORMAT_VERSION = 2  # 2: image paths relative to a base folder, optional captions (1 still loads)
FLAT_LIMIT = 200_000  # auto: exact search up to this many rows (no training, fast enough on a CPU)
TRAIN_PER_LIST = 40  # IVF training rows per list: just above faiss's 39 warning (autofaiss: up to 100; CPU minutes)
MIN_TRAIN_PER_LIST = 39  # faiss warns below this many training rows per IVF list
KMEANS_ITERATIONS = 10  # k-means iterations for the coarse quantizer (faiss's IVF default)
CHUNK_ROWS = 65_536  # rows read, checked and added at a time: 96 MiB of float32 at D = 384
TUNE_QUERIES = 500  # rows held out of the index while they tune nprobe / efSearch as queries
TUNE_MARGIN = 0.01  # tune to target + margin so that other queries, a different sample, still meet the target
TUNE_PLATEAU = 0.001  # a doubled nprobe / efSearch that gains less recall than this means recall has levelled off
PQ_SIZES = (256, 128, 96, 64, 48, 32, 24, 16, 8, 4)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(size: int | str) -> int:
    """``2G``, ``512M``, ``1.5GB`` (powers of 1024) or a plain number of bytes."""
    if isinstance(size, (int, np.integer)):
        return int(size)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:i?B)?\s*", str(size), re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read memory size {size!r}: write it like 2G, 512M or 1500000000")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def ivf_lists(n: int) -> int:
    """nlist = 2^round(log2(sqrt(N))), at least 1: a quarter of autofaiss's 4 sqrt(N) (see :func:`choose_factory`)."""
    return max(1, 2 ** round(math.log2(math.sqrt(max(n, 1)))))


def index_bytes(factory: str, n: int, d: int) -> int | None:
    """Estimated memory of ``n`` rows of width ``d`` in an index_factory string (retrieval.md section 2 table);
    None for strings the table does not cover. An ``IVF{nlist}_HNSW{M}`` coarse quantizer holds its nlist
    centroids as an HNSW graph (4D + 8M bytes each, like ``HNSW{M}`` rows)."""
    f = factory.replace(" ", "")
    if f == "Flat":
        return 4 * d * n
    if m := re.fullmatch(r"HNSW(\d+)(?:,Flat)?", f):
        return (4 * d + 8 * int(m.group(1))) * n
    m = re.fullmatch(r"(?:OPQ(\d+)(?:_\d+)?,)?IVF(\d+)(?:_HNSW(\d+))?,(Flat|SQ8|PQ(\d+)(?:x8)?)", f)
    if not m:
        return None
    per_row = {"Flat": 4 * d, "SQ8": d}.get(m.group(4)) or int(m.group(5) or 0)
    rotation = 4 * d * d if m.group(1) else 0
    quantizer = int(m.group(2)) * (4 * d + 8 * int(m.group(3) or 0))
    return (per_row + 8) * n + quantizer + rotation


def choose_factory(n: int, d: int, max_memory: int | str = "2G") -> str:
    """The ``auto`` rule: exact search while it is cheap, then the least compressed IVF index that fits
    ``max_memory`` (retrieval.md section 3, with deliberate deviations from autofaiss, below).

    1. ``Flat`` (exact) while N <= 200,000 and 4*D*N bytes fit.
    2. ``IVF{nlist},Flat`` (4D + 8 bytes per row), then ``IVF{nlist},SQ8`` (D + 8), the first that fits, with
       nlist = 2^round(log2(sqrt N)) (:func:`ivf_lists`).
    3. ``IVF{nlist},PQ{m}x8`` with the largest m in 256..4 that divides D and fits (m + 8 bytes per row).
    The search knob (nprobe) is then tuned to a target recall by :meth:`Index.build`; training
    (:meth:`Index.train`) uses 40 sampled rows per list.

    Why sqrt(N) lists, not autofaiss's 4 sqrt(N) (or its 16,384+ above 1M rows): on a CPU the build is
    dominated by comparing every training row (k-means) and every added row with all nlist centroids, so it
    grows with nlist, while a query compares with nlist centroids plus nprobe * N / nlist rows, which sqrt(N)
    lists keep small for the small nprobe that tuning finds. Measured on 1,000,000 clustered rows (D = 384,
    2 shared cores, ``scripts/bench_index.py --builds old,auto``; model_zoo.md) the old ``IVF4096,Flat`` (50
    training rows per list) built in 179.9 s, tuned to nprobe 4, recall@10 0.982, 7,315 queries/s, and
    ``IVF1024,Flat`` in 36.9 s, nprobe 1, recall@10 0.979, 9,259 queries/s. An ``IVF{nlist}_HNSW32`` coarse
    quantizer (autofaiss's choice for large nlist) did not help on these cores: adding 100k rows took 34 s through it against 21 s
    with the flat quantizer at nlist = 16,384, and with its default efSearch it capped recall@10 at 0.96 at
    nlist = 4,096 (flat: 1.0), so ``auto`` does not use it; ``index_bytes`` and the Ray engine accept such strings
    given by name.

    Deviations from autofaiss: it prefers ``HNSW{M}`` whenever M = (budget/N - 4D)/8 >= 8. Measured here
    (``scripts/bench_index.py``: 1,000,000 clustered rows, D = 384, 2 shared cores) HNSW32 took 3.5x longer to
    build than IVF4096,Flat (2,057 s vs 584 s), needs 8M more bytes per row, and needed efSearch 6,533 for
    recall@10 0.95 (7 queries/s, slower than exact search: greedy graph search does not cross between
    well-separated clusters), where IVF reached 1.0 at nprobe 32 (344 queries/s). So ``auto`` never picks HNSW;
    ask for ``HNSW32`` by name where it suits the data. Nor does ``auto`` put autofaiss's OPQ rotation before PQ:
    training ``OPQ128`` for D = 384 took 77 s for 2 of its 50 iterations on one core (65,536 training rows,
    faiss 1.15.1, its first-iteration PQ rounds cut from 40 to 4; 214 s on 2 busy cores), so about half an hour
    in all; ask for ``OPQ{m},IVF{nlist},PQ{m}x8`` by name where the rotation pays (anisotropic features).
    """
    if n < 1 or d < 1:
        raise ValueError(f"cannot index {n} rows of width {d}")
    budget = parse_bytes(max_memory)
    if n <= FLAT_LIMIT and index_bytes("Flat", n, d) <= budget:
        return "Flat"
    coarse = f"IVF{ivf_lists(n)}"
    candidates = [f"{coarse},Flat", f"{coarse},SQ8"]
    candidates += [f"{coarse},PQ{pq}x8" for pq in PQ_SIZES if pq < d and d % pq == 0]
    for factory in candidates:
        if index_bytes(factory, n, d) <= budget:
            return factory
    smallest = min(index_bytes(f, n, d) for f in candidates)
    raise ValueError(f"{n} rows of width {d} need at least {smallest / 2**20:.0f} MiB in any index here, more than "
                     f"max_memory={max_memory}: raise max_memory or index fewer rows")


def _faiss_index(factory: str, dim: int):
    """An empty faiss index for an index_factory string; one it cannot parse is a ValueError naming the cause."""
    import faiss

    if "IDMap" in factory:
        raise ValueError(f"index {factory!r}: drop the IDMap prefix; this index maps faiss positions to your ids "
                         "itself")
    try:
        return faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"faiss cannot make index {factory!r} for width {dim}: "
                         f"{str(exc).splitlines()[-1].split(': ')[-1]}; write e.g. Flat, HNSW32, IVF1024,Flat, "
                         "IVF4096,PQ48x8 or 'auto'") from None


def check_factory(factory: str, n: int, d: int, *, warn: bool = True) -> None:
    """Refuse, before any training, a factory string faiss cannot make or ``n`` rows of width ``d`` cannot train:
    IVF needs at least nlist rows (and, with ``warn``, warns below ~39 per list, faiss's own threshold), a product
    quantizer at least 2^nbits. ``'auto'`` always fits."""
    import faiss

    if factory == "auto":
        return
    if n < 1 or d < 1:
        raise ValueError(f"cannot index {n} rows of width {d}")
    ivf = faiss.try_extract_index_ivf(_faiss_index(factory, d))
    if ivf is not None and n < MIN_TRAIN_PER_LIST * ivf.nlist:
        most = n // MIN_TRAIN_PER_LIST
        advice = "use 'auto' or Flat" + (f", or at most IVF{most} for {n} rows" if most else "")
        message = (f"{factory} trains {ivf.nlist} lists on {n} rows (faiss wants >= {MIN_TRAIN_PER_LIST} per "
                   f"list); {advice}")
        if n < ivf.nlist:
            raise ValueError(message)
        if warn:
            warnings.warn(message, stacklevel=2)
    pq = re.search(r"PQ\d+(?:x(\d+))?", factory)  # PQ{m}x{nbits}, nbits 8 unless given
    centroids = 2 ** int(pq.group(1) or 8) if pq else 0
    if n < centroids:
        raise ValueError(f"{factory}: its product quantizer trains {centroids} centroids and needs at least that many "
                         f"rows, got {n}; use 'auto', Flat, HNSW32 or an SQ8 index")


def search_knob(factory: str) -> str | None:
    """The runtime parameter that trades speed for recall: ``nprobe`` (IVF), ``efSearch`` (HNSW), or None."""
    if "IVF" in factory:
        return "nprobe"
    if "HNSW" in factory:
        return "efSearch"
    return None


def feature_rows(X, *, dim: int | None = None) -> np.ndarray:
    """X checked as a feature matrix (2-D floats, ``dim`` wide; finiteness is checked per chunk as rows are
    read) and kept as it is: a float32 memory map stays one (``check_features`` would make it a plain view), so
    that its rows are read through :func:`_window`."""
    checked = check_features(X, dim=dim, finite=False)
    return X if isinstance(X, np.memmap) and X.dtype == checked.dtype else checked


def row_chunks(n: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive ``CHUNK_ROWS``-row pieces of ``n`` rows: the unit of reading and adding."""
    return [(start, min(n, start + CHUNK_ROWS)) for start in range(0, n, CHUNK_ROWS)]


def mapped_file(X: np.ndarray) -> tuple[str, int] | None:
    """(path, byte offset of row 0) when X is a whole ``.npy`` file mapped by ``np.load(mmap_mode='r')`` (a
    FeatureSet's features), else None. Its rows are then read through short-lived maps of their own: pages read
    through X's own map stay resident, and count as this process's memory (RSS), for as long as X lives."""
    if isinstance(X, np.memmap) and isinstance(X.base, mmap.mmap) and X.flags.c_contiguous and X.filename:
        return str(X.filename), int(X.offset)
    return None


def _window(X: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of X without a copy: a slice, or for a mapped file a map of just those rows, unmapped
    with its pages when the caller lets go of it."""
    source = mapped_file(X)
    if source is None:
        return X[start:stop]
    path, offset = source
    return np.memmap(path, X.dtype, "r", offset=offset + start * X.strides[0], shape=(stop - start, X.shape[1]))


def read_rows(X: np.ndarray, start: int, stop: int, *, skip=()) -> np.ndarray:
    """Rows [start, stop) of X less the (absolute, sorted) rows ``skip``, checked and normalised (``unit_rows``):
    one chunk's worth of memory however large X is."""
    rows = unit_rows(_window(X, start, stop), dim=X.shape[1])
    return np.delete(rows, np.asarray(skip, dtype=np.int64) - start, axis=0) if len(skip) else rows


def gather_rows(X: np.ndarray, rows) -> np.ndarray:
    """Float32 copy of X's ``rows`` (any order, repeats allowed), read chunk by chunk through :func:`_window`, so
    that a sample of a mapped file touches only the pages that hold it."""
    wanted, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
    out = np.empty((len(wanted), X.shape[1]), np.float32)
    for start, stop in row_chunks(len(X)):
        first, last = np.searchsorted(wanted, [start, stop])
        if first < last:
            out[first:last] = _window(X, start, stop)[wanted[first:last] - start]
    return out[inverse.ravel()]


def seeded_rows(n: int, size: int, seed: int) -> np.ndarray:
    """``size`` distinct rows of ``n`` (all when size >= n), sorted, drawn with ``seed``."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def chunk_plan(n: int, held: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """``(start, stop, skip)`` per chunk: rows [start, stop) of X are added less ``skip``, the held-out rows in them
    (which join the index last, after tuning). The same plan drives the local and the Ray engine."""
    cuts = np.searchsorted(held, [stop for _, stop in row_chunks(n)])
    return [(start, stop, held[a:b]) for (start, stop), a, b in zip(row_chunks(n), np.r_[0, cuts[:-1]], cuts)]


def chunk_neighbours(queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (similarities, positions in ``rows``) of ``queries`` among one chunk's rows (k or fewer)."""
    import faiss

    if not len(queries) or not len(rows):
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    return faiss.knn(queries, rows, min(k, len(rows)), metric=faiss.METRIC_INNER_PRODUCT)


def add_chunk(faiss_index, X: np.ndarray, start: int, stop: int, skip: np.ndarray, queries: np.ndarray,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """Add rows [start, stop) of X less ``skip`` to ``faiss_index``; return the exact top-k of ``queries`` among
    them (:func:`chunk_neighbours`), so that one read of the rows serves both adding and the exact search that
    tuning needs."""
    rows = read_rows(X, start, stop, skip=skip)
    faiss_index.add(rows)
    return chunk_neighbours(queries, rows, k)


def reserve_rows(faiss_index, n: int) -> None:
    """Room for ``n`` more rows in a flat-coded index (Flat, SQ, PQ) at once: added chunk by chunk, its code array
    would grow, and be copied, again and again (``scripts/bench_index_memory.py`` times it). Other indexes (IVF
    lists, HNSW) are left as they are."""
    import faiss

    index = faiss.downcast_index(faiss_index)
    if isinstance(index, faiss.IndexFlatCodes) and n > 0:
        size = index.codes.size()
        index.codes.resize(size + n * index.code_size)  # std::vector keeps its capacity when it shrinks back
        index.codes.resize(size)


def exact_search(X, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force (similarities, positions) of the k most similar rows of X, best first (the reference), chunk
    by chunk, so that X may be larger than memory."""
    import faiss

    X = feature_rows(X)
    Q = unit_rows(queries, dim=X.shape[1], name="queries")
    top = TopK(len(Q), min(check_k(k), len(X)))
    for start, stop in row_chunks(len(X)):
        top.add(*faiss.knn(Q, read_rows(X, start, stop), min(k, stop - start), metric=faiss.METRIC_INNER_PRODUCT),
                offset=start)
    return top.result()


class TopK:
    """The running k largest similarities (and their positions) per query over results that arrive in pieces:
    ``faiss.ResultHeap`` keeping maxima."""

    def __init__(self, nq: int, k: int):
        import faiss

        self.heap = faiss.ResultHeap(nq, k, keep_max=True)

    def add(self, sims: np.ndarray, positions: np.ndarray, *, offset: int = 0) -> None:
        """Merge one piece's results, its positions shifted by ``offset`` (the rows before the piece)."""
        if sims.shape[1]:
            self.heap.add_result(sims, positions + offset)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, positions), best first."""
        self.heap.finalize()
        return self.heap.D, self.heap.I


def knn_recall(X, queries, found: np.ndarray, kth_exact: np.ndarray, *, rows: np.ndarray | None = None) -> float:
    """k-recall@k of positions ``found`` (nq, k; -1 = missing) against exact search (retrieval.md section 4).

    A hit counts when its exact similarity reaches the k-th exact similarity (less 1e-6), so tied rows do not
    make exact search score below 1. ``kth_exact`` is ``exact_search(X, queries, k)[0][:, k - 1]``. ``rows``
    maps index positions to rows of X where the index holds X's rows in another order.
    """
    found, X = np.asarray(found), feature_rows(X)
    Q = unit_rows(queries, dim=X.shape[1], name="queries")
    positions = np.maximum(found, 0).ravel()
    vectors = gather_rows(X, positions if rows is None else rows[positions]).reshape(*found.shape, -1)
    sims = np.einsum("qd,qkd->qk", Q, vectors)
    hits = (found >= 0) & (sims >= np.asarray(kth_exact)[:, None] - 1e-6)
    return float(hits.mean())


def check_k(k) -> int:
    """The number of results asked for, which must be a positive integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def image_paths(features: FeatureSet) -> np.ndarray | None:
    """Absolute image file per row of a FeatureSet made from files (folder, CSV list, image files); None for
    ``.npz`` and tar data, whose images are not files."""
    dataset = features.meta.get("dataset") or {}
    location = dataset.get("location")
    kind = dataset.get("kind")
    if kind == "folder":
        base = Path(location)
    elif kind == "filelist":
        base = Path(location).parent
    elif kind == "files":
        base = Path.cwd()  # ids are the paths as given, relative to where extraction ran
    else:
        return None
    return np.array([str((base / str(i)).absolute()) for i in features.ids])


def _ids_array(ids, n: int) -> np.ndarray:
    """``n`` ids as int64 or str, checked to be unique among themselves (one sort)."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D sequence, got shape {ids.shape}")
    if len(ids) != n:
        raise ValueError(f"{n} rows but {len(ids)} ids")
    ids = ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids must be unique; some are repeated")
    return ids


def _paths_array(paths, n: int) -> np.ndarray | None:
    """Absolute image paths for ``n`` rows, or None."""
    if paths is None:
        return None
    paths = np.asarray([str(Path(p).absolute()) for p in paths])
    if len(paths) != n:
        raise ValueError(f"{n} rows but {len(paths)} paths")
    return paths


def _relative_paths(paths: np.ndarray, base: str) -> np.ndarray:
    """``paths`` under the folder ``base`` made relative to it (a prefix cut, fast for millions of rows); others,
    and empty ones (rows without a file), as they are."""
    prefix = os.path.join(base, "")
    return np.array([p.removeprefix(prefix) for p in paths.tolist()], str)


def _find_base(folder: Path, base: dict | None) -> str:
    """The folder a saved index's image paths are relative to: where it lies relative to the index folder when that
    folder exists (the index was moved or copied together with its images), else where it was when saved; ``''`` for
    a format-1 index, whose paths are absolute."""
    if not base:
        return ""
    moved = os.path.normpath(folder.absolute() / base["relative"])
    return moved if os.path.isdir(moved) else base["absolute"]


def _digest(ids: np.ndarray) -> str:
    return hashlib.sha256(ids.dtype.str.encode() + np.ascontiguousarray(ids).tobytes()).hexdigest()


class Index:
    """A faiss index over unit rows with ids (str or int), optional image paths, and a backbone fingerprint.

    ``Index.build(features)`` is the usual way in (choose, train, add, tune); ``train``/``add``/``set_params``
    give the steps one by one, ``add_features`` appends a FeatureSet. ``search`` returns, per query,
    ``(ids, scores)`` sorted by descending cosine.
    """

    def __init__(self, dim: int, factory: str = "Flat", *, fingerprint: str | None = None,
                 backbone: str | None = None):
        if factory == "auto":
            raise ValueError("'auto' chooses from the data: use Index.build(features, factory='auto')")
        self.faiss_index = _faiss_index(factory, dim)
        self.dim, self.factory = int(dim), factory
        self.fingerprint, self.backbone = fingerprint, backbone
        self.ids = np.zeros(0, dtype=str)
        self.paths: np.ndarray | None = None
        self.roots: list[str] = []  # the folders images were indexed from (symlinks not resolved): serve checks them
        self.captions: list[str] = []  # caption texts, grouped by image in row order (see set_captions)
        self.caption_rows = np.zeros(0, np.int64)  # the row of each caption's image, ascending
        self.caption_features = np.zeros((0, dim), np.float32)  # (C, D) unit rows from the backbone's text tower
        self.params: dict[str, float] = {}
        self.tuned_recall: float | None = None
        self._positions: dict | None = None
        self._sorted_ids: np.ndarray | None = None  # made by the first add, then kept sorted (see _known)

    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    def __repr__(self) -> str:
        return f"Index({self.factory!r}, n={len(self)}, dim={self.dim}, params={self.params}, fingerprint={self.fingerprint})"

    # --- building -------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, features, ids=None, *, factory: str = "auto", fingerprint: str | None = None, paths=None,
              max_memory: int | str = "2G", target_recall: float = 0.95, params: dict | None = None, k: int = 10,
              seed: int = 0, train_per_list: int = TRAIN_PER_LIST, engine: str = "local",
              address: str | None = None, num_workers: int | None = None) -> "Index":
        """Index a FeatureSet (its ids, fingerprint and image paths come along) or an (N, D) array with ``ids``.

        ``factory``: ``auto`` (:func:`choose_factory`) or any index_factory string. Training reads a seeded sample
        (:meth:`train`); the rows are then read, checked and added ``CHUNK_ROWS`` at a time, so a memory-mapped
        matrix larger than memory is never copied whole. Unless ``params`` is given, the search knob of an
        approximate index is tuned until k-recall@k reaches ``target_recall`` (:meth:`tune`) on up to 500 seeded
        rows that are added last, after tuning, so that they are held-out queries meanwhile; their exact
        neighbours are found in the same pass over the chunks. ``engine="ray"`` encodes the chunks on Ray tasks
        (``address``: an existing cluster, else a local one; ``num_workers``: tasks at once) and merges them in
        order: the same index as the local engine.
        """
        from ..engines.session import check_engine

        check_engine(engine)
        backbone = None
        if isinstance(features, FeatureSet):
            ids = features.ids if ids is None else ids
            fingerprint = fingerprint or features.fingerprint
            paths = image_paths(features) if paths is None else paths
            backbone = features.meta.get("backbone")
            features = features.features
        X = feature_rows(features)
        n, d = X.shape
        if factory == "auto":
            factory = choose_factory(n, d, max_memory)
        check_factory(factory, n, d)
        ids = np.arange(n, dtype=np.int64) if ids is None else _ids_array(ids, n)  # positions are unique already
        paths = _paths_array(paths, n)
        index = cls(d, factory, fingerprint=fingerprint, backbone=backbone)
        if engine == "ray":
            from ..engines.index import check_mergeable

            check_mergeable(index.faiss_index, factory)
        index.train(X, seed=seed, per_list=train_per_list)
        tuning = not params and search_knob(factory) is not None
        held = seeded_rows(n, min(TUNE_QUERIES, n // 10), seed) if tuning else np.zeros(0, np.int64)
        queries = unit_rows(gather_rows(X, held), dim=d)
        k = min(check_k(k), n - len(held))
        exact = index._add_chunks(X, chunk_plan(n, held), queries, k, engine=engine, address=address,
                                  num_workers=num_workers)
        kept = np.ones(n, bool)
        kept[held] = False
        order = np.concatenate([np.flatnonzero(kept), held])  # faiss position -> row of X
        if tuning:
            index._tune(X, queries, exact[:, k - 1], k=k, target_recall=target_recall, rows=order)
        index.faiss_index.add(queries)  # the tuning queries join the index last: held out while they tuned it
        index._append(ids[order], None if paths is None else paths[order])
        return index.set_params(**(params or {}))

    def train(self, X, *, seed: int = 0, per_list: int = TRAIN_PER_LIST) -> "Index":
        """Train IVF/PQ parts on ``per_list`` seeded rows per list (or per PQ centroid) of ``X``, gathered rather
        than copied whole, with ``KMEANS_ITERATIONS`` k-means iterations; a no-op for Flat and HNSW."""
        import faiss

        if self.faiss_index.is_trained:
            return self
        X = feature_rows(X, dim=self.dim)
        ivf = faiss.try_extract_index_ivf(self.faiss_index)
        if ivf is not None:
            ivf.cp.niter = KMEANS_ITERATIONS
        rows = seeded_rows(len(X), per_list * (ivf.nlist if ivf is not None else 256), seed)
        self.faiss_index.train(unit_rows(gather_rows(X, rows), dim=self.dim))
        return self

    def add(self, X, ids, *, paths=None) -> "Index":
        """Append rows (an array or a memory-mapped matrix, read chunk by chunk) with their ids, unique and new
        to the index (one sort, not per chunk), and, optionally, the image file each came from."""
        X = feature_rows(X, dim=self.dim)
        ids, paths = _ids_array(ids, len(X)), _paths_array(paths, len(X))
        if len(self.ids) and ids.dtype.kind != self.ids.dtype.kind:
            raise ValueError(f"ids must all be {'integers' if self.ids.dtype.kind == 'i' else 'strings'}, like the "
                             "ids already in the index")
        known = self._known(ids)
        if known.any():
            raise ValueError(f"ids must be unique; {np.count_nonzero(known)} are already in the index, e.g. "
                             f"{ids[known][:3].tolist()}")
        if not self.faiss_index.is_trained:
            raise ValueError(f"{self.factory} must be trained before adding rows: call train(X) or use Index.build")
        self._add_chunks(X, chunk_plan(len(X), np.zeros(0, np.int64)), np.zeros((0, self.dim), np.float32), 1)
        self._append(ids, paths)
        return self

    def add_features(self, features: FeatureSet) -> "Index":
        """Append a FeatureSet from the same backbone (fingerprint checked) with its ids, which must be new to the
        index, and its image paths; the trained quantiser is reused as it is."""
        if not isinstance(features, FeatureSet):
            raise TypeError(f"add_features takes a FeatureSet, got {type(features).__name__}; use add(X, ids)")
        check_fingerprint(self.fingerprint, features.fingerprint, "this index", "add features made by the model "
                          "the index was built from, or build a new index", name=self.backbone)
        return self.add(features.features, features.ids, paths=image_paths(features))

    def _add_chunks(self, X: np.ndarray, plan: list, queries: np.ndarray, k: int, *, engine: str = "local",
                    address: str | None = None, num_workers: int | None = None) -> np.ndarray:
        """Add X's rows chunk by chunk per ``plan`` (:func:`chunk_plan`), here or on Ray; return the exact top-k
        similarities of ``queries`` among the rows added, best first."""
        reserve_rows(self.faiss_index, sum(stop - start - len(skip) for start, stop, skip in plan) + len(queries))
        if engine == "ray":
            from ..engines.index import add_chunks_on_ray

            found = add_chunks_on_ray(self.faiss_index, X, plan, queries, k, address=address, num_workers=num_workers)
        else:
            found = (add_chunk(self.faiss_index, X, start, stop, skip, queries, k) for start, stop, skip in plan)
        top, added = TopK(len(queries), k), 0
        for (sims, positions), (start, stop, skip) in zip(found, plan):  # found first: it runs to its end
            top.add(sims, positions, offset=added)
            added += stop - start - len(skip)
        return top.result()[0]

    def _known(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` the index already holds: binary searches in its ids kept sorted across adds (an add of
        m rows to N costs m log N and one merge, not a sort of all N + m ids)."""
        if self._sorted_ids is None:
            self._sorted_ids = np.sort(self.ids)
        at = np.minimum(np.searchsorted(self._sorted_ids, ids), max(len(self._sorted_ids) - 1, 0))
        return self._sorted_ids[at] == ids if len(self._sorted_ids) else np.zeros(len(ids), bool)

    def _append(self, ids: np.ndarray, paths: np.ndarray | None) -> None:
        """Record the ids and image paths of rows just added to the faiss index, in the order they were added."""
        import faiss

        if paths is not None and len(paths):
            root = os.path.commonpath({os.path.dirname(p) for p in paths.tolist()})  # absolute, not resolved
            if root not in self.roots:
                self.roots.append(root)
        if paths is not None or self.paths is not None:
            old = self.paths if self.paths is not None else np.full(len(self.ids), "")
            self.paths = np.concatenate([old, paths if paths is not None else np.full(len(ids), "")])
        self.ids = np.concatenate([self.ids, ids]) if len(self.ids) else ids
        self._positions = None
        if self._sorted_ids is not None:  # two sorted runs: the stable sort (timsort, radix) merges them in one pass
            runs = [self._sorted_ids, np.sort(ids)] if len(self._sorted_ids) else [np.sort(ids)]
            self._sorted_ids = np.sort(np.concatenate(runs), kind="stable")
        ivf = faiss.try_extract_index_ivf(self.faiss_index)
        if ivf is not None:
            ivf.make_direct_map()  # lets vectors() reconstruct rows for image-by-id queries; kept up by later adds

    def set_params(self, **params: float) -> "Index":
        """Set search-time parameters, e.g. ``nprobe=32`` or ``efSearch=128`` (through any wrapper)."""
        import faiss

        for name, value in params.items():
            try:
                faiss.ParameterSpace().set_index_parameter(self.faiss_index, name, value)
            except RuntimeError:
                raise ValueError(f"{self.factory} has no search parameter {name!r} "
                                 f"(it takes {search_knob(self.factory) or 'none'})") from None
            self.params[name] = value
        return self

    def tune(self, X, queries, *, target_recall: float = 0.95, k: int = 10) -> float:
        """Smallest nprobe / efSearch whose k-recall@k on ``queries`` (rows not in the index) reaches
        ``target_recall`` + 0.01, found by doubling then bisection. ``X`` must be the rows this index holds, in
        order (read chunk by chunk); with fewer than 10 queries the knob is set to exhaustive search. Returns the
        measured recall and warns when the target is out of reach: when even the largest setting falls short, or
        when doubling the knob gains less than 0.001 (a PQ index's codes cap its recall, and scanning more lists
        would only slow every query; the smaller setting is kept). (Database rows are not used as
        queries: HNSW finds their neighbours through the row's own edges, which overstates its recall
        several-fold.)"""
        if search_knob(self.factory) is None:
            return 1.0
        X = feature_rows(X, dim=self.dim)
        if len(X) != len(self):
            raise ValueError(f"tune() needs the {len(self)} rows the index holds, got {len(X)}")
        Q, k = unit_rows(queries, dim=self.dim, name="queries"), min(check_k(k), len(X))
        return self._tune(X, Q, exact_search(X, Q, k)[0][:, k - 1], k=k, target_recall=target_recall)

    def _tune(self, X: np.ndarray, Q: np.ndarray, kth: np.ndarray, *, k: int, target_recall: float,
              rows: np.ndarray | None = None) -> float:
        """:meth:`tune` given the k-th exact similarity of each query; ``rows`` maps faiss positions to X's rows."""
        knob = search_knob(self.factory)
        top = self._knob_limit(knob)
        if len(Q) < 10:
            self.set_params(**{knob: top})
            return 1.0

        def recall(value: int) -> float:
            self.set_params(**{knob: value})
            return knn_recall(X, Q, self.faiss_index.search(Q, k)[1], kth, rows=rows)

        goal = min(target_recall + TUNE_MARGIN, 1.0)
        low, high = 0, min(16, top)
        measured = {high: recall(high)}
        while measured[high] < goal and high < top:
            low, high = high, min(high * 2, top)
            measured[high] = recall(high)
            if measured[high] < measured[low] + TUNE_PLATEAU:  # the codes, not the knob, cap recall: stop there
                high = low
                break
        while high - low > 1 and measured[high] >= goal:  # bisect between the last miss and the first hit
            mid = (low + high) // 2
            measured[mid] = recall(mid)
            low, high = (low, mid) if measured[mid] >= goal else (mid, high)
        self.set_params(**{knob: high})
        self.tuned_recall = measured[high]
        if self.tuned_recall < target_recall:
            warnings.warn(f"{self.factory}: recall@{k} {self.tuned_recall:.3f} at {knob}={high} is below the target "
                          f"{target_recall}; choose a larger index (more memory) or lower the target", stacklevel=3)
        return self.tuned_recall

    def _knob_limit(self, knob: str) -> int:
        import faiss

        if knob == "nprobe":
            return int(faiss.extract_index_ivf(self.faiss_index).nlist)
        return max(4096, len(self))

    # --- searching ------------------------------------------------------------------------------------------
    def check_fingerprint(self, fingerprint: str | None) -> None:
        """Refuse features from another backbone than the one this index was built from."""
        check_fingerprint(self.fingerprint, fingerprint, "this index", "search with the model the index was built "
                          "from, or rebuild the index with this one", name=self.backbone)

    def search_positions(self, queries, k: int = 10, *, fingerprint: str | None = None):
        """Raw faiss answer: (similarities, positions), both (nq, k), -1 where there is no k-th result."""
        if isinstance(queries, FeatureSet):
            fingerprint = fingerprint or queries.fingerprint
            queries = queries.features
        self.check_fingerprint(fingerprint)
        check_k(k)
        Q = unit_rows(queries, dim=self.dim, name="queries")
        return self.faiss_index.search(Q, int(k))

    def search(self, queries, k: int = 10, *, fingerprint: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, ``(ids, scores)`` of its k most similar rows, best first; missing results are dropped."""
        S, I = self.search_positions(queries, k, fingerprint=fingerprint)
        found = I >= 0  # faiss puts missing results (-1) last
        ids = self.ids[np.where(found, I, 0)] if len(self) else np.zeros(I.shape, self.ids.dtype)
        return [(ids[q, :n], S[q, :n]) for q, n in enumerate(found.sum(axis=1))]

    def positions(self, ids) -> np.ndarray:
        """Row positions of ids; unknown ids raise a KeyError naming them."""
        if self._positions is None:
            self._positions = {key: pos for pos, key in enumerate(self.ids.tolist())}
        ids = np.atleast_1d(np.asarray(ids))
        try:
            keys = ids.astype(self.ids.dtype if self.ids.dtype.kind == "i" else str).tolist()
        except ValueError:
            raise KeyError(f"ids not in the index: {ids[:5].tolist()} (its ids are integers)") from None
        unknown = [key for key in keys if key not in self._positions]
        if unknown:
            raise KeyError(f"ids not in the index: {unknown[:5]}")
        return np.array([self._positions[key] for key in keys], dtype=np.int64)

    def vectors(self, ids) -> np.ndarray:
        """The stored rows of ``ids`` (exact for Flat/HNSW/IVF-Flat, decoded for SQ/PQ)."""
        return self.faiss_index.reconstruct_batch(self.positions(ids))

    # --- captions -------------------------------------------------------------------------------------------
    def set_captions(self, ids, texts: list[str], features) -> "Index":
        """Attach captions to indexed images, any number per image (``ids[i]`` owns ``texts[i]``), with their (C, D)
        embeddings from the backbone's text tower (:func:`~zeroshot.retrieval.search.add_captions` makes them);
        replaces the captions held. An unknown id raises a KeyError naming it."""
        if not len(ids) == len(texts) == len(features):
            raise ValueError(f"{len(ids)} ids, {len(texts)} captions and {len(features)} caption embeddings: "
                             "give one of each per caption")
        rows = self.positions(ids)
        order = np.argsort(rows, kind="stable")  # grouped by image, each image's captions in the order given
        self.caption_rows = rows[order]
        self.caption_features = unit_rows(features, dim=self.dim, name="caption embeddings")[order]
        self.captions = [str(texts[i]) for i in order]
        return self

    def captions_of(self, row: int) -> list[str]:
        """The captions of the image at ``row`` (a position, see :meth:`positions`), in the order given."""
        start, stop = np.searchsorted(self.caption_rows, [row, row + 1])
        return self.captions[start:stop]

    # --- persistence ----------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the faiss index, ``ids.npy``, ``paths.npy`` and the captions (if any) under names new to the folder,
        then the ``index.json`` manifest that names them: replacing the manifest is one atomic rename, so a reader or
        a crash sees the previous index or this one whole, never a mix. The previous index's files go last.

        Image paths are stored relative to ``base``, the folder common to the indexed roots, and ``base`` both
        relative to the index folder and absolute (see :func:`_find_base`)."""
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        previous = (json.loads((folder / MANIFEST).read_text()).get("files", {}) if (folder / MANIFEST).is_file()
                    else {})
        tag = uuid.uuid4().hex[:8]
        files = {"index": f"index-{tag}.faiss", "ids": f"ids-{tag}.npy",
                 "paths": f"paths-{tag}.npy" if self.paths is not None else None,
                 "captions": f"captions-{tag}.json" if self.captions else None,
                 "caption_features": f"caption-features-{tag}.npy" if self.captions else None}
        base = os.path.commonpath(self.roots) if self.roots else ""
        faiss.write_index(self.faiss_index, str(folder / files["index"]))
        atomic_save_npy(folder / files["ids"], self.ids)
        if self.paths is not None:
            atomic_save_npy(folder / files["paths"], _relative_paths(self.paths, base))
        if self.captions:
            atomic_write_json(folder / files["captions"], {"ids": self.ids[self.caption_rows].tolist(),
                                                           "texts": self.captions})
            atomic_save_npy(folder / files["caption_features"], self.caption_features)
        atomic_write_json(folder / MANIFEST, {
            "version": FORMAT_VERSION, "factory": self.factory, "metric": "inner_product", "normalised": True,
            "dim": self.dim, "n": len(self), "fingerprint": self.fingerprint, "backbone": self.backbone,
            "params": self.params, "tuned_recall": self.tuned_recall, "faiss_version": faiss.__version__,
            "ids_sha256": _digest(self.ids), "files": files,
            "base": {"relative": os.path.relpath(base, folder.absolute()), "absolute": base} if base else None,
            "roots": [os.path.relpath(root, base) for root in self.roots],
        })
        for name in set(previous.values()) - set(files.values()) - {None}:
            (folder / name).unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, *, fingerprint: str | None = None, mmap: bool = False) -> "Index":
        """Read a saved index; ``fingerprint`` refuses one built from another backbone; ``mmap`` maps the index
        file read-only instead of reading it into memory."""
        import faiss

        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no index in {folder} ({MANIFEST} missing); build one with `zeroshot index build`")
        manifest = json.loads(path.read_text())
        if manifest.get("version") not in (1, FORMAT_VERSION):
            raise ValueError(f"{folder}: index format {manifest.get('version')} is not {FORMAT_VERSION}; rebuild it")
        index = cls.__new__(cls)
        index.dim, index.factory = manifest["dim"], manifest["factory"]
        index.fingerprint, index.backbone = manifest["fingerprint"], manifest.get("backbone")
        index.check_fingerprint(fingerprint)
        files = manifest["files"]
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index.faiss_index = faiss.read_index(str(folder / files["index"]), flags)
        index.ids = load_npy(folder / files["ids"], mmap=False)
        if len(index.ids) != index.faiss_index.ntotal or _digest(index.ids) != manifest["ids_sha256"]:
            raise ValueError(f"{folder}: ids.npy does not match the index (changed or truncated); rebuild the index")
        base = _find_base(folder, manifest.get("base"))
        stored = load_npy(folder / files["paths"], mmap=False).tolist() if files.get("paths") else None
        index.paths = None if stored is None else np.array([os.path.join(base, p) if p else "" for p in stored], str)
        index.roots = [os.path.normpath(os.path.join(base, root)) for root in manifest["roots"]]
        index.params, index.tuned_recall, index._positions = {}, manifest.get("tuned_recall"), None
        index._sorted_ids = None
        index.set_params(**manifest["params"])
        captions = json.loads((folder / files["captions"]).read_text()) if files.get("captions") else None
        if captions is None:
            captions, features = {"ids": [], "texts": []}, np.zeros((0, index.dim), np.float32)
        else:
            features = load_npy(folder / files["caption_features"], mmap=False)
        return index.set_captions(captions["ids"], captions["texts"], features)
