"""OOD detectors on class text embeddings alone: MCM, max-logit and energy (spec: methods/ood_scores.md 2).

Every OOD detector shares one contract: ``fit(X_id, y=None, *, classes=...)`` returns self and
``score_samples(X) -> (N,)`` is **higher = more in-distribution**. Cosines are computed in float32 (one pass over
X, see :func:`projected`), the small (N, C) result in float64, scores returned as float32; input rows are checked
(shape, NaN) and renormalised with a warning when they are not unit length (norms checked on up to 4,096 evenly
spaced rows: features are unit rows from extraction on).
"""
from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from zeroshot.features import unit_rows

from ._base import Head, projected, set_class_embeddings


def log_sum_exp(z: np.ndarray) -> np.ndarray:
    """Row-wise ``log sum_c exp(z_c)`` of finite (N, C) values, max-shifted: SciPy's formula without its checks,
    which cost more than the (N, C) arithmetic itself."""
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


class OODDetector(Head):
    """Base of every OOD detector: ``score_samples(X) -> (N,)`` float32, higher = more in-distribution."""

    def _check_X(self, X) -> np.ndarray:
        check_is_fitted(self, self._fitted_arrays[0])
        return unit_rows(X, dim=self.n_features_in_, sampled=True)

    def score_samples(self, X) -> np.ndarray:
        raise NotImplementedError


class TextOODDetector(OODDetector):
    """A detector fitted from (C, D) class text embeddings only; ID images are not needed (``X``, ``y`` unused)."""

    _fitted_arrays = ("class_embeddings_",)
    _fitted_meta = ("class_names_",)

    def fit(self, X=None, y=None, *, classes, class_names: list[str] | None = None) -> "TextOODDetector":
        """``classes``: (C, D) class embeddings of the ID classes, e.g. from :func:`zeroshot.class_embeddings`."""
        set_class_embeddings(self, classes, class_names)
        return self

    def _cosines(self, X, W: np.ndarray | None = None) -> np.ndarray:
        """(N, C) float32 cosine similarities to the class embeddings (or to the rows of ``W``)."""
        check_is_fitted(self, self._fitted_arrays[0])
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

    def fit(self, X=None, y=None, *, classes, class_names: list[str] | None = None) -> "MCM":
        _check_positive(self.temperature, "temperature")
        if np.ndim(classes) == 2 and len(classes) < 2:
            raise ValueError("MCM needs at least two ID classes: with one class its softmax is 1 for every input, "
                             "a constant score that separates nothing. Use MaxLogit or Energy for a single class.")
        return super().fit(X, y, classes=classes, class_names=class_names)

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

    def fit(self, X=None, y=None, *, classes, class_names: list[str] | None = None) -> "Energy":
        _check_positive(self.temperature, "temperature")
        if self.logit_scale is not None:
            _check_positive(self.logit_scale, "logit_scale")
        return super().fit(X, y, classes=classes, class_names=class_names)

    def score_samples(self, X) -> np.ndarray:
        z = self._cosines(X).astype(np.float64) * ((self.logit_scale or 1.0) / self.temperature)  # s * cos / T
        return (self.temperature * log_sum_exp(z)).astype(np.float32)
