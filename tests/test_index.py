"""Index on synthetic unit features: factory strings, the auto rule, ids, tuning, recall vs exact, save/load,
fingerprint refusal, bad input; image paths of real FeatureSets."""
import json

import numpy as np
import pytest
from conftest import unit_rows

from zeroshot import FeatureSet, Index
from zeroshot.cli import main
from zeroshot.retrieval import index as index_module
from zeroshot.retrieval.index import (
    choose_factory,
    exact_search,
    image_paths,
    index_bytes,
    ivf_lists,
    knn_recall,
    parse_bytes,
    search_knob,
)

D = 32


def clustered(rng, n, clusters=20, noise=0.6):
    centres = unit_rows(rng.standard_normal((clusters, D)))
    return unit_rows(centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, D)) / np.sqrt(D))


@pytest.fixture
def data(rng):
    """3,000 clustered rows with shuffled string ids, and 200 held-out queries."""
    X = clustered(rng, 3200)
    return X[:3000], np.array([f"img-{i:05d}" for i in rng.permutation(3000)]), X[3000:]


# --- the auto rule and memory estimates ------------------------------------------------------------------------
@pytest.mark.parametrize("n, memory, expected", [
    (1_000, "2G", "Flat"),
    (200_000, "2G", "Flat"),
    (200_001, "2G", "IVF512,Flat"),
    (1_000_000, "2G", "IVF1024,Flat"),
    (1_000_000, "1.4G", "IVF1024,SQ8"),
    (1_000_000, "100M", "IVF1024,PQ64x8"),
    (10_000_000, "1G", "IVF4096,PQ96x8"),
    (10_000_000, "2G", "IVF4096,PQ128x8"),
    (100_000, "100M", "IVF256,SQ8"),  # Flat would need 146 MiB: past the budget, the rule moves on
])
def test_auto_rule(n, memory, expected):
    assert choose_factory(n, 384, memory) == expected
    assert index_bytes(expected, n, 384) <= parse_bytes(memory)


def test_auto_rule_refuses_a_budget_nothing_fits():
    with pytest.raises(ValueError, match="raise max_memory"):
        choose_factory(10_000_000, 384, "10M")


def test_memory_estimates_follow_the_table():
    assert index_bytes("Flat", 1000, 512) == 1000 * 2048
    assert index_bytes("HNSW32", 10, 384) == 10 * (4 * 384 + 8 * 32)
    assert index_bytes("IVF1024,Flat", 10, 64) == 10 * (256 + 8) + 4 * 64 * 1024
    assert index_bytes("IVF1024,PQ16x8", 10, 64) == 10 * 24 + 4 * 64 * 1024
    assert index_bytes("LSH", 10, 64) is None
    # an HNSW coarse quantizer holds its centroids as HNSW rows: 4D + 8M bytes each
    assert index_bytes("IVF1024_HNSW32,Flat", 10, 64) == 10 * (256 + 8) + 1024 * (4 * 64 + 8 * 32)
    assert index_bytes("OPQ16,IVF256_HNSW16,PQ16x8", 10, 64) == 10 * 24 + 256 * (256 + 128) + 4 * 64 * 64
    assert index_bytes("OPQ16_64,IVF256,SQ8", 10, 64) == 10 * 72 + 256 * 256 + 4 * 64 * 64


def test_helpers():
    assert parse_bytes("2G") == 2 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes(1000) == 1000
    with pytest.raises(ValueError, match="2G, 512M"):
        parse_bytes("lots")
    assert ivf_lists(1_000_000) == 1024 and ivf_lists(100_000) == 256 and ivf_lists(10_000_000) == 4096
    assert (search_knob("HNSW32"), search_knob("OPQ16,IVF64,PQ16x8"), search_knob("Flat")) == ("efSearch", "nprobe", None)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF32,Flat", "IVF32,SQ8", "IVF16,PQ8x4"])
def test_factory_strings_build_and_search(data, factory):
    X, ids, Q = data
    index = Index.build(X, ids, factory=factory, params=None if factory == "Flat" else {search_knob(factory): 8})
    assert index.factory == factory and len(index) == len(X)
    (found, scores), = index.search(Q[:1], 5)
    assert len(found) == 5 and set(found) <= set(ids) and np.all(np.diff(scores) <= 1e-6)


def test_bad_factory_string_is_a_clear_error():
    with pytest.raises(ValueError, match="faiss cannot make index 'IVF,Bogus'"):
        Index(D, "IVF,Bogus")


# --- search answers with ids, exactly for Flat ---------------------------------------------------------------------
def test_flat_equals_brute_force_and_returns_ids_not_rows(data):
    X, ids, Q = data
    index = Index.build(X, ids, factory="auto")
    assert index.factory == "Flat"
    results = index.search(Q, 10)
    expected = np.argsort(-(Q @ X.T), axis=1, kind="stable")[:, :10]
    for (found, scores), rows, q in zip(results, expected, Q):
        np.testing.assert_array_equal(found, ids[rows])
        np.testing.assert_allclose(scores, X[rows] @ q, atol=1e-5)


def test_integer_ids_and_default_ids(data):
    X, _, Q = data
    index = Index.build(X, ids=np.arange(len(X)) * 7, factory="Flat")
    (found, _), = index.search(Q[:1], 3)
    assert found.dtype == np.int64 and np.all(found % 7 == 0)
    assert Index.build(X, factory="Flat").search(X[:1], 1)[0][0][0] == 0
    np.testing.assert_array_equal(index.positions(["14", 7]), [2, 1])  # ids given as text are read as integers


def test_missing_results_are_dropped_not_mapped_to_an_id(rng):
    X = unit_rows(rng.standard_normal((400, D)))
    index = Index.build(X, factory="IVF16,Flat", params={"nprobe": 1})
    results = index.search(X[:20], 100)  # one list of ~25 rows cannot give 100 results
    assert any(len(found) < 100 for found, _ in results)
    for found, scores in results:
        assert len(found) == len(scores) and np.all(found >= 0) and np.isfinite(scores).all()
    tiny = Index.build(X[:3], factory="Flat")
    assert len(tiny.search(X[:1], 10)[0][0]) == 3


def test_add_in_steps_keeps_ids_and_paths_aligned(data, tmp_path):
    X, ids, _ = data
    index = Index(D, "Flat")
    index.add(X[:10], ids[:10])
    index.add(X[10:20], ids[10:20], paths=[tmp_path / f"{i}.jpg" for i in ids[10:20]])
    assert list(index.paths[:10]) == [""] * 10 and index.paths[15].endswith(f"{ids[15]}.jpg")
    assert index.roots == [str(tmp_path.resolve())]
    assert index.search(X[15:16], 1)[0][0][0] == ids[15]


# --- recall against exact search, and tuning ------------------------------------------------------------------
def test_recall_counts_tied_rows_as_hits(rng):
    X = unit_rows(rng.standard_normal((50, D)))
    X = np.concatenate([X, X])  # every row twice: exact top-k order among the copies is arbitrary
    Q = unit_rows(rng.standard_normal((20, D)))
    S, I = exact_search(X, Q, 5)
    assert knn_recall(X, Q, (I + 50) % 100, S[:, 4]) == 1.0  # the other copies are just as good
    assert knn_recall(X, Q, np.full_like(I, -1), S[:, 4]) == 0.0


@pytest.mark.parametrize("factory", ["HNSW16", "IVF64,Flat"])
def test_tuning_reaches_the_target_recall_on_held_out_queries(data, factory):
    X, _, Q = data
    index = Index.build(X, factory=factory, target_recall=0.9)
    knob = search_knob(factory)
    assert index.tuned_recall >= 0.91 and knob in index.params
    rows = index.ids[index.search_positions(Q, 10)[1]]  # default ids are the rows of X
    assert knn_recall(X, Q, rows, exact_search(X, Q, 10)[0][:, 9]) >= 0.88  # other queries: about the target
    fast = Index.build(X, factory=factory, params={knob: 1})
    assert knn_recall(X, Q, fast.ids[fast.search_positions(Q, 10)[1]], exact_search(X, Q, 10)[0][:, 9]) < 0.88


def test_unreachable_target_warns(data):
    X, _, _ = data
    with pytest.warns(UserWarning, match="below the target"):
        Index.build(X, factory="IVF16,PQ4x4", target_recall=0.99)


def test_tuning_stops_where_recall_levels_off(data):
    """Coarse 4-byte codes cap recall far below the target: scanning every list would only slow queries."""
    X, _, Q = data
    with pytest.warns(UserWarning, match="below the target"):
        index = Index.build(X, factory="IVF64,PQ4x4", target_recall=0.99)
    assert index.params["nprobe"] < 64
    everything = Index.build(X, factory="IVF64,PQ4x4", params={"nprobe": 64})
    exact = exact_search(X, Q, 10)[0][:, 9]
    capped = knn_recall(X, Q, everything.search_positions(Q, 10)[1], exact)
    rows = index.ids[index.search_positions(Q, 10)[1]]  # default ids are the rows of X
    assert knn_recall(X, Q, rows, exact) >= capped - 0.02


# --- persistence and fingerprints ------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF32,Flat"])
def test_save_load_round_trip_is_identical(data, tmp_path, factory):
    X, ids, Q = data
    index = Index.build(X, ids, factory=factory, fingerprint="fp-a", target_recall=0.9)
    loaded = Index.load(index.save(tmp_path / "idx"), fingerprint="fp-a")
    for (a_ids, a_scores), (b_ids, b_scores) in zip(index.search(Q, 10), loaded.search(Q, 10)):
        np.testing.assert_array_equal(a_ids, b_ids)
        np.testing.assert_array_equal(a_scores, b_scores)
    assert loaded.params == index.params and loaded.factory == factory
    np.testing.assert_allclose(loaded.vectors(ids[:3]), index.vectors(ids[:3]))
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["fingerprint"] == "fp-a" and manifest["metric"] == "inner_product" and manifest["n"] == len(X)
    if factory.startswith("IVF"):
        mapped = Index.load(tmp_path / "idx", mmap=True)
        np.testing.assert_array_equal(mapped.search(Q, 5)[0][0], index.search(Q, 5)[0][0])


def test_mismatched_fingerprint_is_refused(data, tmp_path):
    X, ids, Q = data
    index = Index.build(FeatureSet(X, np.full(len(X), -1), ids, {"fingerprint": "fp-a", "backbone": "modelA"}))
    index.save(tmp_path / "idx")
    with pytest.raises(ValueError, match=r"backbone 'modelA' \(fingerprint fp-a\), not fp-b"):
        Index.load(tmp_path / "idx", fingerprint="fp-b")
    with pytest.raises(ValueError, match="rebuild the index"):
        index.search(Q, 5, fingerprint="fp-b")
    with pytest.raises(ValueError, match="fp-b"):
        index.search(FeatureSet(Q, np.full(len(Q), -1), np.arange(len(Q)), {"fingerprint": "fp-b"}), 5)
    assert len(index.search(Q, 5, fingerprint="fp-a")) == len(Q)


def test_load_refuses_changed_ids(data, tmp_path):
    X, ids, _ = data
    Index.build(X, ids, factory="Flat").save(tmp_path / "idx")
    files = json.loads((tmp_path / "idx" / "index.json").read_text())["files"]
    np.save(tmp_path / "idx" / files["ids"], ids[::-1])
    with pytest.raises(ValueError, match="ids.npy does not match"):
        Index.load(tmp_path / "idx")
    with pytest.raises(FileNotFoundError, match="index build"):
        Index.load(tmp_path / "nothing")


# --- bad input --------------------------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors(data):
    X, ids, Q = data
    index = Index.build(X, ids, factory="Flat")
    with pytest.raises(ValueError, match="expecting 32 features"):
        index.search(np.ones((2, 7), np.float32))
    bad = Q[:3].copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.search(bad)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(Q, 0)
    with pytest.raises(ValueError, match="all-zero"):
        index.search(np.zeros((1, D), np.float32))
    with pytest.raises(ValueError, match="unique"):
        index.add(X[:2], ids[:2])
    with pytest.raises(ValueError, match="3 rows but 2 ids"):
        Index(D).add(X[:3], ids[:2])
    with pytest.raises(ValueError, match="must be trained"):
        Index(D, "IVF8,Flat").add(X[:3], ids[:3])
    with pytest.raises(ValueError, match="no search parameter 'nprobe'"):
        index.set_params(nprobe=4)
    with pytest.raises(KeyError, match="not in the index"):
        index.positions(["nope"])


def test_rows_off_unit_length_are_normalised_with_a_warning(data):
    X, ids, Q = data
    index = Index.build(X, ids, factory="Flat")
    with pytest.warns(UserWarning, match="not unit length"):
        scaled = index.search(Q[:2] * 3, 5)
    for (a, sa), (b, sb) in zip(scaled, index.search(Q[:2], 5)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(sa, sb, atol=1e-6)


# --- image paths from FeatureSet provenance -------------------------------------------------------------------
def test_image_paths_follow_the_dataset_kind(tmp_path):
    X = np.eye(3, D, dtype=np.float32)
    labels = np.full(3, -1)

    def paths(kind, location, ids):
        return image_paths(FeatureSet(X, labels, np.array(ids), {"dataset": {"kind": kind, "location": location}}))

    assert list(paths("folder", "/data/imgs", ["a/1.jpg", "b/2.jpg", "3.png"])) == [
        "/data/imgs/a/1.jpg", "/data/imgs/b/2.jpg", "/data/imgs/3.png"]
    assert paths("filelist", "/data/list.csv", ["x.jpg", "sub/y.jpg", "/abs/z.jpg"])[2] == "/abs/z.jpg"
    assert paths("filelist", "/data/list.csv", ["x.jpg", "sub/y.jpg", "/abs/z.jpg"])[1] == "/data/sub/y.jpg"
    assert paths("npz", "/data/a.npz", ["0", "1", "2"]) is None


# --- building chunk by chunk, from memory-mapped features -----------------------------------------------------
def same_index(a: Index, b: Index, queries: np.ndarray) -> None:
    """Same faiss bytes, ids, tuned parameters and answers."""
    import faiss

    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.params == b.params and a.tuned_recall == b.tuned_recall
    np.testing.assert_array_equal(faiss.serialize_index(a.faiss_index), faiss.serialize_index(b.faiss_index))
    for (ids_a, scores_a), (ids_b, scores_b) in zip(a.search(queries, 10), b.search(queries, 10)):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(scores_a, scores_b)


@pytest.fixture
def saved(data, tmp_path):
    """The data as a saved FeatureSet, loaded back memory-mapped as build reads it."""
    X, ids, _ = data
    FeatureSet(X, np.full(len(X), -1), ids, {"fingerprint": "fp-a"}).save(tmp_path / "fs")
    return FeatureSet.load(tmp_path / "fs")


@pytest.mark.parametrize("factory", ["IVF32,Flat", "Flat", "IVF16,SQ8"])
def test_chunked_build_from_a_memory_map_equals_the_in_memory_build(data, saved, monkeypatch, factory):
    X, ids, Q = data
    whole = Index.build(X, ids, factory=factory, target_recall=0.9, fingerprint="fp-a")
    monkeypatch.setattr(index_module, "CHUNK_ROWS", 700)  # 5 chunks, the 300 held-out rows spread over them
    assert isinstance(saved.features, np.memmap)
    same_index(whole, Index.build(saved, factory=factory, target_recall=0.9), Q)
    same_index(whole, Index.build(X, ids, factory=factory, target_recall=0.9), Q)


def test_no_step_holds_all_rows_at_once(data, saved, monkeypatch):
    """Every array normalised while building is a chunk, the training sample or the held-out queries, never X,
    and a memory-mapped X is read through maps of one chunk each (their pages leave with them)."""
    import faiss

    monkeypatch.setattr(index_module, "CHUNK_ROWS", 500)
    S, _ = exact_search(saved.features, data[2], 10)  # chunk by chunk equals one brute-force pass
    np.testing.assert_allclose(S, faiss.knn(data[2], data[0], 10, metric=faiss.METRIC_INNER_PRODUCT)[0], atol=1e-6)
    sizes, windows = [], []
    real_unit_rows, real_window = index_module.unit_rows, index_module._window
    monkeypatch.setattr(index_module, "unit_rows", lambda X, **kw: sizes.append(len(X)) or real_unit_rows(X, **kw))
    monkeypatch.setattr(index_module, "_window", lambda X, a, b: windows.append(real_window(X, a, b)) or windows[-1])
    index = Index.build(saved, factory="IVF16,Flat", target_recall=0.9)
    assert len(index) == len(saved) and max(sizes) <= 40 * 16
    assert max(map(len, windows)) == 500 and all(isinstance(w, np.memmap) and w.base is not None for w in windows)


def test_a_bad_row_in_a_later_chunk_is_found(data, monkeypatch):
    X, ids, _ = data
    X = X.copy()
    X[2500, 3] = np.inf
    monkeypatch.setattr(index_module, "CHUNK_ROWS", 1000)
    with pytest.raises(ValueError, match="NaN or inf in 1 rows"):
        Index.build(X, ids, factory="Flat")
    with pytest.raises(ValueError, match="ids must be unique; some are repeated"):
        Index.build(data[0], np.r_[ids[:-1], ids[:1]], factory="Flat")


# --- appending FeatureSets -------------------------------------------------------------------------------------
def feature_set(X, ids, folder, fingerprint="fp-a"):
    return FeatureSet(X, np.full(len(X), -1), np.asarray(ids), {"fingerprint": fingerprint, "backbone": "modelA",
                                                                 "dataset": {"kind": "folder", "location": folder}})


def test_add_features_appends_rows_ids_and_paths_with_the_trained_quantizer(data, tmp_path):
    X, ids, Q = data
    first = feature_set(X[:2000], ids[:2000], str(tmp_path / "a"))
    index = Index.build(first, factory="IVF16,Flat", params={"nprobe": 16})
    centroids = index.faiss_index.quantizer.reconstruct_n(0, 16)
    index.add_features(feature_set(X[2000:], ids[2000:], str(tmp_path / "b")))
    np.testing.assert_array_equal(index.faiss_index.quantizer.reconstruct_n(0, 16), centroids)
    assert len(index) == 3000 and list(index.ids) == list(ids)
    assert index.paths[2500] == str(tmp_path / "b" / ids[2500]) and len(index.roots) == 2
    whole = Index.build(X, ids, factory="Flat")
    assert [list(f) for f, _ in index.search(Q, 5)] == [list(f) for f, _ in whole.search(Q, 5)]  # nprobe = all
    np.testing.assert_allclose(index.vectors(ids[2500:2502]), X[2500:2502], atol=1e-6)
    with pytest.raises(ValueError, match="2 are already in the index"):
        index.add_features(feature_set(X[:2], ids[:2], str(tmp_path)))
    with pytest.raises(ValueError, match=r"backbone 'modelA' \(fingerprint fp-a\), not fp-b"):
        index.add_features(feature_set(X[:2], ["new1", "new2"], str(tmp_path), "fp-b"))
    with pytest.raises(ValueError, match="expecting 32 features"):
        index.add_features(feature_set(np.ones((2, 7), np.float32), ["n1", "n2"], str(tmp_path)))


def test_cli_index_add(data, tmp_path, capsys):
    X, ids, Q = data
    feature_set(X[:2000], ids[:2000], str(tmp_path / "a")).save(tmp_path / "first")
    feature_set(X[2000:], ids[2000:], str(tmp_path / "b")).save(tmp_path / "second")
    feature_set(X[:5], ids[:5], str(tmp_path / "a")).save(tmp_path / "repeat")
    feature_set(X[:5], [f"x{i}" for i in range(5)], str(tmp_path / "a"), "fp-b").save(tmp_path / "other")
    main(["index", "build", str(tmp_path / "first"), "--output", str(tmp_path / "idx"), "--index", "IVF16,Flat",
          "--nprobe", "16"])
    before = set((tmp_path / "idx").iterdir())
    main(["index", "add", str(tmp_path / "idx"), str(tmp_path / "second")])
    assert '"added": 1000' in capsys.readouterr().out
    index = Index.load(tmp_path / "idx")
    assert len(index) == 3000 and index.paths[-1] == str(tmp_path / "b" / ids[-1]) and index.params == {"nprobe": 16}
    assert not before & set((tmp_path / "idx").iterdir()) - {tmp_path / "idx" / n for n in ("index.json", ".lock")}
    kept = {p.name for p in (tmp_path / "idx").iterdir()} - {".lock"}  # .lock: index add's lock
    assert len(kept) == 4  # index, ids, paths, manifest: the old files are gone
    for argv, message in [
        (["repeat"], "5 are already in the index"),
        (["other"], "not fp-b"),
        (["missing"], "no feature set in"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["index", "add", str(tmp_path / "idx"), str(tmp_path / argv[0])])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as exit_info:
        main(["index", "add", str(tmp_path / "nothing"), str(tmp_path / "second")])
    assert exit_info.value.code == 2 and "index build" in capsys.readouterr().err
    assert len(Index.load(tmp_path / "idx")) == 3000  # failed adds left the saved index as it was


def test_two_index_adds_at_once_both_land(data, tmp_path):
    import subprocess
    import sys
    import time

    X, ids, _ = data
    feature_set(X[:2000], ids[:2000], str(tmp_path / "a")).save(tmp_path / "first")
    feature_set(X[2000:2500], ids[2000:2500], str(tmp_path / "b")).save(tmp_path / "left")
    feature_set(X[2500:], ids[2500:], str(tmp_path / "c")).save(tmp_path / "right")
    main(["index", "build", str(tmp_path / "first"), "--output", str(tmp_path / "idx"), "--index", "IVF16,Flat",
          "--nprobe", "16"])
    from zeroshot.cache import entry_lock

    with entry_lock(tmp_path / "idx"):  # as if a third add were running: both must wait for it
        procs = [subprocess.Popen([sys.executable, "-m", "zeroshot", "index", "add", str(tmp_path / "idx"),
                                   str(tmp_path / part)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for part in ("left", "right")]
        time.sleep(3)
        assert all(proc.poll() is None for proc in procs), "an index add did not wait for the index's lock"
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    index = Index.load(tmp_path / "idx")
    assert len(index) == 3000 and set(index.ids.tolist()) == set(np.asarray(ids).tolist())


# --- a saved index moves with its images; captions --------------------------------------------------------------
def test_a_saved_index_moves_with_its_images(data, tmp_path):
    X, ids, _ = data
    project = tmp_path / "project"
    paths = [project / "images" / ("a" if i % 2 else "b") / f"{name}.jpg" for i, name in enumerate(ids[:20])]
    index = Index(D, "Flat").add(X[:20], ids[:20], paths=paths)
    index.save(project / "idx")
    manifest = json.loads((project / "idx" / "index.json").read_text())
    stored = np.load(project / "idx" / manifest["files"]["paths"])
    assert manifest["base"]["relative"] == "../images" and manifest["roots"] == ["."]
    assert stored[1] == f"a/{ids[1]}.jpg" and not any(str(tmp_path) in p for p in stored)
    (project / "images").mkdir()
    (project / "idx").rename(project / "moved-idx")  # the index moved and its images are beside it: relative
    assert list(Index.load(project / "moved-idx").paths) == [str(p) for p in paths]
    project.rename(tmp_path / "elsewhere")
    moved = Index.load(tmp_path / "elsewhere" / "moved-idx")
    assert moved.paths[1] == str(tmp_path / "elsewhere" / "images" / "a" / f"{ids[1]}.jpg")
    assert moved.roots == [str(tmp_path / "elsewhere" / "images")]
    (tmp_path / "elsewhere" / "moved-idx").rename(tmp_path / "idx")  # the index alone: the folder it was saved from
    assert Index.load(tmp_path / "idx").paths[1] == str(paths[1])


def test_a_format_1_index_with_absolute_paths_still_loads(data, tmp_path):
    X, ids, _ = data
    paths = [tmp_path / "images" / f"{name}.jpg" for name in ids[:5]]
    Index(D, "Flat").add(X[:5], ids[:5], paths=paths).save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    np.save(tmp_path / "idx" / manifest["files"]["paths"], np.array([str(p) for p in paths]))
    del manifest["base"], manifest["files"]["captions"], manifest["files"]["caption_features"]
    manifest.update(version=1, roots=[str(tmp_path / "images")])  # as format 1 wrote them: absolute
    (tmp_path / "idx" / "index.json").write_text(json.dumps(manifest))
    old = Index.load(tmp_path / "idx")
    assert list(old.paths) == [str(p) for p in paths] and old.roots == [str(tmp_path / "images")]


def test_captions_are_saved_grouped_by_image(data, tmp_path, rng):
    X, ids, _ = data
    index = Index.build(X[:50], ids[:50], factory="Flat")
    owners = [ids[7], ids[3], ids[7]]
    features = unit_rows(rng.standard_normal((3, D))).astype(np.float32)
    index.set_captions(owners, ["first of 7", "only one of 3", "second of 7"], features)
    assert index.captions_of(3) == ["only one of 3"] and index.captions_of(7) == ["first of 7", "second of 7"]
    assert index.captions_of(0) == []
    loaded = Index.load(index.save(tmp_path / "idx"))
    assert loaded.captions == index.captions and list(loaded.caption_rows) == [3, 7, 7]
    np.testing.assert_array_equal(loaded.caption_features, features[[1, 0, 2]])
    with pytest.raises(KeyError, match="nope"):
        index.set_captions(["nope"], ["x"], features[:1])
    with pytest.raises(ValueError, match="one of each per caption"):
        index.set_captions(owners, ["x"], features)


@pytest.mark.parametrize("kind", ["int", "str"])
def test_repeated_adds_keep_refusing_known_ids(rng, kind):
    """add checks new ids against the ids kept sorted across adds, for integer and string ids alike."""
    index = Index(D)
    make = (lambda a: a) if kind == "int" else (lambda a: np.char.add("img", a.astype(str)))
    for start in (30, 0, 60):  # out of order: the sorted ids are merged, not appended
        index.add(unit_rows(rng.standard_normal((30, D))), make(np.arange(start, start + 30)))
    assert len(index) == 90 and index.ids[:2].tolist() == make(np.array([30, 31])).tolist()
    with pytest.raises(ValueError, match="1 are already in the index"):
        index.add(unit_rows(rng.standard_normal((2, D))), make(np.array([95, 59])))
    index.add(unit_rows(rng.standard_normal((1, D))), make(np.array([95])))
    assert index.positions(make(np.array([95])))[0] == 90
