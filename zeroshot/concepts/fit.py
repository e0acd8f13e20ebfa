"""Accuracy against log concept frequency: an OLS trend with a bootstrap CI, and the paper's binned curve.

Udandarao et al., "No 'Zero-Shot' Without Exponential Data" (NeurIPS 2024): zero-shot accuracy grows linearly in the
log of how often a concept occurs in pretraining. The paper's own statistic is a Pearson correlation of binned means
(``paper_binned``); the OLS slope with its bootstrap CI is this library's addition (methods/concept_frequency.md §1b,
§2).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
from scipy import stats

MIN_CONCEPTS = 20  # fewer concepts than this: the fit is a demonstration, not a measurement
MAX_ZERO_FRACTION = 0.3  # more zero-count concepts than this: the corpus barely covers the classes


def _number(v: float) -> float | None:
    """A JSON-safe float: None for NaN or infinity (a correlation of constant values)."""
    return float(v) if math.isfinite(v) else None


def bootstrap_slope_ci(x: np.ndarray, y: np.ndarray, *, seed: int, n_boot: int) -> tuple[float, float]:
    """95 % percentile CI of the OLS slope cov(x, y) / var(x) over ``n_boot`` resamples of the points (seeded)."""
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    xs, ys = x[idx], y[idx]
    dx = xs - xs.mean(axis=1, keepdims=True)
    var = (dx * dx).sum(axis=1)
    ok = var > 0  # a resample of one repeated x has no slope
    slopes = (dx * (ys - ys.mean(axis=1, keepdims=True))).sum(axis=1)[ok] / var[ok]
    lo, hi = np.percentile(slopes, [2.5, 97.5])
    return float(lo), float(hi)


def paper_binned_curve(counts: np.ndarray, accuracy: np.ndarray, bins: int = 12) -> dict:
    """The paper's curve: x' = ln(max(count, 1)), ``bins`` edges ``np.linspace(min, max)``, ``np.digitize(right=True)``
    (bin i holds edges[i-1] < x' <= edges[i], bin 0 the minimum), mean and std accuracy per bin, Pearson r between
    edge and bin mean over the inner bins [1:-1] (empty bins left out). Zero counts are kept, as in the paper."""
    x = np.log(np.maximum(counts, 1).astype(np.float64))
    edges = np.linspace(x.min(), x.max(), bins)
    which = np.digitize(x, edges, right=True)
    n = np.bincount(which, minlength=bins)
    mean = np.array([accuracy[which == i].mean() if n[i] else np.nan for i in range(bins)])
    std = np.array([accuracy[which == i].std() if n[i] else np.nan for i in range(bins)])
    inner = np.arange(1, bins - 1)
    inner = inner[n[inner] > 0]
    r = p = math.nan
    if len(inner) >= 3 and np.ptp(mean[inner]) > 0:
        r, p = stats.pearsonr(edges[inner], mean[inner])
    return {"label": "paper's binned curve (Udandarao et al. 2024)", "x": "ln(max(count, 1))",
            "edges": edges.tolist(), "count_at_edge": np.exp(edges).tolist(), "n": n.tolist(),
            "mean": [_number(v) for v in mean], "std": [_number(v) for v in std],
            "pearson_inner": {"bins": inner.tolist(), "r": _number(r), "p": _number(p)}}


ZERO_COUNTS = ("exclude", "as_one")


def fit_trend(counts: Mapping[str, float], accuracy: Mapping[str, float], *, seed: int = 0, n_boot: int = 1000,
              bins: int = 12, zero_counts: str = "exclude") -> dict:
    """Fit accuracy (%) = a + b log10(count) over concepts with count > 0: slope b (accuracy points per 10x more
    captions) with a seeded bootstrap 95 % CI over concepts, Pearson r, Spearman rho, R^2; zero-count concepts are
    named and, with ``zero_counts="exclude"`` (methods §2), left out of the fit, or with ``"as_one"`` (the paper's
    notebooks) fitted at count 1 (x = 0); plus :func:`paper_binned_curve`. Counts may be weighted (fractional).
    ``warnings`` lists (and warns) why a fit is weak."""
    missing = sorted(set(counts) ^ set(accuracy))
    if missing:
        raise ValueError(f"counts and accuracy must name the same concepts; only in one of them: {missing[:10]}")
    names = list(counts)
    if zero_counts not in ZERO_COUNTS:
        raise ValueError(f"zero_counts must be one of {ZERO_COUNTS}, got {zero_counts!r}")
    c = np.array([counts[k] for k in names], dtype=np.float64)
    acc = np.array([accuracy[k] for k in names], dtype=np.float64)
    if (c < 0).any() or not np.isfinite(acc).all():
        raise ValueError("counts must be >= 0 and accuracies finite numbers")
    zero = [k for k, v in zip(names, c) if v == 0]
    keep = c > 0 if zero_counts == "exclude" else np.ones(len(c), dtype=bool)
    x, y = np.log10(np.where(c > 0, c, 1.0)[keep]), acc[keep]
    if keep.sum() < 3 or np.ptp(x) == 0:
        raise ValueError(f"need at least 3 concepts with different non-zero counts to fit a trend, got "
                         f"{int(keep.sum())} concept(s) in the fit ({len(zero)} with count 0)")
    ols = stats.linregress(x, y)
    lo, hi = bootstrap_slope_ci(x, y, seed=seed, n_boot=n_boot)
    rho, rho_p = stats.spearmanr(x, y)
    notes = []
    if len(x) < MIN_CONCEPTS:
        notes.append(f"only {len(x)} concepts in the fit (fewer than {MIN_CONCEPTS}): the trend is a demonstration, "
                     "not a measurement")
    if len(zero) > MAX_ZERO_FRACTION * len(names):
        notes.append(f"{len(zero)} of {len(names)} concepts ({100 * len(zero) / len(names):.0f} %) never occur in "
                     f"the corpus (more than {100 * MAX_ZERO_FRACTION:.0f} %): the fit is unreliable")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return {
        "n": int(len(x)), "n_concepts": len(names), "zero_count": zero, "zero_counts": zero_counts,
        "points": [{"concept": k, "count": float(v), "accuracy": float(a)} for k, v, a in zip(names, c, acc)],
        "x": "log10(count)", "y": "accuracy (%)",
        "intercept": float(ols.intercept), "slope": float(ols.slope), "slope_ci95": [lo, hi],
        "bootstrap": {"n_boot": n_boot, "seed": seed, "resampled": "concepts"},
        "r2": float(ols.rvalue ** 2), "pearson": {"r": _number(ols.rvalue), "p": _number(ols.pvalue)},
        "spearman": {"rho": _number(rho), "p": _number(rho_p)},
        "paper_binned": paper_binned_curve(c, acc, bins),
        "warnings": notes,
    }
