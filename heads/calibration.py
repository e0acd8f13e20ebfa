"""Post-hoc calibration of any head's logits (temperature scaling, ECE, label-shift / prior correction) and TEEN
prototype calibration for few-shot classes (spec: methods/calibration.md)."""
from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.base import TransformerMixin
from sklearn.utils.validation import check_is_fitted

from zeroshot.features import check_features, normalise_rows

from ._base import Head, encode_labels, renamed_keywords, softmax
from ._fewshot import FewShotClassifier, Support, accuracy, best_on_grid, check_labels, grid


def check_logits(Z, n_classes: int | None = None) -> np.ndarray:
    """(N, C) finite logits, optionally of a known width."""
    Z = check_features(Z, name="logits")
    if n_classes is not None and Z.shape[1] != n_classes:
        raise ValueError(f"logits have {Z.shape[1]} columns, but this calibrator was fitted for {n_classes} classes")
    return Z


def calibration_metrics(proba, y, n_bins: int = 15) -> dict:
    """ECE and MCE over ``n_bins`` equal-width confidence bins (b/n, (b+1)/n], NLL and Brier score (fractions).

    ECE = sum over non-empty bins of |B|/N * |accuracy(B) - mean confidence(B)|; confidence 0 joins the first bin.
    """
    proba = np.asarray(proba, dtype=np.float64)
    y = check_labels(y, len(proba), proba.shape[1])
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, confidence, n_bins))
    truth = proba[np.arange(len(y)), y]
    return {f"ece_{n_bins}": float(gap.sum() / len(y)),
            f"mce_{n_bins}": float((gap[count > 0] / count[count > 0]).max()),
            "nll": float(-np.log(np.maximum(truth, 1e-300)).mean()),
            "brier": float(((proba ** 2).sum(axis=1) - 2 * truth + 1).mean())}


def expected_calibration_error(proba, y, n_bins: int = 15) -> float:
    return calibration_metrics(proba, y, n_bins)[f"ece_{n_bins}"]


class TemperatureScaling(TransformerMixin, Head):
    """``softmax(logits / T)``, T fitted by minimising the NLL of HELD-OUT labelled logits (never the shots a
    training-free head was built from: its logits on its own keys are over-confident). The argmax never changes."""

    _fitted_meta = ("temperature_",)

    def __init__(self, min_temperature: float = 0.01, max_temperature: float = 100.0):
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature

    def fit(self, logits, y) -> "TemperatureScaling":
        Z = check_logits(logits).astype(np.float64)
        y = check_labels(y, len(Z), Z.shape[1])
        if len(Z) == 0:
            raise ValueError("no held-out logits to fit a temperature on")

        def nll(log_t: float) -> float:
            z = Z / np.exp(log_t)
            top = z.max(axis=1)
            return float((top + np.log(np.exp(z - top[:, None]).sum(axis=1)) - z[np.arange(len(y)), y]).mean())

        result = minimize_scalar(nll, bounds=(np.log(self.min_temperature), np.log(self.max_temperature)),
                                 method="bounded", options={"xatol": 1e-6})
        self.temperature_ = float(np.exp(result.x))
        self.n_features_in_ = Z.shape[1]
        return self

    def transform(self, logits) -> np.ndarray:
        check_is_fitted(self, "temperature_")
        return check_logits(logits, self.n_features_in_) / np.float32(self.temperature_)

    def predict_proba(self, logits) -> np.ndarray:
        return softmax(self.transform(logits))

    def predict(self, logits) -> np.ndarray:
        return self.transform(logits).argmax(axis=1)


def prior_vector(prior, n_classes: int, name: str) -> np.ndarray:
    """None -> uniform; else C positive probabilities (normalised)."""
    if prior is None:
        return np.full(n_classes, 1.0 / n_classes)
    p = np.asarray(prior, dtype=np.float64)
    if p.shape != (n_classes,) or not np.isfinite(p).all() or (p <= 0).any():
        raise ValueError(f"{name} must be {n_classes} positive numbers (one per class), got shape {p.shape}")
    return p / p.sum()


class PriorCorrection(TransformerMixin, Head):
    """Per-class logit offsets for label shift: ``logits + offsets_``.

    ``method="known"``: ``offsets = log target_prior - log source_prior``. ``"em"``: Saerens et al.'s EM estimates
    the unknown target prior from unlabelled logits (transductive; give calibrated logits, e.g. after
    :class:`TemperatureScaling`). ``"match"``: offsets that make the mean prediction on the unlabelled logits equal
    ``target_prior`` (fixed point ``beta += log target - log mean softmax(Z + beta)``, mean of beta fixed at 0;
    transductive). Priors default to uniform; estimated priors are floored at 1e-6 / C.

    A zero-shot head's implicit source prior is rarely uniform: pass its mean prediction on balanced held-out
    images as ``source_prior`` (CIFAR-10 with a 10:1 shift, ``scripts/bench_fewshot.py``: EM with a uniform
    source prior lowered top-1, with the implicit one it raised it; figures in model_zoo.md).
    """

    _fitted_arrays = ("offsets_", "prior_")
    _fitted_meta = ("n_iter_",)
    METHODS = ("known", "em", "match")

    def __init__(self, method: str = "em", target_prior=None, source_prior=None, max_iter: int = 100,
                 tol: float = 1e-6):
        self.method = method
        self.target_prior = target_prior
        self.source_prior = source_prior
        self.max_iter = max_iter
        self.tol = tol

    @property
    def is_transductive(self) -> bool:
        return self.method != "known"

    def fit(self, logits, y=None) -> "PriorCorrection":
        """``logits`` (N, C): unlabelled target logits (their width alone for ``known``); y is ignored."""
        if self.method not in self.METHODS:
            raise ValueError(f"method must be one of {', '.join(self.METHODS)}, got {self.method!r}")
        Z = check_logits(logits).astype(np.float64)
        n, C = Z.shape
        source = prior_vector(self.source_prior, C, "source_prior")
        target = prior_vector(self.target_prior, C, "target_prior")
        if self.method != "known" and n == 0:
            raise ValueError(f"method {self.method!r} estimates the target prior from logits: give at least one row")
        if self.method != "known" and n < 10 * C:
            warnings.warn(f"{n} samples for {C} classes: a prior estimated from fewer than 10 per class is noisy",
                          stacklevel=2)
        floor, n_iter = 1e-6 / C, 0
        if self.method == "known":
            prior, offsets = target, np.log(target) - np.log(source)
        elif self.method == "em":
            P, prior = softmax(Z).astype(np.float64), source
            for n_iter in range(1, self.max_iter + 1):
                Q = P * (prior / source)
                new = np.maximum((Q / Q.sum(axis=1, keepdims=True)).mean(axis=0), floor)
                new /= new.sum()
                converged = np.abs(new - prior).max() < self.tol
                prior = new
                if converged:
                    break
            offsets = np.log(prior) - np.log(source)
        else:
            prior, offsets = target, np.zeros(C)
            for n_iter in range(1, self.max_iter + 1):
                step = np.log(target) - np.log(np.maximum(softmax(Z + offsets).mean(axis=0), floor))
                offsets = offsets + step - step.mean()
                if np.abs(step - step.mean()).max() < self.tol:
                    break
        self.offsets_, self.prior_ = offsets.astype(np.float32), prior.astype(np.float32)
        self.n_iter_ = n_iter
        self.n_features_in_ = C
        return self

    def transform(self, logits) -> np.ndarray:
        check_is_fitted(self, "offsets_")
        return check_logits(logits, self.n_features_in_) + self.offsets_

    def predict_proba(self, logits) -> np.ndarray:
        return softmax(self.transform(logits))

    def predict(self, logits) -> np.ndarray:
        return self.transform(logits).argmax(axis=1)


def teen_direction(new: np.ndarray, base: np.ndarray, tau: float) -> np.ndarray:
    """``normalise_rows(softmax(tau * new @ base.T) @ base)``: where the base prototypes pull each new prototype."""
    return normalise_rows(softmax(tau * new @ base.T).astype(np.float64) @ base)


class TEEN(FewShotClassifier):
    """Training-free prototype calibration (TEEN, checked against wangkiw/TEEN): few-shot class prototypes
    (normalised class means) move toward a similarity-weighted mix of well-estimated base prototypes,
    ``p' = (1 - shift) p + shift * normalise_rows(softmax(tau p B^T) B)``; scores are ``logit_scale * cos(x, p')``.

    ``fit(X, y, base_classes=[...])``: the classes with many shots are the base (their prototypes stay) and the
    others are calibrated toward them (the paper's setting). Without ``base_classes`` every class is few-shot and
    the base is the class text embeddings ``class_embeddings`` (our adaptation to the all-few-shot protocol). tau
    and shift left ``None`` are searched on the validation split (tau in {1, 4, 8, 16, 32, 64}, shift 0..1 step
    0.1); defaults 16 and 0.5 (the code's) otherwise. ``shift=0`` is the plain prototype classifier.
    """

    _fitted_arrays = FewShotClassifier._fitted_arrays + ("prototypes_",)
    _fitted_meta = FewShotClassifier._fitted_meta + ("base_classes_",)
    _hyperparameters = ("tau", "shift")
    _defaults = {"tau": 16.0, "shift": 0.5}
    _needs_text = False

    def __init__(self, tau: float | None = None, shift: float | None = None, logit_scale: float = 16.0,
                 val_fraction: float = 0.25, random_state: int = 0):
        self.tau = tau
        self.shift = shift
        self.logit_scale = logit_scale
        self.val_fraction = val_fraction
        self.random_state = random_state

    @renamed_keywords
    def fit(self, X, y, *, class_embeddings=None, base_classes=None, class_names: list[str] | None = None,
            X_val=None, y_val=None) -> "TEEN":
        """As :meth:`FewShotClassifier.fit`; ``base_classes``: the labels whose prototypes are well estimated."""
        if base_classes is None and class_embeddings is None:
            raise ValueError("TEEN calibrates few-shot prototypes toward base prototypes: give base_classes (the "
                             "labels with many shots) or class_embeddings (text embeddings to use as the base)")
        self.base_classes_ = [] if base_classes is None else sorted(set(np.ravel(base_classes).tolist()))
        return self._fit(X, y, class_embeddings, class_names, X_val, y_val)

    def _prototypes(self, support: Support, W) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(normalised class means (C, D), indices of the few-shot classes, base prototypes)."""
        C = support.n_classes
        base = encode_labels(np.asarray(self.base_classes_), support.classes,
                             name="base_classes") if self.base_classes_ else np.zeros(0, np.int64)
        if len(base) == C:
            raise ValueError(f"base_classes must be some, not all, of the {C} labels")
        sums = np.zeros((C, support.X.shape[1]))
        np.add.at(sums, support.y, support.X)
        P = normalise_rows(sums)
        is_base = np.isin(np.arange(C), base)
        return P, np.flatnonzero(~is_base), P[is_base] if is_base.any() else W.astype(np.float64)

    def _search(self, fit: Support, X_val, y_val, W):
        P, new, B = self._prototypes(fit, W)
        taus = grid(self.tau, (1, 4, 8, 16, 32, 64))
        shifts = grid(self.shift, np.arange(11) / 10)[:, None, None]
        xP = X_val @ P.T
        scores = np.empty((len(taus), len(shifts)))
        for i, tau in enumerate(taus):  # cos(x, p') from x.p, x.d and p.d, for every shift at once
            d = teen_direction(P[new], B, tau)
            norm = np.sqrt((1 - shifts) ** 2 + shifts ** 2 + 2 * shifts * (1 - shifts) * (P[new] * d).sum(axis=1))
            logits = np.repeat(xP[None], len(shifts), axis=0)
            logits[:, :, new] = ((1 - shifts) * xP[:, new] + shifts * (X_val @ d.T)) / norm
            scores[i] = accuracy(logits, y_val)
        (i, j), acc = best_on_grid(scores)
        return {"tau": taus[i], "shift": shifts[j, 0, 0]}, acc

    def _build(self, support: Support, W, **chosen) -> None:
        P, new, B = self._prototypes(support, W)
        shift = chosen["shift"]
        P[new] = normalise_rows((1 - shift) * P[new] + shift * teen_direction(P[new], B, chosen["tau"]))
        self.prototypes_ = P.astype(np.float32)

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return self.logit_scale * (X @ self.prototypes_.T)
