"""ZeroShotClassifier on synthetic unit features: logits, probabilities, sklearn protocol, errors, save/load."""
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from conftest import unit_rows
from zeroshot.heads import HEADS, ZeroShotClassifier, load_head

C, D = 10, 64


@pytest.fixture
def problem(rng):
    """W: (C, D) unit class rows; X: unit rows close to their class row; y: the classes."""
    W = unit_rows(rng.standard_normal((C, D)))
    y = np.repeat(np.arange(C), 20)
    X = unit_rows(W[y] + 0.05 * rng.standard_normal((len(y), D)))
    return W, X, y


def test_classifies_near_class_rows_perfectly(problem):
    W, X, y = problem
    head = ZeroShotClassifier().fit(class_embeddings=W)
    np.testing.assert_array_equal(head.predict(X), y)
    assert head.score(X, y) == 1.0
    np.testing.assert_array_equal(head.classes_, np.arange(C))


def test_decision_function_is_scaled_cosine(problem):
    W, X, _ = problem
    head = ZeroShotClassifier(logit_scale=37.5).fit(class_embeddings=W)
    logits = head.decision_function(X)
    assert logits.shape == (len(X), C)
    np.testing.assert_allclose(logits, 37.5 * X.astype(np.float64) @ W.T.astype(np.float64), rtol=1e-5, atol=1e-4)


def test_default_logit_scale_is_100(problem):
    W, X, _ = problem
    head = ZeroShotClassifier().fit(class_embeddings=W)
    assert head.logit_scale == 100.0
    np.testing.assert_allclose(head.decision_function(X), 100 * X @ W.T, rtol=1e-5, atol=1e-4)


def test_fit_renormalises_class_rows(problem):
    W, X, _ = problem
    scaled = W * np.arange(1, C + 1)[:, None]
    a = ZeroShotClassifier().fit(class_embeddings=scaled)
    np.testing.assert_allclose(np.linalg.norm(a.class_embeddings_, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(a.decision_function(X), ZeroShotClassifier().fit(class_embeddings=W).decision_function(X),
                               atol=1e-4)


def test_predict_proba_is_a_softmax_consistent_with_predict(problem, rng):
    W, _, _ = problem
    X = unit_rows(rng.standard_normal((50, D)))  # ambiguous samples
    head = ZeroShotClassifier().fit(class_embeddings=W)
    proba = head.predict_proba(X)
    assert proba.shape == (50, C) and (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(proba.argmax(axis=1), head.predict(X))
    z = 100.0 * X.astype(np.float64) @ W.T.astype(np.float64)
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(proba, expected / expected.sum(axis=1, keepdims=True), atol=1e-5)


def test_logit_scale_changes_sharpness_not_predictions(problem, rng):
    W, _, _ = problem
    X = unit_rows(rng.standard_normal((50, D)))
    sharp = ZeroShotClassifier(logit_scale=100.0).fit(class_embeddings=W)
    soft = ZeroShotClassifier(logit_scale=1.0).fit(class_embeddings=W)
    np.testing.assert_array_equal(sharp.predict(X), soft.predict(X))
    assert (sharp.predict_proba(X).max(axis=1) > soft.predict_proba(X).max(axis=1)).all()
    assert soft.predict_proba(X).max() < 0.5


def test_predict_proba_is_stable_for_large_logits(problem):
    W, X, _ = problem
    proba = ZeroShotClassifier(logit_scale=1e4).fit(class_embeddings=W).predict_proba(X)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_class_names_are_kept(problem):
    W, _, _ = problem
    names = [f"class {i}" for i in range(C)]
    assert ZeroShotClassifier().fit(class_embeddings=W, class_names=names).class_names_ == names
    assert ZeroShotClassifier().fit(class_embeddings=W).class_names_ == [str(i) for i in range(C)]


def test_sklearn_clone_and_params(problem):
    W, X, y = problem
    head = ZeroShotClassifier(logit_scale=50.0).fit(class_embeddings=W)
    assert head.get_params() == {"logit_scale": 50.0}
    copy = clone(head)
    assert copy.get_params() == {"logit_scale": 50.0}
    assert not hasattr(copy, "class_embeddings_")
    assert copy.set_params(logit_scale=3.0) is copy and copy.logit_scale == 3.0
    np.testing.assert_array_equal(copy.fit(class_embeddings=W).predict(X), y)


def test_works_as_the_last_pipeline_step(problem):
    W, X, y = problem
    pipe = make_pipeline(FunctionTransformer(unit_rows), ZeroShotClassifier())
    pipe.fit(X * 3.0, y, zeroshotclassifier__class_embeddings=W)
    np.testing.assert_array_equal(pipe.predict(X * 3.0), y)
    np.testing.assert_allclose(pipe.predict_proba(X * 3.0).sum(axis=1), 1.0, atol=1e-5)
    assert pipe.score(X * 3.0, y) == 1.0


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function"])
def test_predicting_before_fit_raises_not_fitted(problem, method):
    _, X, _ = problem
    with pytest.raises(NotFittedError):
        getattr(ZeroShotClassifier(), method)(X)


def test_wrong_feature_width_mentions_another_backbone(problem):
    W, X, _ = problem
    head = ZeroShotClassifier().fit(class_embeddings=W)
    with pytest.raises(ValueError, match="another backbone"):
        head.predict(X[:, :32])


def test_nan_features_raise(problem):
    W, X, _ = problem
    X = X.copy()
    X[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ZeroShotClassifier().fit(class_embeddings=W).predict(X)


def test_one_dimensional_features_raise(problem):
    W, X, _ = problem
    with pytest.raises(ValueError, match="2-D"):
        ZeroShotClassifier().fit(class_embeddings=W).predict(X[0])


def test_class_names_length_mismatch_raises(problem):
    W, _, _ = problem
    with pytest.raises(ValueError, match="class names"):
        ZeroShotClassifier().fit(class_embeddings=W, class_names=["a", "b"])


def test_all_zero_class_row_raises(problem):
    W, _, _ = problem
    W = W.copy()
    W[4] = 0
    with pytest.raises(ValueError, match="all-zero"):
        ZeroShotClassifier().fit(class_embeddings=W)


@pytest.mark.parametrize("bad", [np.zeros((0, D), np.float32), np.ones(D, np.float32)])
def test_empty_or_flat_class_embeddings_raise(bad):
    with pytest.raises(ValueError):
        ZeroShotClassifier().fit(class_embeddings=bad)


def test_save_load_round_trip_without_pickle(problem, tmp_path):
    W, X, _ = problem
    head = ZeroShotClassifier(logit_scale=42.0).fit(class_embeddings=W, class_names=[f"c{i}" for i in range(C)])
    folder = head.save(tmp_path / "head", fingerprint="abc123")
    assert sorted(p.name for p in folder.iterdir()) == ["head.json", "head.safetensors"]
    loaded = load_head(folder, fingerprint="abc123")
    assert type(loaded) is ZeroShotClassifier and loaded.logit_scale == 42.0
    assert loaded.class_names_ == head.class_names_ and loaded.n_features_in_ == D
    assert loaded.fingerprint_ == "abc123"
    np.testing.assert_array_equal(loaded.predict(X), head.predict(X))
    np.testing.assert_array_equal(loaded.decision_function(X), head.decision_function(X))
    assert set(HEADS) >= {"ZeroShotClassifier"}


def test_load_head_refuses_another_backbone(problem, tmp_path):
    W, _, _ = problem
    ZeroShotClassifier().fit(class_embeddings=W).save(tmp_path, fingerprint="aaa")
    with pytest.raises(ValueError, match="aaa"):
        load_head(tmp_path, fingerprint="bbb")
    assert load_head(tmp_path).fingerprint_ == "aaa"


def test_save_before_fit_raises(tmp_path):
    with pytest.raises(NotFittedError):
        ZeroShotClassifier().save(tmp_path)


def _tamper(folder, edit):
    import json

    meta = json.loads((folder / "head.json").read_text())
    edit(meta)
    (folder / "head.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage,error,message", [
    (lambda f: (f / "head.json").write_text("{not json"), ValueError, "head.json is not valid JSON"),
    (lambda f: (f / "head.json").unlink(), FileNotFoundError, "head.json missing"),
    (lambda f: (f / "head.safetensors").write_bytes(b"garbage12345678"), ValueError, "head.safetensors cannot be read"),
    (lambda f: (f / "head.safetensors").unlink(), FileNotFoundError, "head.safetensors is missing"),
    (lambda f: _tamper(f, lambda m: m.pop("fitted")), ValueError, "lacks fitted"),
    (lambda f: _tamper(f, lambda m: m.pop("class")), ValueError, "lacks class"),
    (lambda f: _tamper(f, lambda m: m.update({"class": "Evil"})), ValueError, "unknown head class 'Evil'"),
    (lambda f: _tamper(f, lambda m: m["fitted"].update({"decision_function": 1})), ValueError,
     r"unexpected \['decision_function'\]"),
    (lambda f: _tamper(f, lambda m: m["params"].update({"bogus": 1})), ValueError, "params do not fit"),
    (lambda f: _tamper(f, lambda m: m.update({"format": 99})), ValueError, "head format 99"),
])
def test_a_damaged_or_foreign_saved_head_says_which_file_and_what(problem, tmp_path, damage, error, message):
    W, _, _ = problem
    folder = ZeroShotClassifier().fit(class_embeddings=W).save(tmp_path / "head")
    damage(folder)
    with pytest.raises(error, match=message):
        load_head(folder)


def test_a_head_saved_before_format_versions_still_loads(problem, tmp_path):
    W, X, _ = problem
    head = ZeroShotClassifier().fit(class_embeddings=W)
    folder = head.save(tmp_path / "head")
    _tamper(folder, lambda m: m.pop("format"))
    np.testing.assert_array_equal(load_head(folder).predict(X), head.predict(X))
