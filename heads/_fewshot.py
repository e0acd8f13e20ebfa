"""What the few-shot heads share: support-set checks, the validation split carved from the support set, and the
fit template (search hyperparameters on that split, then build the head on every shot)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.utils.validation import column_or_1d

from zeroshot.features import check_features

from ._base import (Head, SoftmaxClassifier, check_class_embeddings, checked_class_names, encode_labels,
                    label_classes, renamed_keywords)


def check_labels(y, n_rows: int, n_classes: int | None = None, *, name: str = "y") -> np.ndarray:
    """1-D integer class indices in [0, n_classes), one per row (columns of logits, rows of class embeddings); an
    unseen label says what to fix. Label values of any type go through :func:`label_classes` instead."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n_rows:
        raise ValueError(f"{name} must be a 1-D array with one label per feature row ({n_rows}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices 0..C-1, got dtype {y.dtype}")
    if n_rows and y.min() < 0:
        raise ValueError(f"{name} has negative labels (-1 marks an unlabelled sample): drop those rows from the "
                         "support set")
    if n_classes is not None and n_rows and y.max() >= n_classes:
        unseen = np.unique(y[y >= n_classes])
        raise ValueError(f"{name} has labels {unseen[:10].tolist()} outside the {n_classes} classes "
                         f"0..{n_classes - 1}: give a class embedding for every label, or drop those samples")
    return y.astype(np.int64, copy=False)


def shot_counts(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Samples per class (``y`` as indices into ``classes``); a class without any is an error (no head can learn a
    class it never saw)."""
    counts = np.bincount(y, minlength=len(classes))
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise ValueError(f"{missing.size} class(es) have no support sample (classes {classes[missing][:10].tolist()}): "
                         "give every class at least one shot, or drop the classes you cannot label")
    return counts


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[y]


def accuracy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Top-1 accuracy over the last two axes of ``(..., N, C)`` logits: one value per leading index."""
    return (logits.argmax(axis=-1) == y).mean(axis=-1)


def in_chunks(X: np.ndarray, n_classes: int, logits_of, rows: int = 4096) -> np.ndarray:
    """``logits_of`` applied to blocks of query rows: bounds the (rows, cache keys) matrices a cache head builds."""
    out = np.empty((len(X), n_classes), np.float32)
    for i in range(0, len(X), rows):
        out[i:i + rows] = logits_of(X[i:i + rows])
    return out


def class_ranks(y: np.ndarray, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Row indices grouped by class, in a seeded random order within each class (``seed=None``: dataset order),
    and each of those rows' rank within its class."""
    order = np.arange(len(y)) if seed is None else np.random.default_rng(seed).permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]
    grouped = y[order]
    return order, np.arange(len(y)) - np.searchsorted(grouped, grouped)


def carve_validation(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of the support rows into (fit rows, validation rows).

    A class with n >= 2 shots gives ``round(fraction * n)`` of them to validation, at least 1 and at most n - 1;
    a class with one shot keeps it for fitting. So one shot per class leaves no validation rows.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    counts = np.bincount(y)
    n_val = np.where(counts >= 2, np.clip(np.rint(fraction * counts), 1, counts - 1), 0).astype(np.int64)
    order, rank = class_ranks(y, seed)
    is_val = rank < n_val[y[order]]
    return np.sort(order[~is_val]), np.sort(order[is_val])


class CannotSearch(Exception):
    """Raised by a head's search when the fit part of the split cannot support it; the defaults are used."""


def grid(value, default_grid) -> np.ndarray:
    """The candidates for one hyperparameter: the user's fixed value, or the default grid when it is None."""
    return np.atleast_1d(np.asarray(default_grid if value is None else value, dtype=np.float64))


def best_on_grid(scores: np.ndarray) -> tuple[tuple[int, ...], float]:
    """Index of the best validation score; ties keep the first (earliest grid point, like a strict ``>``)."""
    flat = int(np.argmax(scores))
    return np.unravel_index(flat, scores.shape), float(scores.flat[flat])


@dataclass
class Support:
    """Labelled support rows (``y``: indices into the label values ``classes``), with optional per-row side arrays
    (e.g. caption features) that split with them."""

    X: np.ndarray
    y: np.ndarray
    classes: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def take(self, rows: np.ndarray) -> "Support":
        return Support(self.X[rows], self.y[rows], self.classes, {k: v[rows] for k, v in self.extra.items()})


class FewShotClassifier(SoftmaxClassifier, Head):
    """Template for heads fitted on labelled shots (+ class text embeddings).

    ``fit`` validates the support set, carves a stratified, seeded validation split from it (or takes the given
    ``X_val, y_val``), lets the head search its free hyperparameters (those left ``None``) on that split with a
    head built on the remaining shots, then builds the head on ALL shots with the chosen values. The split
    (``val_index_``), the values (``chosen_``) and how they were found (``search_``) are kept on the head.
    With one shot per class there is nothing to validate on: the head's defaults are used, and ``search_`` says so.

    Subclasses set ``_hyperparameters`` and ``_defaults`` and implement ``_search``, ``_build`` and ``_logits``.
    """

    _fitted_arrays = ("val_index_",)
    _fitted_meta = ("classes_", "class_names_", "chosen_", "search_")
    _hyperparameters: tuple[str, ...] = ()
    _defaults: dict = {}
    _needs_text = True

    @renamed_keywords
    def fit(self, X, y, *, class_embeddings=None, class_names: list[str] | None = None, X_val=None, y_val=None):
        """X (M, D) support features, y (M,) labels (any labels, see :func:`label_classes`); ``class_embeddings``
        (C, D) class text embeddings; optional validation set (else one is carved from the support set)."""
        return self._fit(X, y, class_embeddings, class_names, X_val, y_val)

    def _fit(self, X, y, class_embeddings, class_names, X_val, y_val, extra: dict | None = None):
        W = self._check_text(class_embeddings)
        X = check_features(X, dim=None if W is None else W.shape[1], name="support features X")
        if len(X) == 0:
            raise ValueError("the support set is empty: give at least one labelled sample per class")
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None: give the "
                             "labels of the support rows")
        y = column_or_1d(y, warn=True)  # a (M, 1) column is read as labels, with scikit-learn's warning
        if len(y) != len(X):
            raise ValueError(f"y must be a 1-D array with one label per feature row ({len(X)}), got shape {y.shape}")
        n_classes = len(W) if W is not None else None if class_names is None else len(class_names)
        classes = label_classes(y, n_classes, class_names)
        y = encode_labels(y, classes)
        counts = shot_counts(y, classes)
        names = checked_class_names(class_names, len(classes), "classes", classes)
        support = Support(X, y, classes, extra or {})
        chosen, search, val_rows = self._choose(support, W, X_val, y_val)
        self._build(support, W, **chosen)  # first: a head that cannot be built is left unfitted
        self.chosen_ = chosen
        self.search_ = search | {"shots_per_class": [int(counts.min()), int(counts.max())]}
        self.val_index_ = val_rows
        self.classes_ = classes
        self.class_names_ = names
        self.n_features_in_ = X.shape[1]
        return self

    def _choose(self, support: Support, W, X_val, y_val) -> tuple[dict, dict, np.ndarray]:
        """(hyperparameter values, how they were found, carved validation rows)."""
        fit_rows, val_rows, val = self._validation(support, X_val, y_val)
        free = [k for k in self._hyperparameters if getattr(self, k) is None]
        start = time.perf_counter()
        found, val_acc = {}, None
        if not free:
            source = "all fixed by the user"
        elif val is None:
            source = "defaults: no validation samples (one shot per class)"
        else:
            try:
                found, val_acc = self._search(support.take(fit_rows), val[0], val[1], W)
                source = "given validation set" if X_val is not None else "validation split carved from the support set"
            except CannotSearch as reason:
                source = f"defaults: {reason}"
        chosen = {k: self._defaults[k] if getattr(self, k) is None else getattr(self, k) for k in self._hyperparameters}
        search = {"source": source, "searched": free if val_acc is not None else [], "val_accuracy": val_acc,
                  "val_fraction": self.val_fraction, "seed": self.random_state, "n_fit": int(len(fit_rows)),
                  "n_val": int(len(val[1])) if val is not None else 0, "seconds": round(time.perf_counter() - start, 4)}
        return chosen | {k: float(v) for k, v in found.items()}, search, val_rows

    def _check_text(self, class_embeddings) -> np.ndarray | None:
        return None if class_embeddings is None and not self._needs_text else check_class_embeddings(class_embeddings)

    def _validation(self, support: Support, X_val, y_val):
        """(fit rows, carved validation rows, (X_val, y_val) or None when there is nothing to validate on)."""
        everything = np.arange(len(support.y))
        if X_val is not None or y_val is not None:
            if X_val is None or y_val is None:
                raise ValueError("give both X_val and y_val, or neither (a split is then carved from the support set)")
            X_val = check_features(X_val, dim=support.X.shape[1], name="X_val")
            y_val = np.asarray(y_val)
            if y_val.shape != (len(X_val),):
                raise ValueError(f"y_val must have one label per row of X_val ({len(X_val)}), got shape {y_val.shape}")
            return everything, np.zeros(0, np.int64), (X_val, encode_labels(y_val, support.classes, name="y_val"))
        fit_rows, val_rows = carve_validation(support.y, self.val_fraction, self.random_state)
        if len(val_rows) == 0:
            return everything, val_rows, None
        return fit_rows, val_rows, (support.X[val_rows], support.y[val_rows])

    def _search(self, fit: Support, X_val: np.ndarray, y_val: np.ndarray, W) -> tuple[dict, float]:
        raise NotImplementedError

    def _build(self, support: Support, W, **chosen) -> None:
        raise NotImplementedError

    def _logits(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decision_function(self, X) -> np.ndarray:
        return self._finite_scores(X, self._logits)

