"""Few-shot, training-free and calibration heads on synthetic unit features: fit / predict / save / load / errors /
sklearn protocol for every head, and the equivalences the specs name."""
import json

import numpy as np
import pytest
from scipy import sparse
from sklearn.base import clone
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from conftest import unit_rows
from zeroshot.heads import (GDA, HEADS, TEEN, CapSAdapter, LinearProbe, PriorCorrection, TemperatureScaling, TipAdapter,
                            TipAdapterF, ZeroShotClassifier, ZLaP, load_head, softmax)
from zeroshot.heads._fewshot import carve_validation
from zeroshot.heads.calibration import calibration_metrics, expected_calibration_error
from zeroshot.heads.caps_adapter import CACHE, kl_matrix
from zeroshot.heads.linear_probe import LAMBDAS, bracket_search
from zeroshot.heads.tip_adapter import cache_loss_and_grad, class_starts
from zeroshot.heads.zlap import conjugate_gradient, propagation_matrix

C, D, SHOTS = 5, 16, 8


def make_problem(rng, shots=SHOTS, n_test=40, gap=0.5, noise=0.25):
    """Text rows W; image classes sit away from their text row (a modality gap), so shots add information."""
    W = unit_rows(rng.standard_normal((C, D)))
    means = unit_rows(W + gap * rng.standard_normal((C, D)))
    y = np.repeat(np.arange(C), shots)
    y_test = np.repeat(np.arange(C), n_test)
    X = unit_rows(means[y] + noise * rng.standard_normal((len(y), D)) / np.sqrt(D) * 4)
    X_test = unit_rows(means[y_test] + noise * rng.standard_normal((len(y_test), D)) / np.sqrt(D) * 4)
    return W, X, y, X_test, y_test


@pytest.fixture
def problem(rng):
    return make_problem(rng)


FEW_SHOT = {  # every head fitted on (X, y, class_embeddings=W), with settings that keep the tests fast
    "LinearProbe": lambda: LinearProbe(),
    "LinearProbe(zero-shot init)": lambda: LinearProbe(init="zero-shot"),
    "TipAdapter": lambda: TipAdapter(),
    "TipAdapterF": lambda: TipAdapterF(epochs=3),
    "GDA": lambda: GDA(),
    "CapSAdapter": lambda: CapSAdapter(),
    "TEEN": lambda: TEEN(),
}


@pytest.fixture(params=list(FEW_SHOT))
def make_head(request):
    return FEW_SHOT[request.param]


# ---------------------------------------------------------------- every few-shot head


def test_fit_predict_shapes_and_probabilities(make_head, problem):
    W, X, y, X_test, y_test = problem
    head = make_head().fit(X, y, class_embeddings=W)
    scores = head.decision_function(X_test)
    proba = head.predict_proba(X_test)
    assert scores.shape == proba.shape == (len(X_test), C)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(head.predict(X_test), scores.argmax(axis=1))
    np.testing.assert_array_equal(head.classes_, np.arange(C))
    zero_shot = ((X_test @ W.T).argmax(axis=1) == y_test).mean()
    assert head.score(X_test, y_test) >= max(zero_shot - 0.02, 0.4)  # chance is 0.2


def test_cache_heads_beat_zero_shot_when_its_logits_are_not_too_sharp(problem):
    W, X, y, X_test, y_test = problem
    zero_shot = ((X_test @ W.T).argmax(axis=1) == y_test).mean()
    for head in (TipAdapter(logit_scale=10.0), TipAdapterF(logit_scale=10.0, epochs=3), CapSAdapter()):
        assert head.fit(X, y, class_embeddings=W).score(X_test, y_test) > zero_shot + 0.1


def test_search_and_split_are_recorded(make_head, problem):
    W, X, y, _, _ = problem
    head = make_head().fit(X, y, class_embeddings=W)
    assert head.search_["source"] == "validation split carved from the support set"
    assert set(head.chosen_) == set(head._hyperparameters) and head.search_["searched"] == list(head._hyperparameters)
    assert head.search_["n_val"] == len(head.val_index_) == C * 2 and head.search_["n_fit"] == C * (SHOTS - 2)
    assert np.bincount(y[head.val_index_], minlength=C).tolist() == [2] * C
    assert 0 <= head.search_["val_accuracy"] <= 1
    json.dumps(head.chosen_), json.dumps(head.search_)  # saved as JSON


def test_one_shot_uses_defaults_and_says_so(make_head, problem):
    W, X, y, X_test, _ = problem
    first = np.searchsorted(y, np.arange(C))
    if make_head().__class__ is GDA:
        with pytest.raises(ValueError, match="single shot"):
            make_head().fit(X[first], y[first], class_embeddings=W)
        return
    head = make_head().fit(X[first], y[first], class_embeddings=W)
    assert head.search_["source"].startswith("defaults: no validation samples")
    assert head.chosen_ == head._defaults and len(head.val_index_) == 0
    assert head.predict(X_test).shape == (len(X_test),)


def test_given_validation_set_is_used(make_head, problem):
    W, X, y, X_test, y_test = problem
    head = make_head().fit(X, y, class_embeddings=W, X_val=X_test, y_val=y_test)
    assert head.search_["source"] == "given validation set" and head.search_["n_val"] == len(X_test)
    assert head.search_["n_fit"] == len(X) and len(head.val_index_) == 0


def test_save_load_round_trip(make_head, problem, tmp_path):
    W, X, y, X_test, _ = problem
    head = make_head().fit(X, y, class_embeddings=W)
    loaded = load_head(head.save(tmp_path / "head", fingerprint="fp1"), fingerprint="fp1")
    assert type(loaded) is type(head) and loaded.get_params() == head.get_params()
    assert loaded.chosen_ == head.chosen_ and loaded.search_ == head.search_
    np.testing.assert_array_equal(loaded.val_index_, head.val_index_)
    np.testing.assert_allclose(loaded.decision_function(X_test), head.decision_function(X_test), rtol=1e-6)
    assert type(head).__name__ in HEADS


def test_clone_params_and_pipeline(make_head, problem):
    W, X, y, X_test, y_test = problem
    head = make_head()
    copy = clone(head.fit(X, y, class_embeddings=W))
    assert copy.get_params() == head.get_params() and not hasattr(copy, "classes_")
    assert copy.set_params(random_state=7) is copy and copy.random_state == 7
    step = type(head).__name__.lower()
    pipe = make_pipeline(FunctionTransformer(unit_rows), head)
    pipe.fit(X * 2.0, y, **{f"{step}__class_embeddings": W})
    np.testing.assert_array_equal(pipe.predict(X_test * 2.0), head.predict(X_test))


def test_any_labels_scikit_learn_accepts(make_head, problem, tmp_path):
    """String labels take class_names' order (the embeddings' order), other labels np.unique's; predict returns
    them, y_val is read the same way, and a saved head keeps them."""
    W, X, y, X_test, y_test = problem
    names = np.array(["e", "d", "c", "b", "a"])  # not sorted: the order is the class embeddings'
    reference = make_head().fit(X, y, class_embeddings=W).predict(X_test)
    head = make_head().fit(X, names[y], class_embeddings=W, class_names=list(names))
    assert head.classes_.tolist() == names.tolist()
    np.testing.assert_array_equal(head.predict(X_test), names[reference])
    loaded = load_head(head.save(tmp_path / "head"))
    np.testing.assert_array_equal(loaded.predict(X_test), names[reference])
    sparse_labels = np.array([3, 7, 12, 40, 41])
    head = make_head().fit(X, sparse_labels[y], class_embeddings=W, X_val=X_test, y_val=sparse_labels[y_test])
    reference = make_head().fit(X, y, class_embeddings=W, X_val=X_test, y_val=y_test).predict(X_test)
    np.testing.assert_array_equal(head.predict(X_test), sparse_labels[reference])
    with pytest.raises(ValueError, match=r"y_val has labels \[99\] outside the 5 classes"):
        make_head().fit(X, sparse_labels[y], class_embeddings=W, X_val=X_test[:1], y_val=[99])


def test_not_fitted_and_bad_inputs(make_head, problem):
    W, X, y, X_test, _ = problem
    with pytest.raises(NotFittedError):
        make_head().predict(X_test)
    head = make_head()
    with pytest.raises(ValueError, match="6 distinct labels but there are 5 classes"):
        head.fit(X, np.where(np.arange(len(y)) == 0, 9, y), class_embeddings=W)
    with pytest.raises(ValueError, match=r"\(-1 marks an unlabelled sample: drop those rows\)"):
        head.fit(X, np.where(np.arange(len(y)) == 0, -1, y), class_embeddings=W)
    with pytest.raises(ValueError, match="classes \\[3\\]\\): give every class at least one shot"):
        head.fit(X[y != 3], y[y != 3], class_embeddings=W)
    with pytest.raises(ValueError, match="one label per feature row"):
        head.fit(X, y[:-1], class_embeddings=W)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        head.fit(X, y + 0.5, class_embeddings=W)
    bad = X.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        head.fit(bad, y, class_embeddings=W)
    with pytest.raises(ValueError, match="another backbone"):
        head.fit(X[:, :8], y, class_embeddings=W)
    with pytest.raises(ValueError, match="X_val and y_val"):
        head.fit(X, y, class_embeddings=W, X_val=X_test)
    fitted = make_head().fit(X, y, class_embeddings=W)
    with pytest.raises(ValueError, match="another backbone"):
        fitted.predict(X_test[:, :8])


@pytest.mark.parametrize("head", [TipAdapter(), GDA(), CapSAdapter(), TipAdapterF(epochs=1)])
def test_text_heads_need_class_embeddings(head, problem):
    _, X, y, _, _ = problem
    with pytest.raises(ValueError, match="class text embeddings"):
        head.fit(X, y)


def test_carve_validation_is_stratified_seeded_and_disjoint():
    y = np.repeat(np.arange(4), [1, 2, 4, 16])
    fit, val = carve_validation(y, 0.25, seed=3)
    assert np.bincount(y[val], minlength=4).tolist() == [0, 1, 1, 4]
    assert np.intersect1d(fit, val).size == 0 and len(fit) + len(val) == len(y)
    again = carve_validation(y, 0.25, seed=3)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(carve_validation(y, 0.25, seed=4)[1], val)
    with pytest.raises(ValueError, match="val_fraction"):
        carve_validation(y, 1.5, seed=0)


# ---------------------------------------------------------------- Tip-Adapter / Tip-Adapter-F


def test_tip_adapter_with_alpha_zero_equals_zero_shot(problem):
    W, X, y, X_test, _ = problem
    tip = TipAdapter(alpha=0.0, beta=5.5).fit(X, y, class_embeddings=W)
    zero_shot = ZeroShotClassifier(logit_scale=100.0).fit(class_embeddings=W)
    np.testing.assert_array_equal(tip.decision_function(X_test), zero_shot.decision_function(X_test))
    assert tip.search_["source"] == "all fixed by the user"


def test_tip_adapter_cache_limits(problem):
    W, X, y, X_test, _ = problem
    flat = TipAdapter(alpha=1.0, beta=1e-9).fit(X, y, class_embeddings=W)  # beta -> 0: the cache adds the shot counts
    np.testing.assert_allclose(flat.decision_function(X_test) - 100 * X_test @ W.T, SHOTS, rtol=1e-4)
    sharp = TipAdapter(alpha=1.0, beta=1e3, logit_scale=0.0).fit(X, y, class_embeddings=W)  # a key as query: its class
    np.testing.assert_array_equal(sharp.predict(X), y)
    logits = sharp.decision_function(X[:3])
    np.testing.assert_allclose(logits[np.arange(3), y[:3]], 1.0, rtol=1e-3)  # float32 cosines times beta = 1e3


def test_tip_adapter_searches_the_official_grid(problem):
    W, X, y, _, _ = problem
    head = TipAdapter().fit(X, y, class_embeddings=W)
    assert 0.1 <= head.chosen_["alpha"] < 3 and 0.1 <= head.chosen_["beta"] < 7
    fixed_beta = TipAdapter(beta=2.0).fit(X, y, class_embeddings=W)
    assert fixed_beta.chosen_["beta"] == 2.0 and fixed_beta.search_["searched"] == ["alpha"]


def test_tip_adapter_warns_when_shots_differ(problem):
    W, X, y, _, _ = problem
    with pytest.warns(UserWarning, match="shots per class differ"):
        TipAdapter(alpha=1.0, beta=1.0).fit(X[1:], y[1:], class_embeddings=W)


def test_cache_key_gradient_matches_finite_differences(rng):
    keys = unit_rows(rng.standard_normal((6, 4))).astype(np.float64)
    labels = np.array([0, 0, 1, 1, 2, 2])
    x = unit_rows(rng.standard_normal((5, 4))).astype(np.float64)
    y, base = np.array([0, 1, 2, 1, 0]), rng.standard_normal((5, 3))
    starts = class_starts(labels, 3)
    _, grad = cache_loss_and_grad(keys, x, y, base, labels, starts, 2.0, 3.0)
    numeric = np.zeros_like(keys)
    for i, j in np.ndindex(keys.shape):
        step = np.zeros_like(keys)
        step[i, j] = 1e-6
        numeric[i, j] = (cache_loss_and_grad(keys + step, x, y, base, labels, starts, 2.0, 3.0)[0]
                         - cache_loss_and_grad(keys - step, x, y, base, labels, starts, 2.0, 3.0)[0]) / 2e-6
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-8)


def test_tip_adapter_f_trains_keys_and_without_epochs_is_tip(problem):
    W, X, y, X_test, _ = problem
    tip = TipAdapter(alpha=1.0, beta=5.0).fit(X, y, class_embeddings=W)
    untrained = TipAdapterF(alpha=1.0, beta=5.0, epochs=0).fit(X, y, class_embeddings=W)
    np.testing.assert_allclose(untrained.decision_function(X_test), tip.decision_function(X_test), rtol=1e-6)
    trained = TipAdapterF(alpha=1.0, beta=5.0, epochs=5).fit(X, y, class_embeddings=W)
    assert np.abs(trained.cache_keys_ - tip.cache_keys_).max() > 1e-3
    again = TipAdapterF(alpha=1.0, beta=5.0, epochs=5).fit(X, y, class_embeddings=W)
    np.testing.assert_array_equal(again.cache_keys_, trained.cache_keys_)  # seeded


# ---------------------------------------------------------------- GDA


class FixedCovariance:
    """A scikit-learn covariance estimator that always answers the same matrix."""

    def __init__(self, covariance):
        self.covariance = covariance

    def fit(self, X):
        self.covariance_ = self.covariance
        return self


def _gda_discriminant(rng, cov_estimator, priors):
    W, X, y, X_test, _ = make_problem(rng, shots=60)
    gda = GDA(alpha=1.0, cov_estimator=cov_estimator, priors=priors).fit(X, y, class_embeddings=W)
    return gda, X.astype(np.float64), y, X_test


def test_gda_matches_sklearn_lda_with_the_empirical_covariance(rng):
    gda, X, y, X_test = _gda_discriminant(rng, "empirical", "empirical")
    lda = LinearDiscriminantAnalysis(solver="lsqr").fit(X, y)
    np.testing.assert_allclose(gda.coef_, lda.coef_, rtol=1e-4, atol=1e-3 * np.abs(lda.coef_).max())
    np.testing.assert_allclose(gda.intercept_, lda.intercept_, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gda.decision_function(X_test) - 100 * X_test @ gda.class_embeddings_.T,
                               lda.decision_function(X_test), rtol=1e-4, atol=1e-2)


def test_gda_ks_estimator_matches_lda_given_the_same_covariance(rng):
    gda, X, y, X_test = _gda_discriminant(rng, "ks", "uniform")
    means = np.stack([X[y == c].mean(axis=0) for c in range(C)])
    Z = X - means[y]
    ks = (Z.T @ Z + np.trace(Z.T @ Z) / (len(X) - 1) * np.eye(D)) / D  # the spec's formula, written independently
    lda = LinearDiscriminantAnalysis(solver="lsqr", covariance_estimator=FixedCovariance(ks),
                                     priors=np.full(C, 1 / C)).fit(X, y)
    np.testing.assert_allclose(gda.coef_, lda.coef_, rtol=1e-4, atol=1e-4 * np.abs(lda.coef_).max())
    np.testing.assert_allclose(gda.intercept_, lda.intercept_, rtol=1e-4, atol=1e-2)


def test_gda_recovers_the_analytic_lda_solution(rng):
    mu = rng.standard_normal((2, 4))
    sigma = np.diag([1.0, 0.5, 2.0, 1.5])
    y = np.repeat([0, 1], 20000)
    X = (mu[y] + rng.standard_normal((len(y), 4)) @ np.sqrt(sigma)).astype(np.float32)
    X /= 10  # any scale: the head only needs finite rows
    gda = GDA(alpha=1.0, cov_estimator="empirical").fit(X, y, class_embeddings=np.eye(2, 4))
    coef = np.linalg.solve(sigma / 100, (mu / 10).T).T
    np.testing.assert_allclose(gda.coef_, coef, rtol=0.03, atol=0.3)


def test_gda_errors_name_the_fix(problem):
    W, X, y, _, _ = problem
    two = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(C)])  # 10 rows: rank 5 < 16 dims
    with pytest.raises(ValueError, match="singular.*ledoit_wolf"):
        GDA(alpha=1.0, cov_estimator="empirical").fit(X[two], y[two], class_embeddings=W)
    with pytest.raises(ValueError, match="unknown cov_estimator"):
        GDA(alpha=1.0, cov_estimator="nope").fit(X, y, class_embeddings=W)
    with pytest.raises(ValueError, match="priors"):
        GDA(alpha=1.0, priors="zipf").fit(X, y, class_embeddings=W)
    GDA(alpha=1.0, cov_estimator="ledoit_wolf").fit(X, y, class_embeddings=W)


def test_gda_two_shots_falls_back_to_default_alpha_with_the_reason(problem):
    W, X, y, _, _ = problem
    two = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(C)])
    head = GDA().fit(X[two], y[two], class_embeddings=W)
    assert head.search_["source"].startswith("defaults: no covariance on the fit part")
    assert head.chosen_ == {"alpha": 0.1}


# ---------------------------------------------------------------- linear probe


def _logistic_objective(coef, intercept, X, y, C):
    """scikit-learn's multinomial objective divided by n: mean cross-entropy + ||W||^2 / (2 C n)."""
    Z = X.astype(np.float64) @ np.asarray(coef, np.float64).T + intercept
    log_p = Z - Z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean() + (np.asarray(coef, np.float64) ** 2).sum() / (2 * C * len(y))


def test_linear_probe_matches_sklearn_logistic_regression(problem):
    """Both solvers guarantee a near-minimum of the same convex objective, not identical parameters (their
    stopping rules differ and change between scikit-learn releases): compare the objective they reach and the
    predictions, not the probabilities to 4 decimals."""
    W, X, y, X_test, _ = problem
    probe = LinearProbe(C=2.0, tol=1e-8).fit(X, y)
    reference = LogisticRegression(C=2.0, tol=1e-8, max_iter=1000).fit(X, y)
    ours = _logistic_objective(probe.coef_, probe.intercept_, X, y, 2.0)
    theirs = _logistic_objective(reference.coef_, reference.intercept_, X, y, 2.0)
    assert ours <= theirs + 1e-6 * theirs  # at least as close to the minimum as scikit-learn gets
    assert abs(ours - theirs) <= 1e-5 * theirs
    np.testing.assert_array_equal(probe.predict(X_test), reference.predict(X_test))


def test_linear_probe_separates_two_blobs(rng):
    y = np.repeat([0, 1], 40)
    X = unit_rows(np.where(y[:, None] == 0, 1.0, -1.0) * np.eye(16)[0] + 0.3 * rng.standard_normal((80, 16)))
    probe = LinearProbe().fit(X[::2], y[::2])
    assert probe.score(X[1::2], y[1::2]) > 0.99
    assert probe.n_iter_ > 0 and probe.chosen_["C"] in 1 / LAMBDAS


@pytest.mark.parametrize("peak", [0, 37, 50, 96])
def test_bracket_search_finds_the_peak_of_a_unimodal_curve(peak):
    calls = []

    def score(index):
        calls.append(index)
        return -abs(index - peak)

    assert bracket_search(score) == (peak, 0)
    assert len(calls) == len(set(calls)) <= 7 + 4 * 2
    assert bracket_search(lambda index: 1.0)[0] == 0  # ties keep the smallest weight decay


def test_linear_probe_zero_shot_init_keeps_zero_shot_under_strong_regularisation(problem):
    W, X, y, X_test, _ = problem
    probe = LinearProbe(C=1e-8, init="zero-shot").fit(X, y, class_embeddings=W)
    np.testing.assert_allclose(probe.coef_, 100 * W, atol=1e-3)
    assert np.abs(LinearProbe(C=1e-8).fit(X, y, class_embeddings=W).coef_).max() < 1e-3
    with pytest.raises(ValueError, match="init must be"):
        LinearProbe(init="random").fit(X, y, class_embeddings=W)


def test_linear_probe_warns_when_lbfgs_does_not_converge(problem):
    W, X, y, _, _ = problem
    with pytest.warns(UserWarning, match="without converging"):
        LinearProbe(C=1e6, max_iter=2).fit(X, y)


# ---------------------------------------------------------------- CapS-Adapter


def test_caps_adapter_reduces_to_zero_shot_and_to_tip_adapter(problem):
    W, X, y, X_test, _ = problem
    zero_shot = ZeroShotClassifier().fit(class_embeddings=W).decision_function(X_test)
    caps = CapSAdapter(alpha=0.0, beta=5.0, gamma=0.0, delta=0.5).fit(X, y, class_embeddings=W)
    np.testing.assert_allclose(caps.decision_function(X_test), zero_shot, rtol=1e-6, atol=1e-4)
    tip = TipAdapter(alpha=2.0, beta=5.0).fit(X, y, class_embeddings=W)
    caps = CapSAdapter(alpha=2.0, beta=5.0, gamma=0.0, delta=0.0).fit(X, y, class_embeddings=W)
    np.testing.assert_allclose(caps.decision_function(X_test), tip.decision_function(X_test), rtol=1e-5, atol=1e-4)
    assert caps.caption_source_.startswith("card templates")


def test_caps_tipx_term_equals_the_explicit_sum_over_keys(problem):
    W, X, y, X_test, _ = problem
    head = CapSAdapter(alpha=1.0, beta=5.0, gamma=1.0, delta=0.5).fit(X, y, class_embeddings=W)
    kl = kl_matrix(X_test, head.cache_keys_, W, head.tau)  # the spec: min-max rescale each KL, then sum per class
    (k_min, k_max), (s_min, s_max) = head.kl_range_, head.sim_range_
    rescaled = (kl - k_min) / (k_max - k_min) * (s_max - s_min) + s_min
    explicit = -np.stack([rescaled[:, head.cache_labels_ == c].sum(axis=1) for c in range(C)], axis=1)
    cache = {name: getattr(head, name) for name in CACHE}
    np.testing.assert_allclose(head._tipx(X_test, head.class_embeddings_, cache), explicit, rtol=1e-4, atol=1e-4)
    train_kl = kl_matrix(X, X, W, head.tau)
    np.testing.assert_allclose(head.kl_range_, [train_kl.min(), train_kl.max()], atol=1e-6)


def test_caps_adapter_takes_user_captions_and_uses_the_kl_term(problem, rng):
    W, X, y, X_test, _ = problem
    captions = unit_rows(W[y] + 0.3 * rng.standard_normal((len(y), D)))
    head = CapSAdapter(alpha=1.0, beta=5.0, gamma=1.0, delta=1.0).fit(X, y, class_embeddings=W, captions=captions)
    assert head.caption_source_ == "user captions"
    without_kl = CapSAdapter(alpha=1.0, beta=5.0, gamma=0.0, delta=1.0).fit(X, y, class_embeddings=W, captions=captions)
    assert not np.allclose(head.decision_function(X_test), without_kl.decision_function(X_test))
    with pytest.raises(ValueError, match="one caption feature per shot"):
        CapSAdapter().fit(X, y, class_embeddings=W, captions=captions[:-1])


# ---------------------------------------------------------------- ZLaP


def _dense_propagation(U, W, k, gamma, alpha):
    """The spec's graph written densely, independently of the sparse code."""
    C, N = len(W), len(U)
    A = np.zeros((C + N, C + N))
    sims = U @ U.T
    for i in range(N):
        for j in np.argsort(-sims[i])[:k]:
            A[C + i, C + j] = max(sims[i, j], 0)
        text = U[i] @ W.T
        for c in np.argsort(-text)[:k]:
            A[C + i, c] = max(text[c], 0) ** gamma
    A = A + A.T
    np.fill_diagonal(A, 0)
    degree = A.sum(axis=1)
    degree[degree == 0] = 1
    return np.eye(C + N) - alpha * A / np.sqrt(np.outer(degree, degree))


def test_zlap_graph_and_cg_match_a_dense_solve(rng):
    W = unit_rows(rng.standard_normal((4, 8)))
    U = unit_rows(rng.standard_normal((46, 8)))
    L = propagation_matrix(U, W, 5, 5.0, 0.3)
    dense = _dense_propagation(U, W, 5, 5.0, 0.3)
    np.testing.assert_allclose(L.toarray(), dense, atol=1e-6)
    B = np.eye(50, 4)
    np.testing.assert_allclose(conjugate_gradient(sparse.csr_matrix(dense), B, 1e-10, 200), np.linalg.solve(dense, B),
                               atol=1e-8)
    head = ZLaP().fit(U, class_embeddings=W)
    np.testing.assert_allclose(head.transductive_scores_, np.linalg.solve(dense, B)[4:], atol=1e-5)
    assert head.cg_["max_residual"] < 1e-5


def test_zlap_scores_are_equivariant_to_permuting_the_images(rng):
    W, _, _, U, _ = make_problem(rng)
    perm = rng.permutation(len(U))
    a, b = ZLaP().fit(U, class_embeddings=W), ZLaP().fit(U[perm], class_embeddings=W)
    np.testing.assert_allclose(b.transductive_scores_, a.transductive_scores_[perm], rtol=1e-4, atol=1e-6)


def test_zlap_propagation_beats_zero_shot_on_clustered_images(rng):
    W, _, _, U, y = make_problem(rng, n_test=100, gap=0.3)
    zero_shot = ((U @ W.T).argmax(axis=1) == y).mean()
    head = ZLaP().fit(U, class_embeddings=W)
    assert (head.transduction_ == y).mean() > zero_shot + 0.03
    assert (head.predict(U) == y).mean() > zero_shot  # the inductive variant, on the same images
    assert ZLaP.is_transductive


def test_zlap_inductive_sparse_scores(rng, tmp_path):
    W, _, _, U, y = make_problem(rng, n_test=60)
    head = ZLaP().fit(U, class_embeddings=W, class_names=list("abcde"))
    queries = U[:7]
    scores = head.decision_function(queries)
    assert scores.shape == (7, C) and (scores >= 0).all()
    loaded = load_head(head.save(tmp_path / "zlap"))
    np.testing.assert_array_equal(loaded.decision_function(queries), scores)
    assert loaded.class_names_ == list("abcde")


def test_zlap_query_without_positive_neighbours_falls_back_to_zero_shot(rng):
    W = np.eye(3, 8, dtype=np.float32)
    U = unit_rows(np.abs(rng.standard_normal((20, 8))))  # all in the positive orthant
    query = unit_rows(-np.array([[1.0, 2, 3, 1, 0, 0, 0, 0]], np.float32))  # negative to every node
    np.testing.assert_allclose(ZLaP().fit(U, class_embeddings=W).decision_function(query), query @ W.T, atol=1e-6)


def test_zlap_errors(rng):
    W = unit_rows(rng.standard_normal((3, 8)))
    with pytest.raises(ValueError, match="alpha must be in"):
        ZLaP(alpha=1.0).fit(unit_rows(rng.standard_normal((10, 8))), class_embeddings=W)
    with pytest.raises(ValueError, match="empty"):
        ZLaP().fit(np.zeros((0, 8), np.float32), class_embeddings=W)
    with pytest.raises(ValueError, match="another backbone"):
        ZLaP().fit(unit_rows(rng.standard_normal((10, 4))), class_embeddings=W)


# ---------------------------------------------------------------- calibration


def overconfident_logits(rng, n):
    """Logits whose softmax is sharper than the truth: labels are drawn from softmax(true), logits = 4 * true."""
    true = 1.5 * rng.standard_normal((n, C))
    p = np.exp(true) / np.exp(true).sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return (4 * true).astype(np.float32), y


def test_temperature_scaling_keeps_argmax_and_lowers_held_out_ece(rng, tmp_path):
    Z_val, y_val = overconfident_logits(rng, 3000)
    Z_test, y_test = overconfident_logits(rng, 3000)
    ts = TemperatureScaling().fit(Z_val, y_val)
    assert 3 < ts.temperature_ < 5  # the true temperature is 4
    np.testing.assert_array_equal(ts.predict(Z_test), Z_test.argmax(axis=1))
    before = expected_calibration_error(softmax(Z_test), y_test)
    after = expected_calibration_error(ts.predict_proba(Z_test), y_test)
    assert after < before / 3
    loaded = load_head(ts.save(tmp_path / "ts"))
    assert loaded.temperature_ == ts.temperature_
    with pytest.raises(ValueError, match="fitted for 5 classes"):
        ts.transform(Z_test[:, :3])
    with pytest.raises(NotFittedError):
        TemperatureScaling().transform(Z_test)


def test_ece_definitions(rng):
    n = 200_000
    proba = rng.dirichlet(np.ones(C), size=n)
    y = (proba.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)  # labels drawn from the predictions
    assert expected_calibration_error(proba, y) < 0.01
    certain = np.eye(C)[np.arange(50) % C]
    assert expected_calibration_error(certain, np.arange(50) % C) == 0
    metrics = calibration_metrics(certain, (np.arange(50) + 1) % C)
    assert metrics["ece_15"] == pytest.approx(1.0) and metrics["mce_15"] == pytest.approx(1.0)
    assert metrics["brier"] == pytest.approx(2.0)


def test_prior_correction_known_em_and_match(rng, tmp_path):
    known = PriorCorrection(method="known", target_prior=[0.5, 0.2, 0.1, 0.1, 0.1]).fit(np.zeros((1, C)))
    np.testing.assert_allclose(known.offsets_, np.log(np.array([0.5, 0.2, 0.1, 0.1, 0.1]) * C), rtol=1e-5)
    # a calibrated model on a balanced source, applied to a target where class 0 is 10x more frequent
    means = 2.0 * np.eye(C)
    y = np.concatenate([np.zeros(2000, int), np.repeat(np.arange(1, C), 200)])
    X = means[y] + rng.standard_normal((len(y), C))
    logits = (X @ means.T - 0.5 * (means ** 2).sum(axis=1)).astype(np.float32)  # exact Bayes logits, uniform prior
    em = PriorCorrection().fit(logits)
    assert em.prior_[0] > 0.6 and em.is_transductive
    assert (em.predict(logits) == y).mean() >= (logits.argmax(axis=1) == y).mean()
    balanced = np.repeat(np.arange(C), 400)
    Xb = means[balanced] + rng.standard_normal((len(balanced), C))
    uniform = PriorCorrection().fit((Xb @ means.T - 0.5 * (means ** 2).sum(axis=1)).astype(np.float32))
    np.testing.assert_allclose(uniform.prior_, 1 / C, atol=0.03)
    match = PriorCorrection(method="match").fit(logits)
    np.testing.assert_allclose(softmax(match.transform(logits)).mean(axis=0), 1 / C, atol=1e-4)
    loaded = load_head(em.save(tmp_path / "prior"))
    np.testing.assert_array_equal(loaded.transform(logits), em.transform(logits))
    with pytest.raises(ValueError, match="method must be"):
        PriorCorrection(method="guess").fit(logits)
    with pytest.raises(ValueError, match="target_prior must be 5"):
        PriorCorrection(method="known", target_prior=[1, 2]).fit(logits)
    with pytest.warns(UserWarning, match="noisy"):
        PriorCorrection().fit(logits[:20])


def test_teen_calibrates_few_shot_classes_toward_base_prototypes(rng):
    W, X, y, X_test, y_test = make_problem(rng, shots=40)
    few = np.isin(y, [3, 4]) & (np.arange(len(y)) % 40 >= 2)  # classes 3, 4: only 2 shots each
    plain = TEEN(tau=16.0, shift=0.0).fit(X[~few], y[~few], base_classes=[0, 1, 2])
    means = np.stack([X[~few][y[~few] == c].mean(axis=0) for c in range(C)])
    np.testing.assert_allclose(plain.prototypes_, unit_rows(means), atol=1e-6)
    shifted = TEEN(tau=16.0, shift=0.5).fit(X[~few], y[~few], base_classes=[0, 1, 2])
    np.testing.assert_allclose(shifted.prototypes_[:3], plain.prototypes_[:3], atol=1e-6)  # base classes stay
    assert np.abs(shifted.prototypes_[3:] - plain.prototypes_[3:]).max() > 1e-3
    text_based = TEEN().fit(X, y, class_embeddings=W)
    assert text_based.base_classes_ == [] and text_based.search_["searched"] == ["tau", "shift"]
    with pytest.raises(ValueError, match=r"give base_classes \(.*\) or class_embeddings"):
        TEEN().fit(X, y)
    with pytest.raises(ValueError, match="some, not all"):
        TEEN().fit(X, y, base_classes=range(C))
