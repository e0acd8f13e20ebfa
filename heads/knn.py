"""kNN OOD score (Sun et al. 2022): minus the distance to the k-th nearest ID training feature.
Spec: methods/ood_scores.md 3."""
from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from zeroshot.features import unit_rows
from zeroshot.ood_metrics import threshold_at_tpr

from ._base import renamed_keywords
from .ood import ID_TPR, OODDetector

OFFSET_ROWS = 4096  # training rows whose leave-one-out scores set offset_


class KNN(OODDetector):
    """``score(x) = -||x - nn_k(x)||`` over a faiss index of unit ID features.

    On unit vectors ``||x - y||^2 = 2 - 2 <x, y>``, so an inner-product index gives the distance from the k-th
    largest inner product (the official code ranks by squared L2 distance: the same order).
    ``k=None`` picks ``clip(round(N / 1000), 1, 1000)`` (the paper's 50 for CIFAR-10, 1000 for ImageNet).
    ``index`` is a faiss ``index_factory`` string: ``"Flat"`` (exact, default) or an approximate one such as
    ``"IVF64,Flat"`` (searched with ``nprobe`` lists) for large banks. ``fraction`` < 1 indexes a seeded random
    subset of the ID features. The fitted index is saved as faiss's own byte serialisation (``index_bytes_``, made
    when first asked for: a fit does not pay for it).
    """

    _fitted_arrays = ("index_bytes_",)
    _fitted_meta = ("k_", "offset_")

    def __init__(self, k: int | None = None, index: str = "Flat", nprobe: int = 8, fraction: float = 1.0,
                 random_state: int = 0):
        self.k = k
        self.index = index
        self.nprobe = nprobe
        self.fraction = fraction
        self.random_state = random_state

    @renamed_keywords
    def fit(self, X, y=None, *, class_embeddings=None) -> "KNN":
        """``X``: (N, D) ID training features; ``offset_`` accepts 95 % of their leave-one-out scores (each row
        scored without itself, as a new sample would be). ``y`` and ``class_embeddings`` are unused (one contract
        for detectors)."""
        import faiss

        X = unit_rows(X)
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.fraction < 1:
            keep = np.random.default_rng(self.random_state).permutation(len(X))[: max(1, round(self.fraction * len(X)))]
            X = X[np.sort(keep)]
        k = self.k if self.k is not None else int(np.clip(round(len(X) / 1000), 1, 1000))
        if not 1 <= k <= len(X):
            raise ValueError(f"k must be between 1 and the {len(X)} indexed ID samples, got {k}")
        index = faiss.index_factory(X.shape[1], self.index, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(X)
        index.add(X)
        self.k_ = k
        self.n_features_in_ = X.shape[1]
        self._index, self._index_bytes = index, None
        self.offset_ = None  # k = N: every indexed row is a neighbour, none is left to score a row without itself
        if k < len(X):
            self.offset_ = threshold_at_tpr(self._kth_distance_score(self._offset_sample(X), k + 1), ID_TPR)
        return self

    def _check_fitted(self) -> None:
        check_is_fitted(self, "k_")  # not index_bytes_: probing it would serialise the index

    @property
    def index_bytes_(self) -> np.ndarray:
        """faiss's byte serialisation of the fitted index (uint8), made on first use (saving, a copy)."""
        if self._index_bytes is None:
            import faiss

            self._index_bytes = faiss.serialize_index(self._index)
        return self._index_bytes

    @index_bytes_.setter
    def index_bytes_(self, value: np.ndarray) -> None:  # a loaded head: the index is rebuilt from these on first search
        self._index_bytes, self._index = value, None

    def _offset_sample(self, X: np.ndarray) -> np.ndarray:
        """Up to OFFSET_ROWS seeded rows of the indexed features: enough for a 95 % quantile, and the fit stays
        one search of them, not of all N."""
        if len(X) <= OFFSET_ROWS:
            return X
        return X[np.sort(np.random.default_rng(self.random_state).choice(len(X), OFFSET_ROWS, replace=False))]

    def _search_index(self):
        """The fitted faiss index (rebuilt from its bytes after loading), with ``nprobe`` applied to IVF indexes."""
        import faiss

        if self._index is None:
            self._index = faiss.deserialize_index(np.asarray(self._index_bytes, dtype=np.uint8))
        ivf = faiss.try_extract_index_ivf(self._index)
        if ivf is not None:
            ivf.nprobe = self.nprobe
        return self._index

    def score_samples(self, X) -> np.ndarray:
        return self._kth_distance_score(self._check_X(X), self.k_)

    def _kth_distance_score(self, X: np.ndarray, k: int) -> np.ndarray:
        """Minus the distance to the k-th nearest indexed feature (k = k_ + 1 skips an indexed row itself)."""
        inner, _ = self._search_index().search(X, k)
        # an approximate index may find fewer than k neighbours (-FLT_MAX): count them as the farthest point (-1)
        ip_k = np.clip(inner[:, k - 1].astype(np.float64), -1.0, 1.0)
        return (-np.sqrt(np.maximum(0.0, 2.0 - 2.0 * ip_k))).astype(np.float32)
