"""OOD metrics (checked against scikit-learn and the spec's tie rules) and detectors on synthetic features:
direct NumPy equivalences, the sklearn protocol, bad input, shrinkage, save/load with the fingerprint check."""
import numpy as np
import pytest
import sklearn.metrics as skm
from PIL import Image
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from scipy.special import logsumexp
from sklearn.base import clone

from conftest import unit_rows
from zeroshot.heads import CLIPN, HEADS, KNN, MCM, Energy, Mahalanobis, MaxLogit, RelativeMahalanobis, load_head
from zeroshot.ood_metrics import (auroc, average_precision, evaluate_detectors, fpr_at_tpr, markdown_table,
                                  ood_metrics, plot_roc, plot_score_histograms, roc_curve, threshold_at_tpr)

D, C = 16, 4


# --- metrics -------------------------------------------------------------------------------------------------

def _scores(rng, tied: bool):
    s_id, s_ood = rng.normal(1.0, 1.0, 700), rng.normal(0.0, 1.0, 400)
    return (np.round(s_id), np.round(s_ood)) if tied else (s_id, s_ood)


@pytest.mark.parametrize("tied", [False, True])
def test_auroc_and_aupr_equal_sklearn(rng, tied):
    s_id, s_ood = _scores(rng, tied)
    y, s = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood]
    m = ood_metrics(s_id, s_ood)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(skm.average_precision_score(1 - y, -s), abs=1e-12)
    assert (m["n_in"], m["n_out"]) == (700, 400)
    assert 0.6 < m["auroc"] < 0.9 and m["aupr_in"] != m["aupr_out"]


@pytest.mark.parametrize("tied", [False, True])
def test_ood_metrics_sort_once_and_equal_the_metrics_computed_one_by_one(rng, tied, monkeypatch):
    s_id, s_ood = _scores(rng, tied)
    separate = {"auroc": auroc(s_id, s_ood), "fpr95": fpr_at_tpr(s_id, s_ood),
                "aupr_in": average_precision(s_id, s_ood), "aupr_out": average_precision(-s_ood, -s_id)}
    sorts = []
    real_argsort = np.argsort
    monkeypatch.setattr(np, "argsort", lambda *a, **k: sorts.append(1) or real_argsort(*a, **k))
    together = ood_metrics(s_id, s_ood)
    assert len(sorts) == 1
    for name, value in separate.items():
        assert together[name] == pytest.approx(value, abs=1e-12, rel=0)


@pytest.mark.parametrize("tied", [False, True])
def test_fpr95_is_the_first_roc_point_reaching_95_tpr(rng, tied):
    s_id, s_ood = _scores(rng, tied)
    fpr, tpr, _ = skm.roc_curve(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood],
                                drop_intermediate=False)
    assert fpr_at_tpr(s_id, s_ood) == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
    ours = roc_curve(s_id, s_ood)
    np.testing.assert_allclose(ours[0], fpr, atol=1e-12)
    np.testing.assert_allclose(ours[1], tpr, atol=1e-12)


def test_hand_made_tie_case_gives_half_credit():
    assert auroc([1, 1, 0], [1, 0]) == pytest.approx((0.5 + 1 + 0.5 + 1 + 0 + 0.5) / 6)
    # TPR reaches 0.95 only at threshold 0, where both OOD scores are accepted (ties count on both sides)
    assert fpr_at_tpr([1, 1, 0], [1, 0]) == 1.0


def test_identical_and_separated_distributions(rng):
    same = ood_metrics(rng.normal(size=5000), rng.normal(size=5000))
    assert same["auroc"] == pytest.approx(0.5, abs=0.02)
    assert same["fpr95"] == pytest.approx(0.95, abs=0.02)
    apart = ood_metrics(rng.uniform(2, 3, 100), rng.uniform(0, 1, 100))
    assert (apart["auroc"], apart["fpr95"], apart["aupr_in"], apart["aupr_out"]) == (1.0, 0.0, 1.0, 1.0)


def test_threshold_at_tpr_keeps_the_asked_share_of_id(rng):
    s = np.round(rng.normal(size=999), 1)  # many ties
    for tpr in (0.5, 0.9, 0.95, 1.0):
        tau = threshold_at_tpr(s, tpr)
        assert (s >= tau).mean() >= tpr
        assert (s > tau).mean() < tpr  # the next larger threshold would accept too few
    assert threshold_at_tpr([3.0, 1.0, 2.0], 1.0) == 1.0


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, np.nan], [np.inf, 0.0]])
def test_metrics_reject_bad_scores(bad):
    with pytest.raises(ValueError, match="score_id"):
        ood_metrics(bad, [0.0, 1.0])


def test_average_precision_of_perfect_ranking_is_one():
    assert average_precision([3, 2], [1, 0]) == 1.0
    assert average_precision([0], [1, 2]) == pytest.approx(1 / 3)


def test_plots_and_table(tmp_path, rng, saved_figures):
    s_id, s_ood = _scores(rng, False)
    plot_roc({"a": (s_id, -s_ood), "b": (s_id, s_ood)}, tmp_path / "roc.png", "t")
    plot_score_histograms({"ID": s_id, "OOD": s_ood}, tmp_path / "hist.png", "t")
    for name in ("roc.png", "hist.png"):
        with Image.open(tmp_path / name) as img:
            assert img.size[0] > 300 and img.size[1] > 200
    roc, hist = saved_figures
    m = ood_metrics(s_id, s_ood)  # "b" is the better detector: first in the legend, with its AUROC and FPR95
    assert roc.axes[0].get_legend().get_texts()[0].get_text() == \
        f"b: AUROC {100 * m['auroc']:.1f}, FPR95 {100 * m['fpr95']:.1f}"
    threshold = threshold_at_tpr(s_id, 0.95)
    legend = [t.get_text() for t in hist.legends[0].get_texts()]
    assert f"OOD, n=400: {100 * (s_ood >= threshold).mean():.1f} % kept" in legend
    assert "threshold keeping 95 % of ID (FPR95 rule)" in legend and "ID, n=700: 95.0 % kept" in legend
    assert any(list(line.get_xdata()) == [threshold] * 2 for line in hist.axes[0].get_lines())
    assert [p.get_fill() for p in hist.axes[0].patches] == [True, False]  # OOD as an outline over filled ID
    rows = [{"detector": d, "ood": o, "auroc": a, "fpr95": 0.5} for d, o, a in
            [("x", "set1", 0.9), ("y", "set1", 0.8), ("x", "set2", 0.6)]]
    table = markdown_table(rows)
    assert "| x | **90.00 / 50.00** | **60.00 / 50.00** |" in table and "| y | 80.00 / 50.00 | - |" in table


# --- detectors -----------------------------------------------------------------------------------------------

@pytest.fixture
def problem(rng):
    """Class embeddings W, labelled ID features near them, and OOD features in random directions (all unit rows).
    Every image feature also carries a large common component outside the text span, as CLIP features do."""
    W = unit_rows(rng.standard_normal((C, D)))
    common = rng.standard_normal((1, D))
    common = 2.0 * unit_rows(common - common @ np.linalg.pinv(W) @ W)
    y = np.repeat(np.arange(C), 100)
    X = unit_rows(common + W[y] + 0.2 * rng.standard_normal((len(y), D)))
    X_ood = unit_rows(common + unit_rows(rng.standard_normal((300, D))) + 0.2 * rng.standard_normal((300, D)))
    return W, X, y, X_ood


def _fitted(name, problem):
    W, X, y, _ = problem
    train, y_train = X[::2], y[::2]  # the odd rows are held-out ID samples
    # T = 0.1: with 4 classes, T = 1 on raw cosines barely spreads the softmax (formula tested separately)
    return {"MCM": lambda: MCM(temperature=0.1).fit(class_embeddings=W), "MaxLogit": lambda: MaxLogit().fit(class_embeddings=W),
            "Energy": lambda: Energy().fit(class_embeddings=W), "Mahalanobis": lambda: Mahalanobis().fit(train, y_train),
            "RelativeMahalanobis": lambda: RelativeMahalanobis().fit(train, y_train),
            "KNN": lambda: KNN(k=5).fit(train),
            "CLIPN": lambda: CLIPN().fit(class_embeddings=W, no_class_embeddings=unit_rows(W[::-1] + 0.5))}[name]()


DETECTORS = ["MCM", "MaxLogit", "Energy", "Mahalanobis", "RelativeMahalanobis", "KNN", "CLIPN"]


@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_scores_id_higher(name, problem, rng):
    W, X, y, X_ood = problem
    detector = _fitted(name, problem)
    s_id, s_ood = detector.score_samples(X[1::2]), detector.score_samples(X_ood)
    assert s_id.shape == (len(X) // 2,) and s_id.dtype == np.float32
    if name != "CLIPN":  # CLIPN's ranking depends on its "no" side, covered in test_clipn.py
        assert auroc(s_id, s_ood) > 0.9


@pytest.mark.parametrize("name", DETECTORS)
def test_sklearn_protocol_and_save_load(name, problem, tmp_path):
    detector = _fitted(name, problem)
    X_ood = problem[3]
    assert clone(detector).get_params() == detector.get_params()
    detector.save(tmp_path / name, fingerprint="aaaa")
    loaded = load_head(tmp_path / name, fingerprint="aaaa")
    assert type(loaded) is HEADS[name] and loaded.get_params() == detector.get_params()
    np.testing.assert_array_equal(loaded.score_samples(X_ood), detector.score_samples(X_ood))
    with pytest.raises(ValueError, match="fingerprint aaaa, not bbbb"):
        load_head(tmp_path / name, fingerprint="bbbb")


@pytest.mark.parametrize("name", DETECTORS)
def test_outlier_detector_api(name, problem, tmp_path):
    """scikit-learn's outlier API: offset_ is the kept threshold, decision_function = score_samples - offset_,
    predict is +1 / -1 by its sign; calibrate keeps the asked share of held-out ID samples; save/load keeps it."""
    X_held_out, X_ood = problem[1][1::2], problem[3]
    detector = _fitted(name, problem).calibrate(X_held_out, tpr=0.9)
    assert detector.offset_ == threshold_at_tpr(detector.score_samples(X_held_out), 0.9)
    np.testing.assert_array_equal(detector.decision_function(X_ood),
                                  detector.score_samples(X_ood) - np.float32(detector.offset_))
    predicted = detector.predict(np.vstack([X_held_out, X_ood]))
    assert predicted.dtype.kind == "i" and set(np.unique(predicted)) <= {-1, 1}
    assert (predicted[:len(X_held_out)] == 1).mean() >= 0.9
    np.testing.assert_array_equal(predicted, np.where(detector.decision_function(np.vstack([X_held_out, X_ood]))
                                                      >= 0, 1, -1))
    loaded = load_head(detector.save(tmp_path / name))
    assert loaded.offset_ == detector.offset_
    np.testing.assert_array_equal(loaded.predict(X_ood), detector.predict(X_ood))


def test_text_detectors_have_a_threshold_only_when_given_id_images(problem):
    W, X, _, X_ood = problem
    unset = MaxLogit().fit(class_embeddings=W)
    assert unset.offset_ is None
    with pytest.raises(ValueError, match=r"no threshold yet \(offset_ is None\): call calibrate"):
        unset.predict(X_ood)
    kept = MaxLogit().fit(X, class_embeddings=W)
    assert kept.offset_ == threshold_at_tpr(kept.score_samples(X), 0.95)
    clipn = _fitted("CLIPN", problem)  # no threshold: CLIPN's own threshold-free rule decides
    assert clipn.offset_ is None and set(np.unique(clipn.predict(X_ood))) <= {-1, 1}


def test_feature_detectors_keep_the_95_percent_threshold_at_fit(problem):
    """KNN scores each training row without itself (its own nearest neighbour), as a new sample would be scored;
    Mahalanobis uses the in-sample scores."""
    _, X, y, _ = problem
    train = X[::2]
    knn = KNN(k=5).fit(train)
    inner = train @ train.T
    kth_other = -np.sqrt(np.maximum(0, 2 - 2 * np.sort(inner, axis=1)[:, -6]))  # 6th largest: the 5th besides itself
    assert knn.offset_ == pytest.approx(threshold_at_tpr(kth_other.astype(np.float32), 0.95), abs=1e-6)
    assert (knn.score_samples(train) >= knn.offset_).mean() > 0.95  # with itself as a neighbour it scores better
    maha = Mahalanobis().fit(train, y[::2])
    assert maha.offset_ == threshold_at_tpr(maha.score_samples(train), 0.95)


def test_heads_saved_in_format_1_load_with_their_threshold(problem, tmp_path):
    """Before format 2, classes_ was a tensor and a detector's threshold lived beside it in head.json."""
    import json

    from safetensors.numpy import load_file, save_file

    W, X, y, X_ood = problem
    folder = Mahalanobis().fit(X, y).save(tmp_path / "old")
    meta = json.loads((folder / "head.json").read_text())
    del meta["format"]
    meta["threshold"] = meta["fitted"].pop("offset_") - 1.0
    arrays = load_file(str(folder / "head.safetensors")) | {"classes_": np.asarray(meta["fitted"].pop("classes_"))}
    save_file(arrays, str(folder / "head.safetensors"))
    (folder / "head.json").write_text(json.dumps(meta))
    loaded = load_head(folder)
    assert loaded.offset_ == meta["threshold"] and loaded.classes_.tolist() == list(range(C))
    np.testing.assert_array_equal(loaded.score_samples(X_ood), Mahalanobis().fit(X, y).score_samples(X_ood))


@pytest.mark.parametrize("name", DETECTORS)
def test_bad_features_raise_clearly(name, problem):
    detector = _fitted(name, problem)
    X = problem[3][:5].copy()
    with pytest.raises(ValueError, match="expecting 16 features"):
        detector.score_samples(X[:, :-1])
    with pytest.raises(ValueError, match="2-D"):
        detector.score_samples(X[0])
    X[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        detector.score_samples(X)


def test_unnormalised_rows_are_renormalised_with_a_warning(problem):
    detector = _fitted("Mahalanobis", problem)
    X = problem[3][:20]
    with pytest.warns(UserWarning, match="not unit length"):
        scaled = detector.score_samples(3 * X)
    np.testing.assert_allclose(scaled, detector.score_samples(X), rtol=1e-5)


def test_mcm_is_the_max_softmax_of_cosines_in_log_space(problem):
    W, _, _, X = problem
    for T in (1.0, 0.05):
        z = X.astype(np.float64) @ W.T.astype(np.float64) / T
        p = np.exp(z - logsumexp(z, axis=1, keepdims=True))
        np.testing.assert_allclose(np.exp(MCM(temperature=T).fit(class_embeddings=W).score_samples(X)), p.max(1), rtol=1e-5)


def test_mcm_refuses_one_class_whose_score_would_be_constant(problem):
    W, _, _, X = problem
    z = X @ W[:1].T  # with one class the softmax is exp(z - logsumexp(z)) = 1 for every row
    assert np.all(z.max(1) - logsumexp(z, axis=1) == 0)
    with pytest.raises(ValueError, match="at least two ID classes"):
        MCM().fit(class_embeddings=W[:1])
    MaxLogit().fit(class_embeddings=W[:1])  # single-class alternatives work
    Energy().fit(class_embeddings=W[:1])


def test_max_logit_and_energy_formulas(problem):
    W, _, _, X = problem
    cos = X.astype(np.float64) @ W.T.astype(np.float64)
    np.testing.assert_allclose(MaxLogit().fit(class_embeddings=W).score_samples(X), cos.max(1), atol=1e-6)
    np.testing.assert_allclose(Energy(temperature=2.0, logit_scale=50.0).fit(class_embeddings=W).score_samples(X),
                               2.0 * logsumexp(50.0 * cos / 2.0, axis=1), atol=1e-5)
    np.testing.assert_allclose(Energy(logit_scale=None).fit(class_embeddings=W).score_samples(X), logsumexp(cos, axis=1),
                               atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        Energy(temperature=0).fit(class_embeddings=W)


def _direct_mahalanobis(X, y, queries, eps=1e-6):
    """Tied class-centred covariance (+ the same eps ridge) inverted with np.linalg.inv, in float64."""
    X, queries = X.astype(np.float64), queries.astype(np.float64)
    means = np.stack([X[y == c].mean(0) for c in np.unique(y)])
    centred = X - means[y]
    cov = centred.T @ centred / len(X)
    cov += eps * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    diff = queries[:, None, :] - means[None]
    return np.einsum("ncd,de,nce->nc", diff, precision, diff), cov, means


def test_mahalanobis_equals_a_direct_numpy_computation(problem):
    W, X, y, X_ood = problem
    queries = np.r_[X[:50], X_ood[:50]]
    d, cov, means = _direct_mahalanobis(X, y, queries)
    np.testing.assert_allclose(Mahalanobis(shrinkage=None).fit(X, y).score_samples(queries), -d.min(1), rtol=2e-6)
    precision = np.linalg.inv(cov)
    q = queries[7].astype(np.float64)
    assert -Mahalanobis().fit(X, y).score_samples(queries[7:8])[0] == pytest.approx(
        min(scipy_mahalanobis(q, m, precision) ** 2 for m in means), rel=2e-6)


def test_mahalanobis_keeps_precision_on_clip_like_features(rng):
    """D = 384 rows dominated by one shared direction (as CLIP features are): the float32 whitening of centred
    features must still agree with float64 to ~1e-5."""
    dim, n = 384, 2000
    y = rng.integers(0, 10, n)
    centres = 0.15 * rng.standard_normal((10, dim))
    X = unit_rows(5.0 * unit_rows(rng.standard_normal((1, dim))) + centres[y] + 0.08 * rng.standard_normal((n, dim)))
    queries = unit_rows(X[:100] + 0.1 * rng.standard_normal((100, dim)))
    d, _, _ = _direct_mahalanobis(X, y, queries)
    np.testing.assert_allclose(Mahalanobis().fit(X, y).score_samples(queries), -d.min(1), rtol=2e-5)


def test_relative_mahalanobis_equals_class_minus_background_distance(problem):
    _, X, y, X_ood = problem
    d, _, _ = _direct_mahalanobis(X, y, X_ood)
    d0, _, _ = _direct_mahalanobis(X, np.zeros_like(y), X_ood)
    np.testing.assert_allclose(RelativeMahalanobis().fit(X, y).score_samples(X_ood), -(d - d0).min(1), rtol=1e-4,
                               atol=1e-3)
    with pytest.raises(ValueError, match="two ID classes"):
        RelativeMahalanobis().fit(X)


def test_mahalanobis_separates_shifted_gaussians(rng):
    A = rng.standard_normal((D, D)) / np.sqrt(D)
    means = rng.standard_normal((2, D))
    y = np.repeat([0, 1], 500)
    X = means[y] + rng.standard_normal((1000, D)) @ A
    X_ood = means[0] + 1.5 + rng.standard_normal((500, D)) @ A
    s = Mahalanobis().fit(unit_rows(X), y)  # unit rows: the features a backbone gives
    assert auroc(s.score_samples(unit_rows(X)), s.score_samples(unit_rows(X_ood))) > 0.99


def test_few_samples_get_shrinkage_and_a_warning(rng):
    y = np.repeat(np.arange(3), 4)
    X = unit_rows(rng.standard_normal((12, D)))
    with pytest.warns(UserWarning, match="shrunk"):
        scores = Mahalanobis().fit(X, y).score_samples(X)
    assert np.isfinite(scores).all()
    with pytest.raises(ValueError, match="singular"):
        Mahalanobis(shrinkage=None).fit(X, y)
    fixed = Mahalanobis(shrinkage=0.5).fit(X, y).score_samples(X)
    assert np.isfinite(fixed).all() and not np.allclose(fixed, scores)
    with pytest.raises(ValueError, match="shrinkage must be"):
        Mahalanobis(shrinkage="lots").fit(unit_rows(rng.standard_normal((5, D))))


def test_mahalanobis_label_errors(problem):
    _, X, y, _ = problem
    with pytest.raises(ValueError, match="have 1 sample each"):
        Mahalanobis().fit(X[:101], y[:101])  # class 1 has a single sample
    with pytest.raises(ValueError, match="shape"):
        Mahalanobis().fit(X, y[:-1])
    one = Mahalanobis().fit(X)  # no labels: one Gaussian over all ID features
    assert len(one.means_) == 1


def test_knn_equals_brute_force_kth_distance(rng):
    bank, queries = unit_rows(rng.standard_normal((500, D))), unit_rows(rng.standard_normal((200, D)))
    for k in (1, 7):
        expected = -np.sqrt(np.sort(2 - 2 * queries.astype(np.float64) @ bank.T, axis=1)[:, k - 1])
        np.testing.assert_allclose(KNN(k=k).fit(bank).score_samples(queries), expected, atol=1e-5)


def test_knn_default_k_fraction_and_errors(rng):
    bank = unit_rows(rng.standard_normal((3400, D)))
    assert KNN().fit(bank).k_ == 3 and KNN().fit(bank[:10]).k_ == 1
    assert KNN(fraction=0.25).fit(bank).k_ == 1  # 850 indexed samples
    with pytest.raises(ValueError, match="k must be"):
        KNN(k=11).fit(bank[:10])
    with pytest.raises(ValueError, match="fraction"):
        KNN(fraction=0).fit(bank)


def test_knn_ivf_index_probing_every_list_is_exact(rng):
    bank, queries = unit_rows(rng.standard_normal((2000, D))), unit_rows(rng.standard_normal((100, D)))
    exact = KNN(k=4).fit(bank).score_samples(queries)
    np.testing.assert_allclose(KNN(k=4, index="IVF16,Flat", nprobe=16).fit(bank).score_samples(queries), exact,
                               atol=1e-5)
    approx = KNN(k=4, index="IVF16,Flat", nprobe=1).fit(bank).score_samples(queries)
    assert (approx <= exact + 1e-5).all()  # fewer candidates can only push the k-th neighbour further away


def test_knn_fit_does_not_serialise_its_index_until_saved(rng, tmp_path, monkeypatch):
    """issue 22: the index's bytes are made on save, not on every fit (they cost 3x the add at 100k rows)."""
    import faiss

    calls = []
    serialize = faiss.serialize_index
    monkeypatch.setattr(faiss, "serialize_index", lambda index: calls.append(1) or serialize(index))
    bank, queries = unit_rows(rng.standard_normal((500, D))), unit_rows(rng.standard_normal((50, D)))
    knn = KNN(k=3).fit(bank)
    scores = knn.score_samples(queries)
    assert calls == []
    loaded = load_head(knn.save(tmp_path / "knn"))
    assert calls == [1]
    np.testing.assert_array_equal(loaded.score_samples(queries), scores)
    assert loaded.offset_ == knn.offset_


def test_knn_finds_its_threshold_on_first_use_not_at_fit(rng, monkeypatch):
    """issue 22: a fit is the add; the leave-one-out search for offset_ runs once, when offset_ is first read
    (predict, saving), and a copy of a head that never needed it still finds it."""
    import copy

    searches = []
    search = KNN._kth_distance_score
    monkeypatch.setattr(KNN, "_kth_distance_score", lambda self, X, k: searches.append(len(X)) or search(self, X, k))
    bank, queries = unit_rows(rng.standard_normal((500, D))), unit_rows(rng.standard_normal((50, D)))
    knn = KNN(k=3).fit(bank)
    assert searches == []
    copied = copy.deepcopy(knn)
    predicted = knn.predict(queries)
    assert searches == [50, 500] and knn.offset_ == knn.offset_ and searches == [50, 500]
    assert copied.offset_ == knn.offset_ and np.array_equal(copied.predict(queries), predicted)
    assert KNN(k=10).fit(bank[:10]).offset_ is None  # k = N: no row can be scored without itself


def test_evaluate_detectors_rows(problem):
    W, X, y, X_ood = problem
    rows, scores = evaluate_detectors({"mcm": MCM().fit(class_embeddings=W), "maha": Mahalanobis().fit(X, y)}, X,
                                      {"a": X_ood, "b": X_ood[:50]})
    assert [(r["detector"], r["ood"]) for r in rows] == [("mcm", "a"), ("mcm", "b"), ("maha", "a"), ("maha", "b")]
    assert set(scores["maha"]) == {"ID", "a", "b"} and rows[3]["n_out"] == 50


@pytest.mark.parametrize("inference", ["atd", "ctw"])
def test_one_pass_scores_equal_the_old_scipy_formulas(inference, rng):
    from scipy.special import log_expit

    W, W_no = unit_rows(rng.standard_normal((5, 12))), unit_rows(rng.standard_normal((5, 12)))
    X = unit_rows(rng.standard_normal((300, 12)))
    cos = (X @ W.T).astype(np.float64)
    np.testing.assert_allclose(MCM(temperature=0.5).fit(class_embeddings=W).score_samples(X),
                               cos.max(axis=1) / 0.5 - logsumexp(cos / 0.5, axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Energy(logit_scale=40.0).fit(class_embeddings=W).score_samples(X),
                               logsumexp(40.0 * cos, axis=1), rtol=1e-5)
    yes, no = 40.0 * cos, 40.0 * (X @ W_no.T).astype(np.float64)
    log_p, z = yes - logsumexp(yes, axis=1, keepdims=True), yes - no
    old = (np.take_along_axis(z, log_p.argmax(axis=1)[:, None], axis=1)[:, 0] if inference == "ctw" else
           logsumexp(log_p + log_expit(z), axis=1) - logsumexp(log_p + log_expit(-z), axis=1))
    np.testing.assert_allclose(CLIPN(inference, 40.0).fit(class_embeddings=W, no_class_embeddings=W_no).score_samples(X), old,
                               rtol=1e-5, atol=1e-5)


def test_one_pass_checks_keep_their_errors_and_warning(rng):
    W = unit_rows(rng.standard_normal((3, 12)))
    X = unit_rows(rng.standard_normal((40, 12)))
    for detector in (MCM().fit(class_embeddings=W), Energy().fit(class_embeddings=W), MaxLogit().fit(class_embeddings=W)):
        bad = X.copy()
        bad[7, 2] = np.nan
        with pytest.raises(ValueError, match="NaN or inf in 1 rows"):
            detector.score_samples(bad)
        with pytest.raises(ValueError, match="another backbone"):
            detector.score_samples(X[:, :8])
        with pytest.warns(UserWarning, match="not unit length"):
            np.testing.assert_allclose(detector.score_samples(3 * X[:5]), detector.score_samples(X[:5]), rtol=1e-5)


def test_norms_are_checked_on_every_row_of_a_small_matrix_and_a_sample_of_a_large_one(rng, monkeypatch):
    """Below NORM_SAMPLE rows one stray row is caught; above it an unnormalised matrix is, from evenly spaced rows."""
    import zeroshot.features as features

    W = unit_rows(rng.standard_normal((3, 12)))
    detector = MaxLogit().fit(class_embeddings=W)
    X = unit_rows(rng.standard_normal((40, 12)))
    X[17] *= 2
    with pytest.warns(UserWarning, match="not unit length"):
        detector.score_samples(X)
    monkeypatch.setattr(features, "NORM_SAMPLE", 8)  # 40 rows: every 5th is checked
    with pytest.warns(UserWarning, match="not unit length"):
        np.testing.assert_allclose(detector.score_samples(0.5 * X), detector.score_samples(unit_rows(X)), rtol=1e-5)
    X[17] /= 2
    X[15] *= 2
    with pytest.warns(UserWarning, match="not unit length"):
        detector.score_samples(X)
