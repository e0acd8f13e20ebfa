"""Fréchet distance between two feature sets seen as Gaussians (Heusel et al. 2017, FID; with CLIP features
"FD_CLIP", Kynkäänniemi et al. 2023), with the small-sample diagnostics the spec asks for: a bootstrap CI, FD
against sample size, and the floor of two disjoint halves of the real set (FD is biased upward at small N, Chong &
Forsyth 2020). Everything is float64; see ``shared/methods/generated_image_eval.md``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..features import check_features

IMAGINARY_TOLERANCE = 1e-3  # sqrtm: imaginary parts above this, relative to the real parts, mean a failed root
PSD_TOLERANCE = 1e-8  # eigenvalues below -this x the largest mean the matrix is not a covariance
SYMMETRY_TOLERANCE = 1e-8  # likewise for |S - S.T|, relative to max |S|


def _rows64(X, name: str, dim: int | None = None, min_rows: int = 2) -> np.ndarray:
    """X checked as a finite 2-D feature matrix (the project's messages), as float64, with at least ``min_rows``."""
    check_features(X, dim=dim, name=name)
    X = np.asarray(X, dtype=np.float64)
    if len(X) < min_rows:
        raise ValueError(f"{name} has {len(X)} rows; the covariances need at least {min_rows}: give more samples")
    return X


def _pair64(R, G) -> tuple[np.ndarray, np.ndarray]:
    R = _rows64(R, "R")
    return R, _rows64(G, "G", dim=R.shape[1])


def _stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = X.mean(axis=0)
    centred = X - mu
    return mu, centred.T @ centred / (len(X) - 1)


def gaussian_stats(X) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (divided by N - 1) of the rows of X, in float64."""
    return _stats(_rows64(X, "X"))


def _check_stats(mu, S, name: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    mu, S = np.asarray(mu, dtype=np.float64), np.asarray(S, dtype=np.float64)
    dim = mu.size if dim is None else dim
    if mu.shape != (dim,) or S.shape != (dim, dim):
        raise ValueError(f"mu{name} {mu.shape} and S{name} {S.shape} must be (D,) and (D, D) with D = {dim}: "
                         "pass gaussian_stats() of feature sets of one width")
    if not (np.isfinite(mu).all() and np.isfinite(S).all()):
        raise ValueError(f"mu{name} or S{name} contains NaN or inf: recompute them from finite features")
    if np.abs(S - S.T).max(initial=0) > SYMMETRY_TOLERANCE * np.abs(S).max(initial=0):
        raise ValueError(f"S{name} is not symmetric: pass a covariance matrix")
    return mu, S


def _sqrt_psd(S: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a covariance from ``eigh``, rounding-level negative eigenvalues clipped to 0."""
    w, V = np.linalg.eigh(S)
    if w[0] < -PSD_TOLERANCE * max(w[-1], 0.0):
        raise ValueError(f"S{name} has eigenvalue {w[0]:.3g} < 0, so it is not a covariance matrix: pass one "
                         "from gaussian_stats()")
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


def _trace_sqrt_product(S1: np.ndarray, S2: np.ndarray) -> float:
    """``Tr((S1 S2)^{1/2})`` = Σ sqrt(eig(S1^{1/2} S2 S1^{1/2})) = Σ singular values of S1^{1/2} S2^{1/2}.

    The spec's eigenvalue route, read as singular values: with N < D most eigenvalues of the symmetric product are 0
    and come out at ~1e-16 of the largest, whose square roots (~1e-8 of it each) add ~1e-8 relative error
    (measured at N = 30..50, D = 64..128); the singular values keep it at ~1e-15."""
    product = _sqrt_psd(S1, "1") @ _sqrt_psd(S2, "2")
    return float(np.linalg.svd(product, compute_uv=False).sum())


def _fd(mu1: np.ndarray, S1: np.ndarray, mu2: np.ndarray, S2: np.ndarray) -> float:
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(S1) + np.trace(S2) - 2 * _trace_sqrt_product(S1, S2)
    return max(float(fd), 0.0)  # both covariances are PSD (checked), so a negative value is rounding only


def frechet_from_stats(mu1, S1, mu2, S2) -> float:
    """``FD = ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` from Gaussian statistics in float64; the trace of the
    root is Σ sqrt(eig(S1^{1/2} S2 S1^{1/2})), a symmetric PSD matrix (no ``sqrtm``, no complex parts)."""
    mu1, S1 = _check_stats(mu1, S1, "1")
    mu2, S2 = _check_stats(mu2, S2, "2", dim=mu1.size)
    return _fd(mu1, S1, mu2, S2)


def frechet_distance(R, G) -> float:
    """Fréchet distance between the rows of R (real) and G (generated), each fitted as a Gaussian (mean and
    unbiased covariance, float64). Biased upward at small N: compare with :func:`frechet_floor`."""
    R, G = _pair64(R, G)
    return _fd(*_stats(R), *_stats(G))


def frechet_distance_sqrtm(R, G, eps: float = 1e-6) -> float:
    """FD the reference implementations' way (pytorch-fid, clean-fid): ``scipy.linalg.sqrtm(S_r @ S_g)``; when
    the root is not finite or has imaginary parts above 1e-3 relative, ``eps·I`` is added to both covariances and
    the root taken again; the imaginary part is then dropped. Slower and less stable than :func:`frechet_distance`;
    kept as an independent check."""
    from scipy.linalg import sqrtm

    R, G = _pair64(R, G)
    (mu1, S1), (mu2, S2) = _stats(R), _stats(G)
    root = sqrtm(S1 @ S2)
    if not np.isfinite(root).all() or np.abs(root.imag).max() > IMAGINARY_TOLERANCE * np.abs(root.real).max():
        offset = eps * np.eye(len(mu1))
        root = sqrtm((S1 + offset) @ (S2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(S1) + np.trace(S2) - 2 * np.trace(root.real))


def _resampled_stats(centred: np.ndarray, mean: np.ndarray, rng: np.random.Generator,
                     buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of one bootstrap resample of ``mean + centred`` (rows drawn with replacement), from the
    row counts: weighted sums over the ~63% of rows drawn, never the resampled matrix. The rows are centred on
    the full sample's mean so the sums lose nothing to cancellation; ``buffer`` (like ``centred``) is reused
    across resamples (a fresh 100 MB array per resample costs as much as the product, in page faults)."""
    n = len(centred)
    counts = np.bincount(rng.integers(0, n, n), minlength=n)
    drawn = np.flatnonzero(counts)
    weights = counts[drawn].astype(np.float64)
    rows = np.take(centred, drawn, axis=0, out=buffer[: len(drawn)], mode="clip")  # "clip": written in place
    shift = weights @ rows / n
    rows *= np.sqrt(weights)[:, None]
    return mean + shift, (rows.T @ rows - n * np.outer(shift, shift)) / (n - 1)


def bootstrap_frechet(R, G, n_boot: int = 100, seed: int = 0, level: float = 0.95) -> dict:
    """FD with a bootstrap CI: both sets resampled with replacement ``n_boot`` times (seeded).

    Resamples hold duplicate rows, so the bootstrap FDs sit above the point estimate by about the small-sample bias
    (``boot_mean`` - ``fd``, large when N is not >> D). The interval is therefore their percentile interval moved by
    that bias onto the point estimate: how much FD varies from sample to sample at this N, not a bound on its
    N -> infinity value (see :func:`frechet_floor`, :func:`frechet_vs_n`). Costs two covariance products and an
    FD per resample (~2 s at 50,000 x 512 on 2 cores)."""
    if n_boot < 2 or not 0 < level < 1:
        raise ValueError(f"n_boot={n_boot}, level={level}: give n_boot >= 2 and 0 < level < 1")
    R, G = _pair64(R, G)
    (mu_r, S_r), (mu_g, S_g) = _stats(R), _stats(G)
    rng = np.random.default_rng(seed)
    centred_r, centred_g = R - mu_r, G - mu_g
    buffer_r, buffer_g = np.empty_like(centred_r), np.empty_like(centred_g)
    fds = np.array([_fd(*_resampled_stats(centred_r, mu_r, rng, buffer_r),
                        *_resampled_stats(centred_g, mu_g, rng, buffer_g)) for _ in range(n_boot)])
    fd = _fd(mu_r, S_r, mu_g, S_g)
    low, high = np.quantile(fds, [(1 - level) / 2, (1 + level) / 2]) + fd - fds.mean()
    return {"fd": fd, "ci_low": max(float(low), 0.0), "ci_high": float(high), "level": level,
            "boot_mean": float(fds.mean()), "boot_std": float(fds.std(ddof=1)), "n_boot": n_boot, "seed": seed,
            "n_real": len(R), "n_generated": len(G)}


def frechet_vs_n(R, G, sizes: Sequence[int], seed: int = 0) -> list[dict]:
    """FD on the first n rows of one seeded shuffle of each set, per n in ``sizes``: nested subsamples, so the
    curve shows the small-N bias (FD falling towards its limit as n grows) rather than resampling noise."""
    R, G = _pair64(R, G)
    sizes = [int(n) for n in sizes]
    largest = min(len(R), len(G))
    if not sizes or min(sizes) < 2 or max(sizes) > largest:
        raise ValueError(f"sizes {sizes} must lie within 2..{largest} (the smaller set's rows)")
    rng = np.random.default_rng(seed)
    R, G = R[rng.permutation(len(R))], G[rng.permutation(len(G))]
    return [{"n": n, "fd": _fd(*_stats(R[:n]), *_stats(G[:n]))} for n in sizes]


def frechet_floor(R, seed: int = 0) -> float:
    """FD between two disjoint random halves of R (N // 2 rows each, seeded): the value a perfect generator would
    get at that sample size. Each half has half the rows, so it sits above the floor of a full-size comparison."""
    R = _rows64(R, "R", min_rows=4)
    half = len(R) // 2
    order = np.random.default_rng(seed).permutation(len(R))
    return _fd(*_stats(R[order[:half]]), *_stats(R[order[half:2 * half]]))
