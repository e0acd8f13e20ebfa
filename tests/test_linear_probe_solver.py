"""LinearProbe's two solvers: ``init="zeros"`` is scikit-learn's ``LogisticRegression`` (two classes included, as
the 2-class softmax), ``init="zero-shot"`` the package's own ``fit_logistic`` with the text prior; both warn only
from the final fit when L-BFGS stops early."""
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from conftest import unit_rows
from zeroshot.heads import LinearProbe
from zeroshot.heads._fewshot import one_hot
from zeroshot.heads.linear_probe import fit_logistic

D = 24


def blobs(rng, n_classes: int, shots, noise: float = 0.6):
    """Unit features around random class means; ``shots`` per class (int or one count per class)."""
    means = unit_rows(rng.standard_normal((n_classes, D)))
    y = np.repeat(np.arange(n_classes), shots)
    X = unit_rows(means[y] + noise * rng.standard_normal((len(y), D)) / np.sqrt(D) * 4).astype(np.float32)
    return means.astype(np.float32), X, y


@pytest.mark.parametrize("C", [0.5, 50.0])
def test_zeros_probe_is_sklearn_logistic_regression_on_float64_features(rng, C):
    _, X, y = blobs(rng, 4, 12)
    _, X_test, _ = blobs(rng, 4, 10)
    probe = LinearProbe(C=C).fit(X, y)
    reference = LogisticRegression(C=C, max_iter=1000).fit(X.astype(np.float64), y)
    np.testing.assert_allclose(probe.coef_, reference.coef_, rtol=1e-6, atol=1e-6)  # float32 storage only
    np.testing.assert_allclose(probe.intercept_, reference.intercept_, rtol=1e-6, atol=1e-6)
    assert probe.n_iter_ == reference.n_iter_[0]
    np.testing.assert_array_equal(probe.predict(X_test), reference.predict(X_test))
    np.testing.assert_allclose(probe.predict_proba(X_test), reference.predict_proba(X_test), atol=1e-5)
    # the own solver with a zero prior takes the same L-BFGS steps on the same objective
    W, b, n_iter = fit_logistic(X, one_hot(y, 4), C, prior=np.zeros((4, D)), max_iter=1000, tol=1e-4)
    np.testing.assert_allclose(W, probe.coef_, atol=1e-5)
    np.testing.assert_allclose(b, probe.intercept_, atol=1e-5)
    assert n_iter == probe.n_iter_


def test_two_class_probe_is_the_two_class_softmax(rng):
    """scikit-learn fits two classes as one binary row; the probe returns the 2-class softmax with both rows
    penalised, which is that binary model at 2 C split symmetrically."""
    _, X, y = blobs(rng, 2, 15, noise=1.0)
    _, X_test, _ = blobs(rng, 2, 20, noise=1.0)
    C = 3.0
    probe = LinearProbe(C=C, tol=1e-10).fit(X, y)
    assert probe.coef_.shape == (2, D) and probe.intercept_.shape == (2,)
    np.testing.assert_allclose(probe.coef_[0], -probe.coef_[1], atol=1e-7)
    binary = LogisticRegression(C=2 * C, tol=1e-10, max_iter=1000).fit(X.astype(np.float64), y)
    np.testing.assert_allclose(probe.coef_[1] - probe.coef_[0], binary.coef_[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(probe.predict_proba(X_test), binary.predict_proba(X_test), atol=1e-6)
    W, b, _ = fit_logistic(X, one_hot(y, 2), C, prior=np.zeros((2, D)), max_iter=1000, tol=1e-10)
    np.testing.assert_allclose(probe.coef_, W, atol=1e-5)  # the same minimum as the own multinomial solver
    np.testing.assert_allclose(probe.intercept_, b, atol=1e-5)
    same_C = LogisticRegression(C=C, tol=1e-10, max_iter=1000).fit(X.astype(np.float64), y)
    assert np.abs(same_C.coef_[0] - binary.coef_[0]).max() > 1e-2  # the binary model at C is a different model


def test_zero_shot_init_under_huge_regularisation_is_zero_shot_plus_fitted_biases(rng):
    """The coefficients stay at s * W; only the unpenalised biases move, to where the mean predicted probability
    on the shots equals each class's share of them (the biases' optimality condition)."""
    shots = [20, 10, 5, 3]
    W, X, y = blobs(rng, 4, shots)
    _, X_test, _ = blobs(rng, 4, 10)
    probe = LinearProbe(C=1e-9, init="zero-shot", logit_scale=30.0).fit(X, y, class_embeddings=W)
    shift = probe.decision_function(X_test) - 30.0 * X_test @ W.T
    np.testing.assert_allclose(shift, np.broadcast_to(probe.intercept_, shift.shape), atol=1e-3)
    assert np.ptp(probe.intercept_) > 0.1
    np.testing.assert_allclose(probe.predict_proba(X).mean(axis=0), np.array(shots) / sum(shots), atol=1e-3)


@pytest.mark.parametrize("n_classes, init", [(4, "zeros"), (2, "zeros"), (4, "zero-shot")])
def test_only_the_final_fit_warns_when_lbfgs_stops_at_max_iter(rng, n_classes, init):
    W, X, y = blobs(rng, n_classes, 8)
    text = {"class_embeddings": W} if init == "zero-shot" else {}
    with pytest.warns(ConvergenceWarning, match=r"C=1 after 1 iterations without converging"):
        probe = LinearProbe(C=1.0, init=init, max_iter=1).fit(X, y, **text)
    assert probe.n_iter_ == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = LinearProbe(init=init, max_iter=1).fit(X, y, **text)  # C searched: every search fit stops too
    converge = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(converge) == 1 and f"C={probe.chosen_['C']:.3g} " in str(converge[0].message)


@pytest.mark.parametrize("init", ["zeros", "zero-shot"])
def test_parallel_search_steps_choose_what_one_fit_after_another_chooses(rng, monkeypatch, init):
    """A search step's fits on a thread pool (forced here by a zero threshold) give the sequential search's C and
    coefficients, and leave the caller's warning filters as they were (no catch_warnings inside the threads)."""
    import zeroshot.heads.linear_probe as linear_probe

    means, X, y = blobs(rng, 6, 10, noise=1.2)
    filters = list(warnings.filters)
    monkeypatch.setattr(linear_probe, "PARALLEL_WORK", 0)
    pooled = LinearProbe(init=init).fit(X, y, class_embeddings=means)
    assert warnings.filters == filters
    calls = []
    monkeypatch.setattr(linear_probe, "parallel_scores",
                        lambda score, workers: lambda indices: calls.append(len(indices)) or [score(j) for j in indices])
    sequential = LinearProbe(init=init).fit(X, y, class_embeddings=means)
    assert calls[0] == 7 and pooled.chosen_["C"] == sequential.chosen_["C"]
    np.testing.assert_array_equal(pooled.coef_, sequential.coef_)
