"""Index: a faiss index over unit feature rows, searched by inner product (= cosine) and answering with ids.

Follows ``../shared/methods/retrieval.md`` sections 1-4 and 6: every index is made with ``index_factory`` and
``METRIC_INNER_PRODUCT``; rows and queries are normalised; faiss positions are mapped to the caller's ids (never
``-1``); a folder holds ``index.faiss`` (``faiss.write_index``), ``ids.npy``/``paths.npy`` (no pickle) and an
``index.json`` manifest, and an index refuses queries from another backbone fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..backbone import check_fingerprint
from ..features import FeatureSet, atomic_save_npy, atomic_write_json, load_npy, unit_rows

MANIFEST = "index.json"
INDEX_FILE = "index.faiss"
FORMAT_VERSION = 1
FLAT_LIMIT = 200_000  # auto: exact search up to this many rows (no training, fast enough on a CPU)
TRAIN_PER_LIST = 50  # IVF training rows per list: above faiss's 39 warning, below autofaiss's 100 (CPU minutes)
MIN_TRAIN_PER_LIST = 39  # faiss warns below this many training rows per IVF list
TUNE_QUERIES = 500  # rows held out of the index while they tune nprobe / efSearch as queries
TUNE_MARGIN = 0.01  # tune to target + margin so that other queries, a different sample, still meet the target
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
    """nlist = 2^round(log2(4 sqrt(N))) (autofaiss), at least 1."""
    return max(1, 2 ** round(math.log2(4 * math.sqrt(max(n, 1)))))


def index_bytes(factory: str, n: int, d: int) -> int | None:
    """Estimated memory of ``n`` rows of width ``d`` in an index_factory string (retrieval.md section 2 table);
    None for strings the table does not cover."""
    f = factory.replace(" ", "")
    if f == "Flat":
        return 4 * d * n
    if m := re.fullmatch(r"HNSW(\d+)(?:,Flat)?", f):
        return (4 * d + 8 * int(m.group(1))) * n
    m = re.fullmatch(r"(?:OPQ(\d+)(?:_\d+)?,)?IVF(\d+),(Flat|SQ8|PQ(\d+)(?:x8)?)", f)
    if not m:
        return None
    per_row = {"Flat": 4 * d, "SQ8": d}.get(m.group(3)) or int(m.group(4) or 0)
    rotation = 4 * d * d if m.group(1) else 0
    return (per_row + 8) * n + 4 * d * int(m.group(2)) + rotation


def choose_factory(n: int, d: int, max_memory: int | str = "2G") -> str:
    """The ``auto`` rule: exact search while it is cheap, then the least compressed IVF index that fits
    ``max_memory`` (retrieval.md section 3, with one deliberate deviation from autofaiss, below).

    1. ``Flat`` (exact) while N <= 200,000 and 4*D*N bytes fit.
    2. ``IVF{nlist},Flat`` (4D + 8 bytes per row), then ``IVF{nlist},SQ8`` (D + 8), the first that fits, with
       nlist = 2^round(log2(4 sqrt N)) (autofaiss's formula).
    3. ``OPQ{m},IVF{nlist},PQ{m}x8`` with the largest m in 256..4 that divides D and fits (m + 8 bytes per row).
    The search knob (nprobe) is then tuned to a target recall by :meth:`Index.build`.

    Deviations from autofaiss: it prefers ``HNSW{M}`` whenever M = (budget/N - 4D)/8 >= 8. Measured here
    (``scripts/bench_index.py``: 1,000,000 clustered rows, D = 384, 2 shared cores) HNSW32 took 3.5x longer to
    build than IVF4096,Flat (2,057 s vs 584 s), needs 8M more bytes per row, and needed efSearch 6,533 for
    recall@10 0.95 (7 queries/s, slower than exact search: greedy graph search does not cross between
    well-separated clusters), where IVF reached 1.0 at nprobe 32 (344 queries/s). So ``auto`` never picks HNSW;
    ask for ``HNSW32`` by name where it suits the data. The OPQ rotation keeps
    D (no ``_{d'}`` reduction), the coarse quantizer stays flat, and nlist follows the same formula at every N
    (autofaiss jumps to 16,384+ above 1M rows, whose training takes hours on a 2-core CPU).
    """
    if n < 1 or d < 1:
        raise ValueError(f"cannot index {n} rows of width {d}")
    budget = parse_bytes(max_memory)
    if n <= FLAT_LIMIT and index_bytes("Flat", n, d) <= budget:
        return "Flat"
    nlist = ivf_lists(n)
    candidates = [f"IVF{nlist},Flat", f"IVF{nlist},SQ8"]
    candidates += [f"OPQ{pq},IVF{nlist},PQ{pq}x8" for pq in PQ_SIZES if pq < d and d % pq == 0]
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


def exact_search(X, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force (similarities, positions) of the k most similar rows of X, best first (the reference)."""
    import faiss

    X, Q = unit_rows(X), unit_rows(queries, dim=np.shape(X)[1], name="queries")
    return faiss.knn(Q, X, min(k, len(X)), metric=faiss.METRIC_INNER_PRODUCT)


def knn_recall(X, queries, found: np.ndarray, kth_exact: np.ndarray) -> float:
    """k-recall@k of positions ``found`` (nq, k; -1 = missing) against exact search (retrieval.md section 4).

    A hit counts when its exact similarity reaches the k-th exact similarity (less 1e-6), so tied rows do not
    make exact search score below 1. ``kth_exact`` is ``exact_search(X, queries, k)[0][:, k - 1]``.
    """
    found = np.asarray(found)
    Q = unit_rows(queries, dim=np.shape(X)[1], name="queries")
    rows = np.asarray(X[np.maximum(found, 0).ravel()], dtype=np.float32).reshape(*found.shape, -1)
    sims = np.einsum("qd,qkd->qk", Q, rows)
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


def _ids_array(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D sequence, got shape {ids.shape}")
    return ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str)


def _digest(ids: np.ndarray) -> str:
    return hashlib.sha256(ids.dtype.str.encode() + np.ascontiguousarray(ids).tobytes()).hexdigest()


class Index:
    """A faiss index over unit rows with ids (str or int), optional image paths, and a backbone fingerprint.

    ``Index.build(features)`` is the usual way in (choose, train, add, tune); ``train``/``add``/``set_params``
    give the steps one by one. ``search`` returns, per query, ``(ids, scores)`` sorted by descending cosine.
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
        self.roots: list[str] = []
        self.params: dict[str, float] = {}
        self.tuned_recall: float | None = None
        self._positions: dict | None = None

    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    def __repr__(self) -> str:
        return f"Index({self.factory!r}, n={len(self)}, dim={self.dim}, params={self.params}, fingerprint={self.fingerprint})"

    # --- building -------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, features, ids=None, *, factory: str = "auto", fingerprint: str | None = None, paths=None,
              max_memory: int | str = "2G", target_recall: float = 0.95, params: dict | None = None, k: int = 10,
              seed: int = 0) -> "Index":
        """Index a FeatureSet (its ids, fingerprint and image paths come along) or an (N, D) array with ``ids``.

        ``factory``: ``auto`` (:func:`choose_factory`) or any index_factory string. Unless ``params`` is given,
        the search knob of an approximate index is tuned until k-recall@k reaches ``target_recall`` (:meth:`tune`)
        on up to 500 seeded rows that are added last, after tuning, so that they are held-out queries meanwhile.
        """
        backbone = None
        if isinstance(features, FeatureSet):
            ids = features.ids if ids is None else ids
            fingerprint = fingerprint or features.fingerprint
            paths = image_paths(features) if paths is None else paths
            backbone = features.meta.get("backbone")
            features = features.features
        X = unit_rows(features)
        if factory == "auto":
            factory = choose_factory(*X.shape, max_memory)
        check_factory(factory, *X.shape)
        index = cls(X.shape[1], factory, fingerprint=fingerprint, backbone=backbone)
        index.train(X, seed=seed)
        ids = _ids_array(np.arange(len(X)) if ids is None else ids)
        paths = None if paths is None else np.asarray(paths)
        if params or search_knob(factory) is None:
            index.add(X, ids, paths=paths)
            return index.set_params(**(params or {}))
        held = np.sort(np.random.default_rng(seed).choice(len(X), min(TUNE_QUERIES, len(X) // 10), replace=False))
        rest = np.setdiff1d(np.arange(len(X)), held)
        for rows in (rest, held):  # the tuning queries join the index last: held out while they tune it
            index.add(X[rows], ids[rows], paths=None if paths is None else paths[rows])
            if rows is rest:
                index.tune(X[rest], X[held], target_recall=target_recall, k=k)
        return index

    def train(self, X, *, seed: int = 0) -> "Index":
        """Train IVF/PQ parts on a seeded sample of ``X`` (50 rows per list); a no-op for Flat and HNSW."""
        import faiss

        if self.faiss_index.is_trained:
            return self
        X = unit_rows(X, dim=self.dim)
        ivf = faiss.try_extract_index_ivf(self.faiss_index)
        wanted = TRAIN_PER_LIST * (ivf.nlist if ivf is not None else 256)
        if len(X) > wanted:
            X = X[np.sort(np.random.default_rng(seed).choice(len(X), wanted, replace=False))]
        self.faiss_index.train(X)
        return self

    def add(self, X, ids, *, paths=None) -> "Index":
        """Append rows with their (unique) ids and, optionally, the image file each came from."""
        import faiss

        X = unit_rows(X, dim=self.dim)
        ids = _ids_array(ids)
        if len(ids) != len(X):
            raise ValueError(f"{len(X)} rows but {len(ids)} ids")
        if len(self.ids) and ids.dtype.kind != self.ids.dtype.kind:
            raise ValueError(f"ids must all be {'integers' if self.ids.dtype.kind == 'i' else 'strings'}, like the "
                             "ids already in the index")
        merged = np.concatenate([self.ids, ids]) if len(self.ids) else ids
        if len(np.unique(merged)) != len(merged):
            raise ValueError("ids must be unique; some are repeated or already in the index")
        if not self.faiss_index.is_trained:
            raise ValueError(f"{self.factory} must be trained before adding rows: call train(X) or use Index.build")
        if paths is not None:
            paths = np.asarray([str(Path(p).absolute()) for p in paths])
            if len(paths) != len(X):
                raise ValueError(f"{len(X)} rows but {len(paths)} paths")
            root = str(Path(os.path.commonpath(list(paths))).resolve()) if len(paths) else None
            if root and root not in self.roots:
                self.roots.append(root)
        if paths is not None or self.paths is not None:
            old = self.paths if self.paths is not None else np.full(len(self), "")
            self.paths = np.concatenate([old, paths if paths is not None else np.full(len(X), "")])
        self.faiss_index.add(X)
        ivf = faiss.try_extract_index_ivf(self.faiss_index)
        if ivf is not None:
            ivf.make_direct_map()  # lets vectors() reconstruct rows for image-by-id queries
        self.ids, self._positions = merged, None
        return self

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
        order; with fewer than 10 queries the knob is set to exhaustive search. Returns the measured recall and
        warns when even the largest setting falls short. (Database rows are not used as queries: HNSW finds
        their neighbours through the row's own edges, which overstates its recall several-fold.)"""
        knob = search_knob(self.factory)
        if knob is None:
            return 1.0
        if len(X) != len(self):
            raise ValueError(f"tune() needs the {len(self)} rows the index holds, got {len(X)}")
        X, Q, top = unit_rows(X, dim=self.dim), unit_rows(queries, dim=self.dim, name="queries"), self._knob_limit(knob)
        k = min(check_k(k), len(X))
        if len(Q) < 10:
            self.set_params(**{knob: top})
            return 1.0
        kth = exact_search(X, Q, k)[0][:, k - 1]

        def recall(value: int) -> float:
            self.set_params(**{knob: value})
            return knn_recall(X, Q, self.faiss_index.search(Q, k)[1], kth)

        goal = min(target_recall + TUNE_MARGIN, 1.0)
        low, high = 0, min(16, top)
        measured = {high: recall(high)}
        while measured[high] < goal and high < top:
            low, high = high, min(high * 2, top)
            measured[high] = recall(high)
        while high - low > 1 and measured[high] >= goal:  # bisect between the last miss and the first hit
            mid = (low + high) // 2
            measured[mid] = recall(mid)
            low, high = (low, mid) if measured[mid] >= goal else (mid, high)
        self.set_params(**{knob: high})
        self.tuned_recall = measured[high]
        if self.tuned_recall < target_recall:
            warnings.warn(f"{self.factory}: recall@{k} {self.tuned_recall:.3f} at {knob}={high} is below the target "
                          f"{target_recall}; choose a larger index (more memory) or lower the target", stacklevel=2)
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

    # --- persistence ----------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``index.faiss``, ``ids.npy``, ``paths.npy`` (if any) and the ``index.json`` manifest."""
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (INDEX_FILE + ".tmp")
        faiss.write_index(self.faiss_index, str(tmp))
        os.replace(tmp, folder / INDEX_FILE)
        atomic_save_npy(folder / "ids.npy", self.ids)
        if self.paths is not None:
            atomic_save_npy(folder / "paths.npy", self.paths)
        atomic_write_json(folder / MANIFEST, {
            "version": FORMAT_VERSION, "factory": self.factory, "metric": "inner_product", "normalised": True,
            "dim": self.dim, "n": len(self), "fingerprint": self.fingerprint, "backbone": self.backbone,
            "params": self.params, "tuned_recall": self.tuned_recall, "faiss_version": faiss.__version__,
            "ids_sha256": _digest(self.ids), "roots": self.roots,
            "files": {"index": INDEX_FILE, "ids": "ids.npy", "paths": "paths.npy" if self.paths is not None else None},
        })
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
        if manifest.get("version") != FORMAT_VERSION:
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
        index.paths = load_npy(folder / files["paths"], mmap=False) if files.get("paths") else None
        index.roots = list(manifest["roots"])
        index.params, index.tuned_recall, index._positions = {}, manifest.get("tuned_recall"), None
        index.set_params(**manifest["params"])
        return index
