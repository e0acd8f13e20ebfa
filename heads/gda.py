"""GDA: Gaussian discriminant analysis with a shared covariance, ensembled with zero-shot (spec: methods/gda.md)."""
from __future__ import annotations

import numpy as np
from scipy import linalg

from ._fewshot import CannotSearch, FewShotClassifier, Support, accuracy, best_on_grid, grid, one_hot

# The official grid {1e-4, 1e-3, ..., 100} refined to three steps per decade: a decade is too coarse where the
# optimum lies between two points (Tiny ImageNet, default model: 23.2 % with the decades, 24.8 % with this grid).
ALPHAS = tuple(float(a) for a in np.round(np.logspace(-4, 2, 19), 6))
COV_ESTIMATORS = ("ks", "empirical", "ledoit_wolf", "oas")


def shared_covariance(Z: np.ndarray, estimator: str) -> np.ndarray:
    """Covariance of the class-centred rows Z (M, D), in float64.

    ``ks``: the official code's empirical-Bayes ridge estimator, ``(Z^T Z + tr(S) I) / D`` with ``S = Z^T Z/(M-1)``
    (its inverse is the code's ``D * pinv((M-1) S + tr(S) I)``); ``empirical``: ``Z^T Z / M``, the pooled
    maximum-likelihood estimate that scikit-learn's LinearDiscriminantAnalysis uses; ``ledoit_wolf`` / ``oas``:
    scikit-learn's shrinkage estimators on Z.
    """
    from sklearn.covariance import ledoit_wolf, oas

    M, D = Z.shape
    if estimator == "ks":
        scatter = Z.T @ Z
        return (scatter + np.trace(scatter) / max(M - 1, 1) * np.eye(D)) / D
    if estimator == "empirical":
        return Z.T @ Z / M
    if estimator == "ledoit_wolf":
        return ledoit_wolf(Z, assume_centered=True)[0]
    if estimator == "oas":
        return oas(Z, assume_centered=True)[0]
    raise ValueError(f"unknown cov_estimator {estimator!r}; choose one of {', '.join(COV_ESTIMATORS)}")


def class_priors(priors, counts: np.ndarray) -> np.ndarray:
    if isinstance(priors, str):
        if priors == "uniform":
            return np.full(len(counts), 1.0 / len(counts))
        if priors == "empirical":
            return counts / counts.sum()
        raise ValueError(f"priors must be 'uniform', 'empirical' or a list of C probabilities, got {priors!r}")
    p = np.asarray(priors, dtype=np.float64)
    if p.shape != counts.shape or (p <= 0).any() or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"priors must be {len(counts)} positive probabilities summing to 1")
    return p


def gaussian_discriminant(X: np.ndarray, y: np.ndarray, n_classes: int, estimator: str, priors
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Bayes' rule for ``x | y=k ~ N(mu_k, Sigma)``: ``coef_k = Sigma^-1 mu_k``, ``b_k = log p_k - mu_k coef_k / 2``."""
    X = X.astype(np.float64)
    counts = np.bincount(y, minlength=n_classes)
    means = (one_hot(y, n_classes).T.astype(np.float64) @ X) / counts[:, None]
    sigma = shared_covariance(X - means[y], estimator)
    eigenvalues = linalg.eigvalsh(sigma)
    if eigenvalues[-1] <= 0 or eigenvalues[0] <= 1e-10 * eigenvalues[-1]:
        raise ValueError(
            f"the shared covariance ({estimator!r}) is singular: "
            + ("every class has a single shot, so there is no within-class variation to estimate it from; give "
               "some classes 2+ shots (or augmented views as extra rows), or use TipAdapter"
               if counts.max() < 2 else "use cov_estimator='ks', 'ledoit_wolf' or 'oas', or give more shots"))
    coef = linalg.solve(sigma, means.T, assume_a="pos").T
    intercept = np.log(class_priors(priors, counts)) - 0.5 * (means * coef).sum(axis=1)
    return coef.astype(np.float32), intercept.astype(np.float32)


class GDA(FewShotClassifier):
    """``logits = s * X @ W.T + alpha * (X @ coef_.T + intercept_)``: a training-free linear Gaussian classifier
    (shared covariance) on the shots, added to zero-shot.

    Follows the official code (the paper's covariance equation could not be checked): KS covariance estimator,
    uniform priors, alpha searched over 1e-4 ... 100 (three steps per decade, the official grid has one) on the
    validation split (default 0.1 when it cannot be), never on the test set as the official ImageNet script does.
    ``coef_`` / ``intercept_`` are the discriminant alone.
    """

    _fitted_arrays = FewShotClassifier._fitted_arrays + ("class_embeddings_", "coef_", "intercept_")
    _hyperparameters = ("alpha",)
    _defaults = {"alpha": 0.1}

    def __init__(self, alpha: float | None = None, cov_estimator: str = "ks", priors="uniform",
                 logit_scale: float = 100.0, val_fraction: float = 0.25, random_state: int = 0):
        self.alpha = alpha
        self.cov_estimator = cov_estimator
        self.priors = priors
        self.logit_scale = logit_scale
        self.val_fraction = val_fraction
        self.random_state = random_state

    def _search(self, fit: Support, X_val, y_val, W):
        try:
            coef, intercept = gaussian_discriminant(fit.X, fit.y, fit.n_classes, self.cov_estimator, self.priors)
        except ValueError as exc:
            raise CannotSearch(f"no covariance on the fit part of the split ({exc})") from None
        alphas = grid(self.alpha, ALPHAS)
        scores = accuracy(self.logit_scale * (X_val @ W.T)[None]
                          + alphas[:, None, None] * (X_val @ coef.T + intercept)[None], y_val)
        (i,), acc = best_on_grid(scores)
        return {"alpha": alphas[i]}, acc

    def _build(self, support: Support, W, **chosen) -> None:
        self.class_embeddings_ = W
        self.coef_, self.intercept_ = gaussian_discriminant(support.X, support.y, support.n_classes,
                                                            self.cov_estimator, self.priors)

    def _logits(self, X: np.ndarray) -> np.ndarray:
        alpha = self.chosen_["alpha"]
        return X @ (self.logit_scale * self.class_embeddings_ + alpha * self.coef_).T + alpha * self.intercept_
