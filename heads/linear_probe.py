"""Linear probe on frozen features: CLIP's L-BFGS logistic regression with a C search
(spec: methods/linear_probe.md)."""
from __future__ import annotations

import contextlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from ._fewshot import FewShotClassifier, Support, accuracy, one_hot

LAMBDAS = np.logspace(-6, 6, 97)  # weight-decay grid, 8 steps per decade; C = 1 / lambda
SPANS = (8, 4, 2, 1)  # bracket refinement around the best point, as CLIP_benchmark does
# A search step's fits of n x d features with k classes run at once from n * d * k = 2^22 multiply-adds per product
# (measured on 2 cores, one BLAS thread per fit: at 0.46M, CIFAR-10 16-shot, a pool made the search 0.19-0.25 s
# against 0.13-0.15; at 46M, Tiny ImageNet 4-shot, 2.7 s against 3.8)
PARALLEL_WORK = 2**22


def _warn_not_converged(C: float, n_iter: int, reason: str) -> None:
    warnings.warn(f"L-BFGS stopped at C={C:.3g} after {n_iter} iterations without converging ({reason}); "
                  "raise max_iter", ConvergenceWarning, stacklevel=3)


def fit_sklearn(X: np.ndarray, y: np.ndarray, n_classes: int, C: float, *, max_iter: int,
                tol: float, report: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """scikit-learn's ``LogisticRegression(C, solver="lbfgs")`` as a softmax over ``n_classes`` rows:
    minimises ``mean_i CE(x_i W^T + b, y_i) + ||W||^2 / (2 C n)``, bias unpenalised. Returns (W, b, iterations).

    ``y`` holds every class index 0..n_classes-1, so the rows of ``coef_`` (ordered by the sorted labels) are the
    classes. The features go in as float64: given float32, scikit-learn's L-BFGS stops early (measured on CIFAR-10
    16-shot features: coefficients 5e-2 from the float64 fit at C = 100, 1.4 at C = 1e4). Two classes: scikit-learn
    fits the binary model ``w = W_1 - W_0`` penalised by ``||w||^2 / 2``; the 2-class softmax penalised on both
    rows has ``W_0 = -W_1`` at its minimum, so its penalty is ``||w||^2 / 4``. The binary fit at ``2 C``, split as
    ``(-w / 2, w / 2)``, is therefore the same model. Non-convergence is re-issued as this module's
    ConvergenceWarning, naming C; ``report=False`` leaves scikit-learn's warnings to the caller's filters (the C
    search, whose fits run on threads: ``warnings.catch_warnings`` is not thread-safe).
    """
    binary = n_classes == 2
    model = LogisticRegression(C=2 * C if binary else C, solver="lbfgs", max_iter=max_iter, tol=tol)
    with warnings.catch_warnings(record=True) if report else contextlib.nullcontext([]) as caught:
        if report:
            warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X.astype(np.float64), y)
    n_iter = int(model.n_iter_[0])
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            _warn_not_converged(C, n_iter, "".join(str(warning.message).splitlines()[1:2]))
        else:
            warnings.warn(warning.message, stacklevel=2)
    coef, intercept = model.coef_, model.intercept_
    if binary:
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    return coef.astype(np.float32), intercept.astype(np.float32), n_iter


def fit_logistic(X: np.ndarray, Y: np.ndarray, C: float, *, prior: np.ndarray, max_iter: int,
                 tol: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Multinomial logistic regression shrunk toward ``prior``, the package's one own solver: scikit-learn cannot
    penalise ``||W - prior||^2``, which the zero-shot-initialised probe needs. Same objective and L-BFGS-B settings
    as scikit-learn's lbfgs (float64): ``mean_i CE(x_i W^T + b, y_i) + ||W - prior||^2 / (2 C n)``, bias
    unpenalised, started at W = prior, b = 0. ``Y`` is one-hot (n, k). Returns (W, b, iterations).
    With ``prior`` = 0 this is :func:`fit_sklearn`'s model, which is used instead (more than two classes: the same
    L-BFGS iterates, coefficients within 5e-7 of scikit-learn's; two classes: the same minimum, reached along a
    different path, so the two stop at different points within ``tol``).
    """
    X = X.astype(np.float64)
    n, d = X.shape
    k = Y.shape[1]
    reg = 1.0 / (C * n)

    def loss_and_grad(theta):
        W, b = theta[:k * d].reshape(k, d), theta[k * d:]
        Z = X @ W.T + b
        Z -= Z.max(axis=1, keepdims=True)
        E = np.exp(Z)
        total = E.sum(axis=1)
        P = E / total[:, None]
        shift = W - prior
        loss = (np.log(total) - (Y * Z).sum(axis=1)).mean() + 0.5 * reg * (shift * shift).sum()
        G = (P - Y) / n
        return loss, np.concatenate([(G.T @ X + reg * shift).ravel(), G.sum(axis=0)])

    theta0 = np.concatenate([prior.ravel(), np.zeros(k)])
    result = minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
    if not result.success:
        _warn_not_converged(C, result.nit, result.message)
    theta = result.x
    return theta[:k * d].reshape(k, d).astype(np.float32), theta[k * d:].astype(np.float32), int(result.nit)


def bracket_search(score, n: int = len(LAMBDAS), *, score_many=None) -> tuple[int, float]:
    """Best grid index by ``score(index)``, each index evaluated once: every 16th index (every second decade,
    as in the CLIP paper), then brackets of 8, 4, 2, 1 around the best, as CLIP_benchmark does. Ties keep the
    smaller index (smaller weight decay), like CLIP_benchmark's strict ``>``. The indices of one step do not depend
    on each other: ``score_many(indices)`` (default: ``score`` on each in turn) may evaluate them at once."""
    scores: dict[int, float] = {}
    score_many = score_many or (lambda indices: [score(j) for j in indices])

    def best(indices) -> int:
        new = [j for j in dict.fromkeys(indices) if j not in scores]
        scores.update(zip(new, score_many(new)))
        return max(sorted(set(indices)), key=lambda j: (scores[j], -j))

    p = best(range(0, n, 16))
    for span in SPANS:
        p = best([max(p - span, 0), p, min(p + span, n - 1)])
    return p, scores[p]


def one_blas_thread():
    """A context in which NumPy's and SciPy's BLAS (and OpenMP) use one thread each. The probe's fits are
    mid-size products inside L-BFGS, where two OpenBLAS libraries starting a thread per core fight over the cores:
    on 2 cores one thread made a Tiny ImageNet fit 1.6-2.8x faster (4 and 16 shots); parallelism comes from running
    a search step's fits at once instead (:func:`parallel_scores`)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def parallel_scores(score, workers: int):
    """``score_many`` for :func:`bracket_search`: a step's indices scored at once on up to ``workers`` threads."""

    def score_many(indices: list[int]) -> list[float]:
        if workers < 2 or len(indices) < 2:
            return [score(j) for j in indices]
        with ThreadPoolExecutor(min(workers, len(indices))) as pool:
            return list(pool.map(score, indices))

    return score_many


class LinearProbe(FewShotClassifier):
    """``logits = X @ coef_.T + intercept_``, a multinomial logistic regression fitted with L-BFGS (CLIP protocol).

    C left ``None`` is searched on the validation split by :func:`bracket_search` over weight decays
    ``logspace(-6, 6, 97)`` (C = 1 / weight decay). Every fit starts afresh from the prior, as a new scikit-learn
    estimator per C would: warm starts across C (allowed by the spec) made the answer depend on the search path,
    because L-BFGS stops within ``tol`` of wherever it started (measured: at C = 1e6 a warm-started fit scored
    0.19 on validation, the cold fit that is finally refitted 0.15). Default C = 1 when there is nothing to
    validate on. Every fit runs on one BLAS thread (:func:`one_blas_thread`), and the fits of one search step, which
    do not depend on each other, run at once on a thread pool when each is large enough (:data:`PARALLEL_WORK`):
    the same fits, so the same C. The final fit uses all shots (the validation rows come from the k shots, so this never exceeds
    k) and warns if L-BFGS does not converge in ``max_iter`` iterations (silent during the search, where fits only
    rank C values); ``n_iter_`` records how many it took.

    ``init="zeros"`` is scikit-learn's ``LogisticRegression`` (:func:`fit_sklearn`). ``init="zero-shot"`` starts at
    ``s * W`` (scaled class text embeddings) and shrinks toward it instead of toward 0 (penalty ``||coef - s W||^2``),
    which scikit-learn cannot do, so it uses the package's own solver :func:`fit_logistic` (same objective and
    L-BFGS settings otherwise): our design choice from the spec, not a published protocol. With strong
    regularisation it stays the zero-shot classifier up to the (unpenalised) per-class biases.
    """

    _fitted_arrays = FewShotClassifier._fitted_arrays + ("coef_", "intercept_")
    _fitted_meta = FewShotClassifier._fitted_meta + ("n_iter_",)
    _hyperparameters = ("C",)
    _defaults = {"C": 1.0}

    def __init__(self, C: float | None = None, init: str = "zeros", logit_scale: float = 100.0, max_iter: int = 1000,
                 tol: float = 1e-4, val_fraction: float = 0.25, random_state: int = 0):
        self.C = C
        self.init = init
        self.logit_scale = logit_scale
        self.max_iter = max_iter
        self.tol = tol
        self.val_fraction = val_fraction
        self.random_state = random_state

    @property
    def _needs_text(self) -> bool:
        return self.init == "zero-shot"

    def _fit_one(self, support: Support, W, C: float, *, report: bool = True):
        if self.init == "zeros":
            return fit_sklearn(support.X, support.y, support.n_classes, C, max_iter=self.max_iter, tol=self.tol,
                               report=report)
        if self.init == "zero-shot":
            return fit_logistic(support.X, one_hot(support.y, support.n_classes), C,
                                prior=self.logit_scale * W.astype(np.float64), max_iter=self.max_iter, tol=self.tol)
        raise ValueError(f"init must be 'zeros' or 'zero-shot', got {self.init!r}")

    def _search(self, fit: Support, X_val, y_val, W):
        def score(index: int) -> float:
            coef, intercept, _ = self._fit_one(fit, W, 1.0 / LAMBDAS[index], report=False)
            return float(accuracy(X_val @ coef.T + intercept, y_val))

        workers = (os.cpu_count() or 1) if fit.X.size * fit.n_classes >= PARALLEL_WORK else 1  # small: no pool
        with warnings.catch_warnings(), one_blas_thread():  # the weakest regularisations may not converge: they
            warnings.simplefilter("ignore", ConvergenceWarning)  # only rank C values here
            best, acc = bracket_search(score, score_many=parallel_scores(score, workers))
        return {"C": 1.0 / LAMBDAS[best]}, acc

    def _build(self, support: Support, W, **chosen) -> None:
        with one_blas_thread():
            self.coef_, self.intercept_, self.n_iter_ = self._fit_one(support, W, chosen["C"])

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef_.T + self.intercept_
