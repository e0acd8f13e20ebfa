"""zeroshot.generative on synthetic features: Fréchet distance against closed forms and scipy's sqrtm, its
bootstrap and small-sample diagnostics; the k-NN manifold metrics against a brute-force float64 implementation and
on mixtures with known behaviour (dropped modes, mode collapse); CLIPScore and RefCLIPScore against hand
computations; one-line input errors (spec: methods/generated_image_eval.md)."""
import itertools
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy.linalg import sqrtm

from zeroshot.generative import (bootstrap_frechet, clip_score, clip_score_summary, frechet_distance,
                                 frechet_distance_sqrtm, frechet_floor, frechet_from_stats, frechet_vs_n,
                                 gaussian_stats, knn_radii, manifold_metrics, ref_clip_score)
from zeroshot.generative.frechet import _resampled_stats


def one_line_error(call, *args, match: str, **kwargs) -> str:
    with pytest.raises(ValueError, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def random_covariance(rng, dim: int) -> np.ndarray:
    A = rng.standard_normal((dim, dim))
    return A @ A.T / dim + 0.1 * np.eye(dim)


def gaussian_pair(seed: int, n: int, dim: int, shift: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    return rng.standard_normal((n, dim)) @ mixing, rng.standard_normal((n, dim)) * 1.2 + shift


def test_package_imports_without_faiss_or_scipy():
    code = ("import sys, zeroshot.generative; "
            "assert not {'faiss', 'scipy'} & set(sys.modules), sorted({'faiss', 'scipy'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- Fréchet distance ---------------------------------------------------------------------------------------------
def test_gaussian_stats_are_float64_mean_and_unbiased_covariance():
    X = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    mu, S = gaussian_stats(X)
    assert mu.dtype == S.dtype == np.float64
    np.testing.assert_allclose(mu, X.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(S, np.cov(X.astype(np.float64), rowvar=False, ddof=1), rtol=1e-10, atol=1e-14)


def test_frechet_from_stats_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    sigma1, sigma2 = rng.uniform(0.1, 3, 20), rng.uniform(0.1, 3, 20)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((sigma1 - sigma2) ** 2)
    fd = frechet_from_stats(mu1, np.diag(sigma1 ** 2), mu2, np.diag(sigma2 ** 2))
    assert fd == pytest.approx(expected, rel=1e-10)


def test_frechet_from_stats_commuting_closed_form():
    """Covariances sharing eigenvectors: FD = ||mu1 - mu2||² + Σ (sqrt(a_i) - sqrt(b_i))²."""
    rng = np.random.default_rng(2)
    Q = np.linalg.qr(rng.standard_normal((32, 32)))[0]
    a, b = rng.uniform(0, 4, 32), rng.uniform(0, 4, 32)
    mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_from_stats(mu1, Q * a @ Q.T, mu2, Q * b @ Q.T) == pytest.approx(expected, rel=1e-9)


def test_frechet_from_stats_general_covariances_match_sqrtm_formula():
    rng = np.random.default_rng(3)
    S1, S2 = random_covariance(rng, 40), random_covariance(rng, 40)
    mu1, mu2 = rng.standard_normal(40), rng.standard_normal(40)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(S1 + S2 - 2 * sqrtm(S1 @ S2).real)
    assert frechet_from_stats(mu1, S1, mu2, S2) == pytest.approx(expected, rel=1e-6)


def test_sampled_gaussians_approach_the_fd_of_their_true_parameters():
    rng = np.random.default_rng(4)
    dim = 8
    S1, S2 = random_covariance(rng, dim), random_covariance(rng, dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    R = rng.multivariate_normal(mu1, S1, size=40_000)
    G = rng.multivariate_normal(mu2, S2, size=40_000)
    assert frechet_distance(R, G) == pytest.approx(frechet_from_stats(mu1, S1, mu2, S2), rel=0.03)


@pytest.mark.parametrize("dim", [64, 128])
def test_frechet_distance_matches_the_sqrtm_reference(dim):
    R, G = gaussian_pair(dim, 1000, dim)
    assert frechet_distance(R, G) == pytest.approx(frechet_distance_sqrtm(R, G), rel=1e-6)


def test_rank_deficient_covariances_stay_finite_and_match_sqrtm():
    R, G = gaussian_pair(5, 40, 96)  # N < D: both covariances singular
    fd = frechet_distance(R, G)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy may warn that the singular product has no exact root
        reference = frechet_distance_sqrtm(R, G)
    assert np.isfinite(fd) and fd > 0
    assert fd == pytest.approx(reference, rel=1e-6)


def test_fd_of_a_set_with_itself_is_zero_and_fd_is_symmetric():
    R, G = gaussian_pair(6, 300, 32)
    assert 0 <= frechet_distance(R, R) < 1e-10 * np.trace(gaussian_stats(R)[1])
    X = R[:20]  # rank-deficient: the stable trace keeps this at rounding level too
    assert 0 <= frechet_distance(X, X) < 1e-10 * np.trace(gaussian_stats(X)[1])
    assert frechet_distance(R, G) == pytest.approx(frechet_distance(G, R), rel=1e-10)


def test_bootstrap_weighted_sums_equal_the_materialised_resample():
    X = np.random.default_rng(7).standard_normal((200, 5)) + 3.0
    mean = X.mean(axis=0)
    mu, S = _resampled_stats(X - mean, mean, np.random.default_rng(11), np.empty_like(X))
    rows = np.random.default_rng(11).integers(0, len(X), len(X))  # the draws _resampled_stats made
    np.testing.assert_allclose(mu, X[rows].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(S, np.cov(X[rows], rowvar=False), rtol=1e-10, atol=1e-12)


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded():
    R, G = gaussian_pair(8, 400, 16)
    result = bootstrap_frechet(R, G, n_boot=60, seed=3)
    assert result["fd"] == pytest.approx(frechet_distance(R, G), rel=1e-12)
    assert result["ci_low"] < result["fd"] < result["ci_high"]
    assert (result["n_boot"], result["n_real"], result["n_generated"], result["level"]) == (60, 400, 400, 0.95)
    assert result["boot_mean"] > result["fd"]  # resamples carry duplicate rows: the small-sample bias grows
    assert bootstrap_frechet(R, G, n_boot=60, seed=3) == result
    assert bootstrap_frechet(R, G, n_boot=60, seed=4)["ci_low"] != result["ci_low"]
    narrow = bootstrap_frechet(R, G, n_boot=60, seed=3, level=0.5)
    assert result["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < result["ci_high"]


def test_frechet_vs_n_falls_with_n_on_one_distribution():
    rng = np.random.default_rng(9)
    R, G = rng.standard_normal((2000, 16)), rng.standard_normal((2000, 16))
    curve = frechet_vs_n(R, G, [50, 200, 800, 2000], seed=0)
    assert [point["n"] for point in curve] == [50, 200, 800, 2000]
    fds = [point["fd"] for point in curve]
    assert all(a > b for a, b in itertools.pairwise(fds))
    assert fds[-1] == pytest.approx(frechet_distance(R, G), rel=1e-10)  # all rows: the full sets
    assert frechet_vs_n(R, G, [50, 200], seed=0) == curve[:2]


def test_frechet_floor_is_the_fd_of_two_halves():
    rng = np.random.default_rng(10)
    R = rng.standard_normal((2001, 16))
    floor = frechet_floor(R, seed=1)
    assert floor == frechet_floor(R, seed=1) and floor != frechet_floor(R, seed=2)
    same = frechet_distance(rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16)))
    assert 0 < floor < 3 * same  # both sit at the small-sample bias of 1,000 rows a side
    assert floor < frechet_distance(R, rng.standard_normal((2001, 16)) + 0.5) / 5


def test_frechet_input_errors_are_one_line():
    X = np.zeros((10, 4))
    one_line_error(gaussian_stats, np.zeros((1, 4)), match="at least 2")
    one_line_error(frechet_distance, X, np.zeros((10, 5)), match="expecting 4 features")
    one_line_error(frechet_distance, np.zeros(10), X, match="2-D")
    one_line_error(frechet_distance, np.full((10, 4), np.nan), X, match="NaN")
    one_line_error(frechet_floor, np.zeros((3, 4)), match="at least 4")
    one_line_error(frechet_vs_n, X, X, [1, 5], match="2..10")
    one_line_error(frechet_vs_n, X, X, [20], match="2..10")
    one_line_error(bootstrap_frechet, X, X, n_boot=1, match="n_boot")
    one_line_error(frechet_from_stats, np.zeros(3), np.eye(3), np.zeros(4), np.eye(4), match=r"\(D, D\)")
    one_line_error(frechet_from_stats, np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2), match="eigenvalue")
    one_line_error(frechet_from_stats, np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2),
                   match="symmetric")


# --- k-NN manifold metrics ----------------------------------------------------------------------------------------
def brute_force(R: np.ndarray, G: np.ndarray, k_pr: int = 3, k_dc: int = 5) -> dict:
    """The four definitions over full float64 distance matrices."""
    R, G = R.astype(np.float64), G.astype(np.float64)

    def distances(A, B):
        return np.sqrt(((A[:, None, :] - B[None, :, :]) ** 2).sum(axis=-1))

    real, generated, cross = np.sort(distances(R, R), axis=1), np.sort(distances(G, G), axis=1), distances(G, R)
    return {"precision": (cross <= real[:, k_pr]).any(axis=1).mean(),
            "recall": (cross <= generated[:, k_pr, None]).any(axis=0).mean(),
            "density": (cross <= real[:, k_dc]).sum() / (k_dc * len(G)),
            "coverage": (cross.min(axis=0) <= real[:, k_dc]).mean()}


def mixture(rng, n: int, centres: np.ndarray, modes=None, spread: float = 1.0) -> np.ndarray:
    modes = np.arange(len(centres)) if modes is None else np.asarray(modes)
    picked = centres[modes[rng.integers(0, len(modes), n)]]
    return (picked + spread * rng.standard_normal(picked.shape)).astype(np.float32)


@pytest.mark.parametrize("seed,block", [(0, 7), (1, 13), (2, 64), (3, None)])
def test_manifold_metrics_match_brute_force(seed, block):
    rng = np.random.default_rng(seed)
    R = rng.standard_normal((150, 6)).astype(np.float32)
    G = (1.1 * rng.standard_normal((130, 6)) + 0.2).astype(np.float32)
    R[10:14] = R[3]  # a real row 5 times over: radius 0 at k = 3 and k = 4 of its copies
    G[5:8], G[9] = R[20], R[30]  # generated copies of real rows
    G[40:42] = G[50]
    result = manifold_metrics(R, G, block=block)
    for name, value in brute_force(R, G).items():
        assert result[name] == pytest.approx(value, abs=1e-12), name
    assert (result["n_real"], result["n_generated"], result["k_pr"], result["k_dc"]) == (150, 130, 3, 5)


def test_knn_radii_exclude_the_row_itself_even_among_duplicates():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((60, 5)).astype(np.float32)
    X[1:4] = X[0]  # four equal rows: the 3rd neighbour of each is a copy (radius 0), the 4th is not
    exact = np.sort(np.sqrt(((X[:, None].astype(np.float64) - X[None]) ** 2).sum(-1)), axis=1)
    for k in (1, 3, 4):
        np.testing.assert_allclose(knn_radii(X, k), exact[:, k], rtol=1e-5, atol=1e-6)
    assert knn_radii(X, 3)[0] == 0 and knn_radii(X, 4)[0] > 0


@pytest.mark.parametrize("k_dc", [3, 5])
def test_a_copy_of_the_real_set_counts_every_tie(k_dc):
    """G = R: each real ball holds its centre and its k neighbours, the k-th exactly on the boundary, so density is
    (k + 1) / k exactly and the other three are 1."""
    X = np.random.default_rng(2).standard_normal((300, 8)).astype(np.float32)
    nearest = np.sort(((X[:, None].astype(np.float64) - X[None]) ** 2).sum(-1), axis=1)[:, 1:k_dc + 2]
    assert (np.diff(nearest, axis=1) > 1e-4 * nearest[:, 1:]).all()  # no near-ties: float32 cannot order them
    result = manifold_metrics(X, X.copy(), k_dc=k_dc, block=50)
    assert result["density"] == pytest.approx((k_dc + 1) / k_dc, abs=1e-12)
    assert result["precision"] == result["recall"] == result["coverage"] == 1.0


def test_real_rows_repeated_past_k_have_radius_zero_and_still_hold_their_copies():
    """R: each of 60 points 5 times (radius 0 at k = 3), G: the 60 points. Every g lies in its 5 copies' k = 5 balls
    and, exactly on the boundary, in the balls of the 5 copies of each point whose nearest other point it is."""
    X = (np.random.default_rng(2).standard_normal((60, 8)) + 5).astype(np.float32)
    nearest = np.sort(((X[:, None].astype(np.float64) - X[None]) ** 2).sum(-1), axis=1)[:, 1:3]
    assert (nearest[:, 1] - nearest[:, 0] > 1e-4 * nearest[:, 1]).all()  # each point's nearest other is unique
    result = manifold_metrics(np.repeat(X, 5, axis=0), X.copy(), block=16)
    assert result["precision"] == result["recall"] == result["coverage"] == 1.0
    assert result["density"] == pytest.approx(2.0, abs=1e-12)


@pytest.fixture(scope="module")
def modes():
    """Ten well-separated mode centres in 4 dimensions (k = 3 precision and recall of one distribution fall with
    the dimension: ~0.94 here, ~0.87 in 8 dimensions at 3,000 points)."""
    return 12.0 * np.random.default_rng(6).standard_normal((10, 4))


def test_same_distribution_scores_near_ideal(modes):
    rng = np.random.default_rng(7)
    result = manifold_metrics(mixture(rng, 3000, modes), mixture(rng, 3000, modes))
    assert result["precision"] > 0.9 and result["recall"] > 0.9
    assert result["density"] == pytest.approx(1.0, abs=0.1)
    expected_coverage = 1 - 0.5 ** 5  # Naeem et al.: 1 - prod_i (N - i) / (2N - i) for k = 5, M = N
    assert result["coverage"] == pytest.approx(expected_coverage, abs=0.02)


def test_far_shifted_generator_scores_zero(modes):
    rng = np.random.default_rng(8)
    result = manifold_metrics(mixture(rng, 1000, modes), mixture(rng, 1000, modes) + 500.0)
    assert result["precision"] == result["recall"] == result["density"] == result["coverage"] == 0.0


def test_dropped_modes_lower_recall_and_coverage_not_precision(modes):
    rng = np.random.default_rng(9)
    result = manifold_metrics(mixture(rng, 3000, modes), mixture(rng, 3000, modes, modes=range(5)))
    assert result["precision"] > 0.9
    assert 0.35 < result["recall"] < 0.6 and 0.35 < result["coverage"] < 0.6


def test_mode_collapse_lowers_recall_and_coverage(modes):
    rng = np.random.default_rng(10)
    collapsed = mixture(rng, 3000, modes, modes=[0], spread=0.2)
    result = manifold_metrics(mixture(rng, 3000, modes), collapsed)
    assert result["recall"] < 0.1 and result["coverage"] < 0.1
    assert result["precision"] > 0.9  # every collapsed sample still looks real


def test_manifold_input_errors_are_one_line():
    X = np.zeros((10, 4), np.float32)
    one_line_error(manifold_metrics, X[:5], X, match="k = 5.*at least 6")
    one_line_error(manifold_metrics, X, X[:3], match="G has 3 rows")
    one_line_error(manifold_metrics, X, np.zeros((10, 3)), match="expecting 4 features")
    one_line_error(manifold_metrics, X, np.full((10, 4), np.inf), match="NaN or inf")
    one_line_error(manifold_metrics, X, X, k_pr=0, match="k_pr=0 must be a positive integer")
    one_line_error(manifold_metrics, X, X, block=0, match="block=0")
    one_line_error(knn_radii, np.zeros(10), 3, match="2-D")
    one_line_error(knn_radii, X, 2.5, match="positive integer")


# --- CLIPScore ----------------------------------------------------------------------------------------------------
def cosines(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return np.array([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(A, B)])


def test_clip_score_formula_clipping_and_scaling():
    rng = np.random.default_rng(11)
    images, texts = 3 * rng.standard_normal((50, 16)), rng.standard_normal((50, 16))
    texts[0], texts[1] = -images[0], images[1]
    cos = cosines(images, texts)
    assert (cos < 0).any()
    scores = clip_score(images, texts)
    np.testing.assert_allclose(scores, 2.5 * np.maximum(cos, 0), rtol=1e-6, atol=1e-7)
    assert scores[0] == 0 and scores[1] == pytest.approx(2.5, rel=1e-6)
    np.testing.assert_allclose(clip_score(images, texts, w=1.0) * 2.5, scores, rtol=1e-12)


def test_clip_score_summary_names_both_scalings():
    rng = np.random.default_rng(12)
    images, texts = rng.standard_normal((40, 8)), rng.standard_normal((40, 8))
    clipped = np.maximum(cosines(images, texts), 0)
    summary = clip_score_summary(images, texts)
    assert summary["n"] == 40 and summary["w"] == 2.5
    assert summary["clip_score"] == pytest.approx(2.5 * clipped.mean(), rel=1e-6)
    assert summary["clip_score_std"] == pytest.approx(2.5 * clipped.std(), rel=1e-5)
    assert summary["clip_score_x100"] == pytest.approx(100 * clipped.mean(), rel=1e-6)
    assert summary["clip_score_x100"] == pytest.approx(summary["clip_score"] * 40, rel=1e-12)


def test_ref_clip_score_against_a_hand_computation():
    rng = np.random.default_rng(13)
    images = rng.standard_normal((4, 12))
    candidates = images + 0.8 * rng.standard_normal((4, 12))
    owner = np.array([2, 0, 1, 2, 0, 3, 2])  # any order, any number per sample
    references = candidates[owner] + rng.standard_normal((len(owner), 12))
    candidates[1] = -images[1]  # CLIP-S 0: the harmonic mean is 0
    references[owner == 3] = -candidates[3]  # best reference cosine -1, clipped to 0: the harmonic mean is 0
    expected = []
    for i in range(4):
        image_term = 2.5 * max(cosines(images[i:i + 1], candidates[i:i + 1])[0], 0)
        text_term = max(max(cosines(np.repeat(candidates[i:i + 1], (owner == i).sum(), 0), references[owner == i])),
                        0)
        expected.append(0.0 if image_term + text_term == 0 else
                        2 * image_term * text_term / (image_term + text_term))
    scores = ref_clip_score(images, candidates, references, owner)
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-12)
    assert scores[1] == 0 and scores[3] == 0 and (scores[[0, 2]] > 0).all()


def test_clipscore_input_errors_are_one_line():
    X = np.ones((3, 4))
    one_line_error(clip_score, X, np.ones((2, 4)), match="give one or more pairs")
    one_line_error(clip_score_summary, np.ones((0, 4)), np.ones((0, 4)), match="0 image rows")
    one_line_error(clip_score, X, np.ones((3, 5)), match="expecting 4 features")
    one_line_error(clip_score, np.zeros((3, 4)), X, match="all-zero rows")
    one_line_error(ref_clip_score, X, X, X, [0, 1], match="3 integer sample indices")
    one_line_error(ref_clip_score, X, X, X, [0.0, 1.0, 2.0], match="integer")
    one_line_error(ref_clip_score, X, X, X, [0, 1, 3], match="outside 0..2")
    one_line_error(ref_clip_score, X, X, X, [0, 0, 1], match="1 samples have no reference")
