"""Index building on Ray: the chunks encoded by Ray tasks and merged in order give the very index the local engine
builds (same faiss bytes, ids, paths and tuned parameters), from a memory-mapped FeatureSet or an array; indexes
whose parts cannot be merged are refused before any work."""
import faiss
import numpy as np
import pytest
from conftest import unit_rows

from zeroshot import FeatureSet, Index
from zeroshot.cli import main
from zeroshot.retrieval import index as index_module

D = 32


@pytest.fixture
def features(rng, tmp_path):
    """A saved (memory-mapped) FeatureSet of 3,000 clustered rows in 20 clusters, with string ids."""
    centres = unit_rows(rng.standard_normal((20, D)))
    X = unit_rows(centres[rng.integers(0, 20, 3000)] + 0.6 * rng.standard_normal((3000, D)) / np.sqrt(D))
    ids = np.array([f"img-{i:05d}" for i in rng.permutation(3000)])
    FeatureSet(X, np.full(3000, -1), ids, {"fingerprint": "fp-a"}).save(tmp_path / "fs")
    return FeatureSet.load(tmp_path / "fs")


def assert_same_index(a: Index, b: Index, queries: np.ndarray) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.params == b.params and a.tuned_recall == b.tuned_recall and len(a) == len(b)
    np.testing.assert_array_equal(faiss.serialize_index(a.faiss_index), faiss.serialize_index(b.faiss_index))
    for (ids_a, scores_a), (ids_b, scores_b) in zip(a.search(queries, 10), b.search(queries, 10)):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(scores_a, scores_b)


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32_HNSW32,SQ8", "Flat"])
def test_ray_build_equals_local_build(ray_cluster, features, monkeypatch, factory):
    monkeypatch.setattr(index_module, "CHUNK_ROWS", 700)  # 5 chunks, so several parts are merged
    local = Index.build(features, factory=factory, target_recall=0.9)
    on_ray = Index.build(features, factory=factory, target_recall=0.9, engine="ray", address=ray_cluster,
                         num_workers=2)
    assert_same_index(local, on_ray, np.asarray(features.features[::97]))
    assert local.params or factory == "Flat"


def test_ray_build_behind_a_transform_keeps_the_order(ray_cluster, features, monkeypatch):
    """Behind OPQ the rows are rotated by a matrix product whose float rounding depends on the batch and the
    threads (Ray tasks run one thread), so a rare code may differ by one step; order and answers stay."""
    monkeypatch.setattr(index_module, "CHUNK_ROWS", 700)
    local = Index.build(features, factory="OPQ8,IVF32,SQ8", params={"nprobe": 8})
    on_ray = Index.build(features, factory="OPQ8,IVF32,SQ8", params={"nprobe": 8}, engine="ray",
                         address=ray_cluster)
    np.testing.assert_array_equal(local.ids, on_ray.ids)
    queries = np.asarray(features.features[::30])
    agree = np.mean([np.isin(a, b).mean() for (a, _), (b, _) in zip(local.search(queries, 10), on_ray.search(queries, 10))])
    assert agree >= 0.99


def test_ray_build_from_an_array_in_memory(ray_cluster, features, monkeypatch):
    monkeypatch.setattr(index_module, "CHUNK_ROWS", 1000)
    X = np.array(features.features)
    local = Index.build(X, features.ids, factory="IVF16,SQ8", params={"nprobe": 4})
    on_ray = Index.build(X, features.ids, factory="IVF16,SQ8", params={"nprobe": 4}, engine="ray",
                         address=ray_cluster)
    assert_same_index(local, on_ray, X[:50])


def test_unmergeable_index_is_refused_before_training(features):
    with pytest.raises(ValueError, match="merges IVF and Flat indexes, not HNSW16"):
        Index.build(features, factory="HNSW16", engine="ray")  # refused before Ray is even started
    with pytest.raises(ValueError, match="unknown engine 'spark'"):
        Index.build(features, factory="Flat", engine="spark")


def test_cli_builds_on_ray(ray_cluster, features, tmp_path, capsys):
    folder = str(tmp_path / "fs")
    main(["index", "build", folder, "--output", str(tmp_path / "ray"), "--index", "IVF32,Flat", "--engine", "ray",
          "--address", ray_cluster, "--num-workers", "2"])
    main(["index", "build", folder, "--output", str(tmp_path / "local"), "--index", "IVF32,Flat"])
    assert '"engine": "ray"' in capsys.readouterr().out
    assert_same_index(Index.load(tmp_path / "ray"), Index.load(tmp_path / "local"), np.asarray(features.features[:20]))
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "build", folder, "--output", str(tmp_path / "x"), "--num-workers", "2"])
    assert exit_info.value.code == 2 and "used only with --engine ray" in capsys.readouterr().err
