"""Feature-matrix validation, the FeatureSet store (memory-mapped) and the resumable ShardStore."""
import json

import numpy as np
import pytest
import scipy.sparse

from conftest import unit_rows
from zeroshot.features import MANIFEST, FeatureSet, ShardStore, check_features

DIM = 8


def _feature_set(rng, n=12) -> FeatureSet:
    return FeatureSet(unit_rows(rng.standard_normal((n, DIM))), rng.integers(-1, 3, n),
                      np.array([f"img_{i:03d}.jpg" for i in range(n)]),
                      {"fingerprint": "fp-a", "classes": ["a", "b", "c"], "dataset": {"root": "x", "n": n},
                       "failed": {"bad.jpg": "cannot identify image"}})


def _header(fingerprint="fp-a", dataset=None) -> dict:
    return {"fingerprint": fingerprint, "dataset": dataset or {"root": "/data/x", "n": 10}, "dim": DIM}


# ---- check_features --------------------------------------------------------------------------------------------

def test_check_features_rejects_1d():
    with pytest.raises(ValueError, match="2-D"):
        check_features(np.zeros(DIM, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_features_rejects_non_finite_and_counts_rows(rng, bad):
    X = rng.standard_normal((10, DIM)).astype(np.float32)
    X[2, 1] = bad
    X[7, 0] = bad
    X[7, 3] = bad
    with pytest.raises(ValueError, match=r"\b2 rows"):
        check_features(X)


def test_check_features_converts_integers_and_refuses_what_is_not_a_dense_real_matrix():
    X = check_features(np.ones((3, DIM), dtype=np.int64))
    assert X.dtype == np.float32 and (X == 1).all()
    with pytest.raises(ValueError, match="Complex data not supported"):
        check_features(np.ones((3, DIM), dtype=np.complex64))
    with pytest.raises(TypeError, match="sparse input is not supported"):
        check_features(scipy.sparse.csr_matrix(np.ones((3, DIM))))
    with pytest.raises(ValueError, match=r"0 feature\(s\)"):
        check_features(np.ones((3, 0)))
    with pytest.raises(ValueError, match="Reshape your data"):
        check_features(np.ones(DIM))


def test_check_features_rejects_wrong_width(rng):
    with pytest.raises(ValueError, match="another backbone"):
        check_features(rng.standard_normal((3, DIM)), dim=DIM + 1)


def test_check_features_returns_float32(rng):
    X = rng.standard_normal((5, DIM))
    out = check_features(X, dim=DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, X, rtol=1e-6)
    X32 = X.astype(np.float32)
    assert check_features(X32) is X32  # no copy when already float32


def test_check_features_accepts_lists():
    assert check_features([[0.0, 1.0], [1.0, 0.0]], dim=2).shape == (2, 2)


# ---- FeatureSet ------------------------------------------------------------------------------------------------

def test_feature_set_round_trip_is_memory_mapped(rng, tmp_path):
    fs = _feature_set(rng)
    folder = fs.save(tmp_path / "set")
    loaded = FeatureSet.load(folder, fingerprint="fp-a")
    assert isinstance(loaded.features, np.memmap)
    assert loaded.features.dtype == np.float32
    np.testing.assert_array_equal(loaded.features, fs.features)
    np.testing.assert_array_equal(loaded.labels, fs.labels)
    assert loaded.ids.tolist() == fs.ids.tolist()
    assert loaded.meta == fs.meta
    assert loaded.fingerprint == "fp-a" and loaded.classes == ["a", "b", "c"]
    assert loaded.failed == {"bad.jpg": "cannot identify image"}
    assert len(loaded) == 12


def test_feature_set_load_without_mmap(rng, tmp_path):
    fs = _feature_set(rng)
    loaded = FeatureSet.load(fs.save(tmp_path), mmap=False)
    assert not isinstance(loaded.features, np.memmap)
    np.testing.assert_array_equal(loaded.features, fs.features)


def test_feature_set_subset(rng):
    fs = _feature_set(rng)
    sub = fs.subset([5, 1])
    np.testing.assert_array_equal(sub.features, fs.features[[5, 1]])
    assert sub.ids.tolist() == ["img_005.jpg", "img_001.jpg"] and sub.labels.tolist() == fs.labels[[5, 1]].tolist()


def test_feature_set_refuses_another_fingerprint(rng, tmp_path):
    folder = _feature_set(rng).save(tmp_path)
    with pytest.raises(ValueError, match="fp-b"):
        FeatureSet.load(folder, fingerprint="fp-b")


def test_feature_set_refuses_an_unfinished_store(tmp_path):
    ShardStore(tmp_path, _header())
    with pytest.raises(ValueError, match="unfinished"):
        FeatureSet.load(tmp_path)


def test_feature_set_load_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        FeatureSet.load(tmp_path / "nothing")


@pytest.mark.parametrize("n_labels, n_ids", [(4, 5), (5, 4)])
def test_feature_set_mismatched_lengths_raise(n_labels, n_ids):
    with pytest.raises(ValueError, match="length"):
        FeatureSet(np.zeros((5, DIM), np.float32), np.zeros(n_labels, int), np.array(["x"] * n_ids))


# ---- ShardStore ------------------------------------------------------------------------------------------------

def _write_two_shards(store, rng):
    f0, f1 = unit_rows(rng.standard_normal((4, DIM))), unit_rows(rng.standard_normal((5, DIM)))
    store.write_shard(1, np.array([5, 6, 7, 8, 9]), f1, {})  # out of order on purpose
    store.write_shard(0, np.array([0, 1, 3, 4]), f0, {"img_2": "broken file"})
    return f0, f1


def test_shard_store_finish_joins_shards_in_order(rng, tmp_path):
    store = ShardStore(tmp_path, _header())
    assert not store.complete and not store.done(0)
    f0, f1 = _write_two_shards(store, rng)
    assert store.done(0) and store.done(1) and not store.done(2)
    labels = np.arange(10) % 3
    ids = [f"img_{i}" for i in range(10)]
    fs = store.finish(2, labels, ids, {"fingerprint": "fp-a", "classes": ["a", "b", "c"]})
    np.testing.assert_array_equal(fs.features, np.concatenate([f0, f1]))
    assert fs.ids.tolist() == ["img_0", "img_1", "img_3", "img_4", "img_5", "img_6", "img_7", "img_8", "img_9"]
    np.testing.assert_array_equal(fs.labels, labels[[0, 1, 3, 4, 5, 6, 7, 8, 9]])
    assert fs.failed == {"img_2": "broken file"}
    assert isinstance(fs.features, np.memmap)
    assert not list(tmp_path.glob("shard-*"))
    assert json.loads((tmp_path / MANIFEST).read_text())["complete"] is True
    again = FeatureSet.load(tmp_path, fingerprint="fp-a")
    np.testing.assert_array_equal(again.features, fs.features)


def test_shard_store_reopen_resumes(rng, tmp_path):
    store = ShardStore(tmp_path, _header())
    store.write_shard(0, np.array([0, 1]), unit_rows(rng.standard_normal((2, DIM))), {})
    reopened = ShardStore(tmp_path, _header())
    assert reopened.done(0) and not reopened.done(1)


@pytest.mark.parametrize("header", [_header(fingerprint="fp-b"), _header(dataset={"root": "/data/y", "n": 10})])
def test_shard_store_refuses_another_backbone_or_dataset(tmp_path, header):
    ShardStore(tmp_path, _header())
    with pytest.raises(ValueError, match="cache"):
        ShardStore(tmp_path, header)


def test_shard_store_survives_leftover_tmp_files(rng, tmp_path):
    store = ShardStore(tmp_path, _header())
    f0 = unit_rows(rng.standard_normal((3, DIM)))
    store.write_shard(0, np.array([0, 1, 2]), f0, {})
    # a crash in the middle of writing shard 1 and its sidecar leaves truncated temporaries (per-writer names)
    (tmp_path / ".shard-00001.features.npy.4242-0badc0de.tmp").write_bytes(b"\x93NUMPY\x01\x00trunc")
    (tmp_path / ".shard-00001.json.4242-0badc0de.tmp").write_text('{"rows": 2, "fai')
    reopened = ShardStore(tmp_path, _header())
    assert reopened.done(0) and not reopened.done(1)
    f1 = unit_rows(rng.standard_normal((2, DIM)))
    reopened.write_shard(1, np.array([3, 4]), f1, {})
    fs = reopened.finish(2, np.zeros(5, int), [f"i{k}" for k in range(5)], {"fingerprint": "fp-a"})
    np.testing.assert_array_equal(fs.features, np.concatenate([f0, f1]))
    assert fs.ids.tolist() == ["i0", "i1", "i2", "i3", "i4"]


def test_shard_store_finish_with_no_rows(tmp_path):
    store = ShardStore(tmp_path, _header())
    store.write_shard(0, np.zeros(0, np.int64), np.zeros((0, DIM), np.float32), {"a": "unreadable"})
    fs = store.finish(1, np.zeros(1, int), ["a"], {"fingerprint": "fp-a"})
    assert len(fs) == 0 and fs.features.shape == (0, DIM) and fs.failed == {"a": "unreadable"}


def test_shard_store_reopens_with_tuples_in_the_header(tmp_path):
    header = _header(dataset={"root": "/data/x", "size": (224, 224)})  # JSON turns the tuple into a list
    ShardStore(tmp_path, header)
    assert not ShardStore(tmp_path, header).complete


def test_shard_store_commits_each_shard_with_a_sidecar(rng, tmp_path):
    store = ShardStore(tmp_path, _header())
    store.write_shard(0, np.array([0, 1]), unit_rows(rng.standard_normal((2, DIM))), {"x": "bad"})
    assert json.loads((tmp_path / "shard-00000.json").read_text()) == {"rows": 2, "failed": {"x": "bad"}}
    assert json.loads((tmp_path / MANIFEST).read_text())["complete"] is False  # the manifest is never rewritten
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["features missing", "rows missing", "features truncated", "sidecar missing"])
def test_shard_store_a_damaged_shard_is_not_done(rng, tmp_path, damage):
    store = ShardStore(tmp_path, _header())
    store.write_shard(0, np.array([0, 1, 2]), unit_rows(rng.standard_normal((3, DIM))), {})
    kind, how = damage.split()
    path = tmp_path / ("shard-00000.json" if kind == "sidecar" else f"shard-00000.{kind}.npy")
    if how == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-4])
    assert not store.done(0)
    assert store.finish(1, np.zeros(3, int), ["a", "b", "c"], {}) is None  # encode it again, then finish


def test_shard_store_two_writers_of_one_store_share_the_shards(rng, tmp_path):
    a, b = ShardStore(tmp_path, _header()), ShardStore(tmp_path, _header())
    f0, f1 = unit_rows(rng.standard_normal((2, DIM))), unit_rows(rng.standard_normal((3, DIM)))
    a.write_shard(0, np.array([0, 1]), f0, {})
    b.write_shard(1, np.array([2, 3, 4]), f1, {})
    assert a.done(1) and b.done(0)  # read from disk, not from each writer's memory
    b.write_shard(0, np.array([0, 1]), f0, {})  # a duplicate write of the same bytes is harmless
    fa = a.finish(2, np.zeros(5, int), list("abcde"), {"fingerprint": "fp-a"})
    fb = b.finish(2, np.zeros(5, int), list("abcde"), {"fingerprint": "fp-a"})  # shards gone: the complete set
    np.testing.assert_array_equal(fa.features, np.concatenate([f0, f1]))
    np.testing.assert_array_equal(fb.features, fa.features)


@pytest.mark.parametrize("damage", ["missing", "truncated", "wrong shape"])
def test_shard_store_a_damaged_complete_set_is_encoded_again(rng, tmp_path, damage):
    store = ShardStore(tmp_path, _header())
    f0 = unit_rows(rng.standard_normal((3, DIM)))
    store.write_shard(0, np.array([0, 1, 2]), f0, {})
    store.finish(1, np.zeros(3, int), ["a", "b", "c"], {"fingerprint": "fp-a"})
    path = tmp_path / "features.npy"
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
    else:
        np.save(path, f0[:2])
    reopened = ShardStore(tmp_path, _header())
    assert reopened.complete_set() is None and not reopened.complete and not reopened.done(0)
    reopened.write_shard(0, np.array([0, 1, 2]), f0, {})
    fs = reopened.finish(1, np.zeros(3, int), ["a", "b", "c"], {"fingerprint": "fp-a"})
    np.testing.assert_array_equal(fs.features, f0)


def test_unit_rows_checks_and_normalises_in_one_pass(rng):
    """The squared norms find NaN and inf too; rows so large that their squares overflow float32 still normalise."""
    import warnings

    from zeroshot.features import unit_rows as checked_unit_rows

    X = rng.standard_normal((6, DIM)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not unit length": these rows are not
        np.testing.assert_allclose(np.linalg.norm(checked_unit_rows(X), axis=1), 1, rtol=1e-6)
        huge = X * np.float32(1e30)
        np.testing.assert_allclose(checked_unit_rows(huge), checked_unit_rows(X), rtol=1e-5)
    for bad in (np.nan, np.inf):
        X_bad = X.copy()
        X_bad[3, 5] = bad
        with pytest.raises(ValueError, match="NaN or inf in 1 rows"):
            checked_unit_rows(X_bad)
