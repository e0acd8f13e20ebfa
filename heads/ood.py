"""OOD detectors on class text embeddings alone: MCM, max-logit and energy (spec: methods/ood_scores.md 2).

Every OOD detector shares one contract, scikit-learn's outlier-detector API: ``fit(X_id, y=None, *,
class_embeddings=...)`` returns self; ``score_samples(X) -> (N,)`` is **higher = more in-distribution**;
``offset_`` is the threshold, ``decision_function(X) = score_samples(X) - offset_`` and ``predict(X)`` is +1
in-distribution / -1 OOD. Cosines are computed in float32 (one pass over X, see :func:`projected`), the small (N, C)
result in float64, scores returned as float32; input rows are checked (shape, NaN) and renormalised with a warning
when they are not unit length (norms checked on up to 4,096 evenly spaced rows: features are unit rows from
extraction on).
"""
from __future__ import annotations

import numpy as np
from sklearn.base import OutlierMixin

from zeroshot.features import unit_rows
from zeroshot.ood_metrics import threshold_at_tpr

from ._base import Head, projected, renamed_keywords, set_class_embeddings

ID_TPR = 0.95  # the threshold a fit keeps accepts this fraction of the ID samples (the FPR95 convention)


def log_sum_exp(z: np.ndarray) -> np.ndarray:
    """Row-wise ``log sum_c exp(z_c)`` of finite (N, C) values, max-shifted: SciPy's formula without its checks,
    which cost more than the (N, C) arithmetic itself."""
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


class OODDetector(OutlierMixin, Head):
    """Base of every OOD detector: ``score_samples(X) -> (N,)`` float32, higher = more in-distribution.

    ``offset_`` is the score below which a sample is called OOD: fitting on ID features keeps the one that accepts
    95 % of them (:data:`ID_TPR`); :meth:`calibrate` sets it from held-out ID features at any TPR, and it may be set
    by hand. Detectors fitted on class text alone have none (None) until then."""

    def _check_X(self, X) -> np.ndarray:
        self._check_fitted()
        return unit_rows(X, dim=self.n_features_in_, sampled=True)

    def score_samples(self, X) -> np.ndarray:
        raise NotImplementedError

    def calibrate(self, X_id, tpr: float = ID_TPR) -> "OODDetector":
        """Keep as ``offset_`` the largest threshold that accepts at least ``tpr`` of the ID features ``X_id``
        (held-out ones: a detector's own training rows score too well)."""
        if not 0 < tpr <= 1:
            raise ValueError(f"tpr must be in (0, 1], got {tpr}")
        self.offset_ = threshold_at_tpr(self.score_samples(X_id), tpr)
        return self

    def decision_function(self, X) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for the samples :meth:`predict` calls OOD."""
        scores = self.score_samples(X)  # first: it raises NotFittedError on an unfitted detector
        if self.offset_ is None:
            raise ValueError(f"{type(self).__name__} has no threshold yet (offset_ is None): call "
                             "calibrate(X_id) with held-out ID features, or set offset_")
        return scores - np.float32(self.offset_)

    def predict(self, X) -> np.ndarray:
        """+1 in-distribution, -1 OOD (scikit-learn's outlier convention): the sign of :meth:`decision_function`."""
        return np.where(self.decision_function(X) >= 0, 1, -1)


class TextOODDetector(OODDetector):
    """A detector fitted from (C, D) class text embeddings; ID images ``X`` are optional and only set ``offset_``."""

    _fitted_arrays = ("class_embeddings_",)
    _fitted_meta = ("class_names_", "offset_")

    @renamed_keywords
    def fit(self, X=None, y=None, *, class_embeddings=None,
            class_names: list[str] | None = None) -> "TextOODDetector":
        """``class_embeddings``: (C, D) embeddings of the ID classes, e.g. from :func:`zeroshot.class_embeddings`;
        ``X``: ID image features to keep the threshold from (``offset_``), optional; y is unused."""
        set_class_embeddings(self, class_embeddings, class_names)
        self.offset_ = None
        return self if X is None else self.calibrate(X)

    def _cosines(self, X, W: np.ndarray | None = None) -> np.ndarray:
        """(N, C) float32 cosine similarities to the class embeddings (or to the rows of ``W``)."""
        self._check_fitted()
        return projected(X, self.class_embeddings_ if W is None else W, dim=self.n_features_in_, unit=True)


def _check_positive(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


class MCM(TextOODDetector):
    """Maximum concept matching (Ming et al. 2022): the largest softmax probability of ``cos / temperature``.

    Returns ``log`` of that probability, ``max_c(cos_c/T) - logsumexp(cos/T)``: the same ranking, but float32 keeps
    its resolution where every probability is close to 1/C. T = 1 on raw cosines (not scaled by the logit scale),
    as in the paper; MSP on CLIP logits is T = 1/logit_scale. MCM needs at least two classes: with one class the
    softmax is 1 for every input, so :meth:`fit` refuses it rather than return a constant score.
    """

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    @renamed_keywords
    def fit(self, X=None, y=None, *, class_embeddings=None, class_names: list[str] | None = None) -> "MCM":
        _check_positive(self.temperature, "temperature")
        if np.ndim(class_embeddings) == 2 and len(class_embeddings) < 2:
            raise ValueError("MCM needs at least two ID classes: with one class its softmax is 1 for every input, "
                             "a constant score that separates nothing. Use MaxLogit or Energy for a single class.")
        return super().fit(X, y, class_embeddings=class_embeddings, class_names=class_names)

    def score_samples(self, X) -> np.ndarray:
        z = self._cosines(X).astype(np.float64) / self.temperature
        return (z.max(axis=1) - log_sum_exp(z)).astype(np.float32)


class MaxLogit(TextOODDetector):
    """Max-logit (Hendrycks et al. 2022): the largest cosine to a class embedding. Invariant to the logit scale."""

    def score_samples(self, X) -> np.ndarray:
        return self._cosines(X).max(axis=1)


class Energy(TextOODDetector):
    """Negative free energy (Liu et al. 2020): ``T * logsumexp(s * cos / T)``.

    Follows CLIPN's convention of scaled logits (s = the backbone's logit scale); ``logit_scale=None`` uses raw
    cosines (s = 1), as MCM's repository does, which degenerates towards the mean cosine.
    """

    def __init__(self, temperature: float = 1.0, logit_scale: float | None = 100.0):
        self.temperature = temperature
        self.logit_scale = logit_scale

    @renamed_keywords
    def fit(self, X=None, y=None, *, class_embeddings=None, class_names: list[str] | None = None) -> "Energy":
        _check_positive(self.temperature, "temperature")
        if self.logit_scale is not None:
            _check_positive(self.logit_scale, "logit_scale")
        return super().fit(X, y, class_embeddings=class_embeddings, class_names=class_names)

    def score_samples(self, X) -> np.ndarray:
        z = self._cosines(X).astype(np.float64) * ((self.logit_scale or 1.0) / self.temperature)  # s * cos / T
        return (self.temperature * log_sum_exp(z)).astype(np.float32)
