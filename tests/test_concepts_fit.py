"""The accuracy-vs-log-frequency fit: slope recovery, seeded bootstrap, zero counts, warnings, the paper's bins."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from zeroshot.concepts.fit import fit_trend


def synthetic(n: int = 60, seed: int = 1, zeros: int = 0) -> tuple[dict, dict]:
    """Counts log-uniform over 1..1e6 and accuracy 10 + 8 log10(count) + N(0, 3^2); ``zeros`` concepts never seen."""
    rng = np.random.default_rng(seed)
    counts = np.round(10 ** rng.uniform(0, 6, n)).astype(int)
    acc = 10 + 8 * np.log10(counts) + rng.normal(0, 3, n)
    names = [f"c{i}" for i in range(n + zeros)]
    return (dict(zip(names, [*counts.tolist(), *[0] * zeros])),
            dict(zip(names, [*acc.tolist(), *rng.uniform(0, 20, zeros).tolist()])))


def test_recovers_slope_within_its_ci():
    counts, acc = synthetic()
    fit = fit_trend(counts, acc)
    lo, hi = fit["slope_ci95"]
    assert lo < 8 < hi and lo < fit["slope"] < hi
    assert fit["slope"] == pytest.approx(8, abs=1)
    assert fit["intercept"] == pytest.approx(10, abs=3)
    assert fit["pearson"]["r"] > 0.9 and fit["pearson"]["p"] < 1e-6
    assert fit["spearman"]["rho"] > 0.9 and fit["r2"] == pytest.approx(fit["pearson"]["r"] ** 2)
    assert fit["n"] == fit["n_concepts"] == 60 and fit["warnings"] == []


def test_seeded_bootstrap_is_reproducible():
    counts, acc = synthetic()
    assert fit_trend(counts, acc, seed=3) == fit_trend(counts, acc, seed=3)
    assert fit_trend(counts, acc, seed=3)["slope_ci95"] != fit_trend(counts, acc, seed=4)["slope_ci95"]
    assert fit_trend(counts, acc, seed=3)["slope"] == fit_trend(counts, acc, seed=4)["slope"]


def test_zero_counts_are_reported_and_left_out():
    counts, acc = synthetic(zeros=5)
    fit = fit_trend(counts, acc)
    assert fit["zero_count"] == [f"c{i}" for i in range(60, 65)]
    assert fit["n"] == 60 and fit["n_concepts"] == 65
    assert fit["slope"] == fit_trend(*synthetic())["slope"]  # the zeros do not move the line
    assert sum(fit["paper_binned"]["n"]) == 65  # ... but the paper's bins keep them at ln(1) = 0


def test_warns_on_few_concepts_and_many_zeros():
    counts, acc = synthetic(n=10, zeros=6)
    with pytest.warns(UserWarning) as caught:
        fit = fit_trend(counts, acc)
    assert len(fit["warnings"]) == 2 and [str(w.message) for w in caught] == fit["warnings"]
    assert "fewer than 20" in fit["warnings"][0] and "never occur" in fit["warnings"][1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_trend(*synthetic())


def test_paper_binned_curve_shape():
    counts, acc = synthetic(zeros=3)
    binned = fit_trend(counts, acc, bins=12)["paper_binned"]
    assert len(binned["edges"]) == len(binned["mean"]) == len(binned["std"]) == len(binned["n"]) == 12
    assert binned["edges"][0] == 0.0 and binned["edges"][-1] == pytest.approx(np.log(max(counts.values())))
    assert binned["n"][0] == 3 + sum(v == 1 for v in counts.values())  # bin 0 holds exactly the minimum
    inner = binned["pearson_inner"]
    assert inner["bins"] == [i for i in range(1, 11) if binned["n"][i]]
    assert inner["r"] > 0.9 and inner["p"] < 0.01
    assert binned["count_at_edge"][-1] == pytest.approx(max(counts.values()))


def test_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="same concepts"):
        fit_trend({"a": 1, "b": 2}, {"a": 50.0})
    with pytest.raises(ValueError, match="at least 3 concepts"):
        fit_trend({"a": 0, "b": 5, "c": 5, "d": 0}, {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0})
