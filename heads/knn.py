"""kNN OOD score (Sun et al. 2022): minus the distance to the k-th nearest ID training feature.
Spec: methods/ood_scores.md 3."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.utils.validation import check_is_fitted

from zeroshot.features import unit_rows
from zeroshot.ood_metrics import threshold_at_tpr

from ._base import renamed_keywords
from .ood import ID_TPR, OODDetector

OFFSET_ROWS = 4096  # training rows whose leave-one-out scores set offset_


@dataclass
class _LeaveOneOut:
    """The indexed rows whose leave-one-out scores set ``offset_`` (None once used, or when there are none) and
    that threshold once found: one object, so that finding it on first use changes no attribute of the fitted
    detector (scikit-learn's rule that predicting leaves the estimator as it was)."""

    rows: np.ndarray | None
    value: float | None = None


class KNN(OODDetector):
    """``score(x) = -||x - nn_k(x)||`` over a faiss index of unit ID features.

    On unit vectors ``||x - y||^2 = 2 - 2 <x, y>``, so an inner-product index gives the distance from the k-th
    largest inner product (the official code ranks by squared L2 distance: the same order).
    ``k=None`` picks ``clip(round(N / 1000), 1, 1000)`` (the paper's 50 for CIFAR-10, 1000 for ImageNet).
    ``index`` is a faiss ``index_factory`` string: ``"Flat"`` (exact, default) or an approximate one such as
    ``"IVF64,Flat"`` (searched with ``nprobe`` lists) for large banks. ``fraction`` < 1 indexes a seeded random
    subset of the ID features. The fitted index is saved as faiss's own byte serialisation (``index_bytes_``), and
    the ID threshold ``offset_`` comes from a leave-one-out search of up to 4,096 indexed rows; both are made when
    first asked for (saving, ``predict``), so a fit is the index's add and scoring alone never pays for them.
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
        scored without itself, as a new sample would be; see :attr:`offset_`). ``y`` and ``class_embeddings`` are
        unused (one contract for detectors)."""
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
        # no rows when k = N: every indexed row is a neighbour, none is left to score a row without itself
        self._threshold = _LeaveOneOut(np.array(self._offset_sample(X)) if k < len(X) else None)
        return self

    @property
    def offset_(self) -> float | None:
        """The score that accepts 95 % of the ID features' leave-one-out scores, computed on first use from the
        rows :meth:`fit` kept (None when k is the number of indexed rows)."""
        found = self._threshold
        if found.rows is not None:
            found.value = threshold_at_tpr(self._kth_distance_score(found.rows, self.k_ + 1), ID_TPR)
            found.rows = None
        return found.value

    @offset_.setter
    def offset_(self, value: float | None) -> None:  # a loaded head, or OODDetector.calibrate
        self._threshold = _LeaveOneOut(None, value)

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
