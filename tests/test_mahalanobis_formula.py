"""Mahalanobis and relative Mahalanobis against their formulas computed in float64 with Cholesky solves, on a badly
conditioned synthetic covariance and on real features of the default model (spec: methods/ood_scores.md 3). The
relative score cancels two large distances along the low-variance directions: it is right only when the class and
background covariances carry one regulariser."""
import numpy as np
import pytest
from scipy.linalg import cho_factor, cho_solve, null_space

from conftest import npz_slice, unit_rows
from zeroshot.heads import Mahalanobis, RelativeMahalanobis


def formula(X, y, queries, *, shrinkage: float = 0.0, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(Mahalanobis, relative Mahalanobis) scores in float64: the tied within-class covariance Sigma and the
    covariance Sigma_0 of all rows around their mean, both given Sigma's regularisation (shrinkage towards
    ``tr(Sigma)/D * I`` and the ridge ``eps * tr(Sigma)/D``), distances by Cholesky solves."""
    X, queries = X.astype(np.float64), queries.astype(np.float64)
    classes = np.unique(y)
    means = np.stack([X[y == c].mean(axis=0) for c in classes])
    within, around = X - means[np.searchsorted(classes, y)], X - X.mean(axis=0)
    cov, cov0 = within.T @ within / len(X), around.T @ around / len(X)
    regularisation = (shrinkage + eps) * np.trace(cov) / len(cov) * np.eye(len(cov)) - shrinkage * cov

    def distances(covariance, centres):
        factor = cho_factor(covariance + regularisation)
        return np.stack([np.einsum("nd,nd->n", queries - m, cho_solve(factor, (queries - m).T).T) for m in centres], 1)

    d, d0 = distances(cov, means), distances(cov0, X.mean(axis=0, keepdims=True))
    return -d.min(axis=1), -(d - d0).min(axis=1)


@pytest.fixture
def badly_conditioned(rng):
    """Unit rows around one shared direction (as CLIP features are) whose within-class variances span six decades,
    condition number ~6e5 like the default model's CIFAR-10 features; queries: held-out ID rows and rows that stray
    isotropically, hence far out along the low-variance directions."""
    dim, n_classes = 48, 4
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    spread = np.logspace(0, -3, dim)
    common = 3.0 * unit_rows(rng.standard_normal((1, dim)))
    centres = 0.3 * rng.standard_normal((n_classes, dim)) * spread
    y = np.repeat(np.arange(n_classes), 250)
    X = unit_rows(common + centres[y] + 0.1 * (rng.standard_normal((len(y), dim)) * spread) @ rotation.T)
    queries = unit_rows(np.r_[common + centres[y[:100]] + 0.1 * (rng.standard_normal((100, dim)) * spread) @ rotation.T,
                              common + 0.1 * rng.standard_normal((100, dim))])
    within = X - np.stack([X[y == c].mean(axis=0) for c in range(n_classes)])[y]
    assert 1e5 < np.linalg.cond(within.T.astype(np.float64) @ within) < 1e6
    return X, y, queries


@pytest.mark.parametrize("shrinkage, eps", [(None, 0.0), ("auto", 1e-6), (None, 1e-2), (0.3, 1e-6)])
def test_relative_scores_equal_the_float64_formula(badly_conditioned, shrinkage, eps):
    X, y, queries = badly_conditioned
    expected = formula(X, y, queries, shrinkage=shrinkage if isinstance(shrinkage, float) else 0.0, eps=eps)[1]
    scores = RelativeMahalanobis(shrinkage=shrinkage, eps=eps).fit(X, y).score_samples(queries)
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6)


def test_the_regulariser_is_shared(badly_conditioned):
    """With one regulariser Sigma' the background covariance is Sigma' + B (B: between-class scatter), and a query x
    with ``(mu_c - mu_0)^T Sigma'^-1 x = 0`` for every class has the same score wherever it lies on that subspace:
    the class and background quadratic terms cancel exactly. Different ridges (eps times each covariance's own mean
    variance) leave ``(1/(lambda + r_c) - 1/(lambda + r_0)) x_lambda^2`` along each low-variance direction."""
    X, y, _ = badly_conditioned
    X64 = X.astype(np.float64)
    means = np.stack([X64[y == c].mean(axis=0) for c in np.unique(y)])
    within = X64 - means[y]
    cov = within.T @ within / len(X)
    cov += 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))
    unseen = null_space(np.linalg.solve(cov, (means - X64.mean(axis=0)).T).T)[:, :2]
    angles = np.linspace(0, 2 * np.pi, 24)
    circle = (np.cos(angles)[:, None] * unseen[:, 0] + np.sin(angles)[:, None] * unseen[:, 1]).astype(np.float32)
    scores = RelativeMahalanobis().fit(X, y).score_samples(circle)
    assert np.ptp(scores) <= 1e-5 * np.abs(scores).max()


@pytest.fixture(scope="module")
def real_features(tmp_path_factory):
    """Default-model features of 1,000 CIFAR-10 train images (the fit), 500 CIFAR-10 test and 500 MNIST test
    images (the queries): the bench's ID and far-OOD sets, sliced."""
    from zeroshot import extract, load_backbone

    backbone = load_backbone("default", device="cpu")
    folder = tmp_path_factory.mktemp("mahalanobis_slices")
    sets = [extract(backbone, npz_slice(folder / name, *source, rows=slice(n)), cache_dir=False, progress=False)
            for name, source, n in [("train", ("cifar10", "train.npz"), 1000), ("test", ("cifar10", "test.npz"), 500),
                                    ("mnist", ("mnist_rgb", "test.npz"), 500)]]
    return sets[0].features, sets[0].labels, np.concatenate([s.features for s in sets[1:]])


@pytest.mark.slow
def test_real_features_of_the_default_model_match_the_formula(real_features):
    """Their covariance is as badly conditioned as the synthetic one. The code before the shared regulariser was off
    by up to ~1 on relative scores between -35 and 9 (unequal ridges), its two float32 whitenings alone by ~4e-3."""
    X, y, queries = real_features
    expected, expected_relative = formula(X, y, queries)
    np.testing.assert_allclose(RelativeMahalanobis().fit(X, y).score_samples(queries), expected_relative,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Mahalanobis().fit(X, y).score_samples(queries), expected, rtol=2e-5)
