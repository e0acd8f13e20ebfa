"""Multi-label zero-shot classification: each class scored on its own by a per-class sigmoid of its zero-shot logit
(no softmax across classes), calibrated on unlabelled images or, given 0/1 targets, by Platt scaling."""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.utils.validation import check_is_fitted

from zeroshot.features import check_features

from ._base import Head, projected, set_class_embeddings


def check_targets(targets, shape: tuple[int, ...], name: str = "Y") -> np.ndarray:
    """(N, C) bool from 0/1 (or bool) ``targets`` of the given shape; anything else is a ValueError saying what."""
    targets = np.asarray(targets)
    if targets.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (images x classes), got {targets.shape}")
    if targets.dtype != bool and not np.isin(targets, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1 (a class absent or present in an image)")
    return targets.astype(bool)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow, in float64."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))


def platt_scaling(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class (a_c, b_c) minimising the log loss of sigmoid(a_c z + b_c) (Platt 1999), all classes in one L-BFGS
    run (their losses are independent, so the summed loss has the per-class optima). Targets are Platt's smoothed
    (P + 1) / (P + 2) and 1 / (M + 2) for P positives and M negatives (as in Lin, Lin & Weng 2007), so that separable
    classes keep a finite slope; logits are standardised per class for the fit and mapped back."""
    mean, std = logits.mean(axis=0), np.maximum(logits.std(axis=0), 1e-12)
    u = (logits - mean) / std
    positives = targets.sum(axis=0)
    t = np.where(targets, (positives + 1) / (positives + 2), 1 / (len(targets) - positives + 2))
    n_classes = logits.shape[1]

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = params[:n_classes], params[n_classes:]
        f = u * a + b
        residual = sigmoid(f) - t
        return (float((np.logaddexp(0.0, f) - t * f).sum() / len(u)),
                np.concatenate([(residual * u).sum(axis=0), residual.sum(axis=0)]) / len(u))

    start = np.concatenate([np.ones(n_classes), np.zeros(n_classes)])
    a, b = np.split(minimize(loss, start, jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 1e-15}).x, 2)
    return a / std, b - a * mean / std


def f1_thresholds(proba: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(C,) per class the probability cut maximising F1 = 2 TP / (predicted + P) on these images: midway between the
    lowest probability predicted present and the next lower one (0 when all are present, inf for a class without
    positives: never predicted). Cuts fall only between distinct probabilities; ties keep the highest cut."""
    order = np.argsort(-proba, axis=0, kind="stable")
    p = np.take_along_axis(proba, order, axis=0)
    hits = np.take_along_axis(targets, order, axis=0)
    f1 = 2 * np.cumsum(hits, axis=0) / (np.arange(1, len(p) + 1)[:, None] + hits.sum(axis=0))
    cut_allowed = np.vstack([p[:-1] > p[1:], np.ones((1, p.shape[1]), bool)])
    best = np.argmax(np.where(cut_allowed, f1, -1.0), axis=0)
    columns = np.arange(p.shape[1])
    below = np.vstack([p[1:], np.zeros((1, p.shape[1]))])[best, columns]
    threshold = np.where(best == len(p) - 1, 0.0, (p[best, columns] + below) / 2)
    return np.where(hits.any(axis=0), threshold, np.inf)


class MultiLabelZeroShot(Head):
    """Independent per-class probabilities ``sigmoid(slope_c * z_c + intercept_c)`` of the zero-shot logits
    ``z = logit_scale * X @ W.T`` (W: the (C, D) unit class embeddings); ``predict`` marks a class present where its
    probability reaches ``threshold_c``.

    ``fit(X)``, unlabelled images (a documented heuristic): per class, the sigmoid is centred on the (1 - ``prior``)
    quantile of the class's logits over X, with slope 1 / (their standard deviation), threshold 0.5: each class is
    predicted present on about ``prior`` of the fit images, ranked by how far its logit stands out.
    ``fit(X, Y)``, images with (N, C) 0/1 targets: per-class Platt scaling (:func:`platt_scaling`) and the threshold
    maximising each class's F1 on those images (:func:`f1_thresholds`). Both keep each class's ranking of images,
    and so its average precision, unless Platt scaling finds a negative slope (logits that rank a class backwards).
    """

    _fitted_arrays = ("class_embeddings_", "slope_", "intercept_", "threshold_")
    _fitted_meta = ("class_names_",)

    def __init__(self, logit_scale: float = 100.0, prior: float = 0.1):
        self.logit_scale = logit_scale
        self.prior = prior

    def fit(self, X=None, Y=None, *, class_embeddings=None, class_names: list[str] | None = None
            ) -> MultiLabelZeroShot:
        """``class_embeddings``: (C, D), e.g. from :func:`zeroshot.class_embeddings`; X: (N, D) image features,
        unlabelled or with Y, their (N, C) 0/1 targets (column c: class c present)."""
        if not 0 < self.prior < 1:
            raise ValueError(f"prior must be a share of images in (0, 1), got {self.prior!r}")
        if X is None:
            raise ValueError("fit needs image features X: unlabelled images to calibrate each class on, or labelled "
                             "ones with their (N, C) 0/1 targets Y")
        set_class_embeddings(self, class_embeddings, class_names)
        X = check_features(X, dim=self.n_features_in_)
        if len(X) < 2:
            raise ValueError(f"calibrating compares each class's scores across images: give at least 2 images (got "
                             f"{len(X)})")
        logits = self.decision_function(X).astype(np.float64)
        if Y is None:
            self._fit_unlabelled(logits)
        else:
            targets = check_targets(Y, logits.shape)
            self.slope_, self.intercept_ = platt_scaling(logits, targets)
            self.threshold_ = f1_thresholds(sigmoid(logits * self.slope_ + self.intercept_), targets)
        return self

    def _fit_unlabelled(self, logits: np.ndarray) -> None:
        """Slope 1 / std and centre at the (1 - prior) quantile per class (see the class docstring)."""
        self.slope_ = 1 / np.maximum(logits.std(axis=0), 1e-12)
        self.intercept_ = -np.quantile(logits, 1 - self.prior, axis=0) * self.slope_
        self.threshold_ = np.full(logits.shape[1], 0.5)

    def decision_function(self, X) -> np.ndarray:
        """(N, C) logits ``logit_scale`` * cosine to each class embedding."""
        check_is_fitted(self, "class_embeddings_")
        return self.logit_scale * projected(X, self.class_embeddings_, dim=self.n_features_in_, unit=False)

    def _proba(self, X) -> np.ndarray:
        check_is_fitted(self, "slope_")
        return sigmoid(self.decision_function(X) * self.slope_ + self.intercept_)

    def predict_proba(self, X) -> np.ndarray:
        """(N, C) float32: each class's probability of being present, independent of the other classes."""
        return self._proba(X).astype(np.float32)

    def predict(self, X) -> np.ndarray:
        """(N, C) 0/1: class c present where its probability reaches ``threshold_[c]``."""
        return (self._proba(X) >= self.threshold_).astype(np.int64)
