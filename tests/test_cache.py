"""The on-disk cache: one meaning of cache_dir, many processes on one entry, damage repaired, ls and prune."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import npz_slice, unit_rows
from zeroshot import class_embeddings, default_cache_dir, extract
from zeroshot.cache import (atomic_save_npy, list_entries, npy_intact, prune, remembered_digest, resolve_cache_dir,
                            text_path, touch_last_used)
from zeroshot.cli import main
from zeroshot.features import ShardStore
from zeroshot.prompts import encode_texts_cached

DIM = 8


# ---- what cache_dir means ------------------------------------------------------------------------------------------

def test_default_cache_dir_is_the_env_variable_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ZEROSHOT_CACHE", "~/elsewhere")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("ZEROSHOT_CACHE")
    assert default_cache_dir() == tmp_path / ".cache" / "zeroshot"


def test_resolve_cache_dir_none_path_and_false(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_cache_dir(None) == default_cache_dir()
    assert resolve_cache_dir("~/c") == tmp_path / "c"
    assert resolve_cache_dir(tmp_path / "d") == tmp_path / "d"
    assert resolve_cache_dir(False) is None


@pytest.mark.parametrize("bad", [True, ""])
def test_resolve_cache_dir_refuses_what_is_not_a_folder(bad):
    with pytest.raises(ValueError, match="no cache"):
        resolve_cache_dir(bad)


class CountingTexts:
    """A stand-in backbone whose text tower counts its calls."""

    fingerprint = "fp-text"

    def __init__(self):
        self.calls = 0

    def encode_texts(self, texts):
        self.calls += 1
        return unit_rows(np.stack([np.random.default_rng(len(t)).standard_normal(DIM) for t in texts]))


def test_class_embeddings_none_is_the_default_cache_and_false_is_none():
    backbone = CountingTexts()
    class_embeddings(backbone, ["cat", "dog"])
    class_embeddings(backbone, ["cat", "dog"], cache_dir=None)
    assert backbone.calls == 1 and list((default_cache_dir() / "fp-text" / "text").glob("*.npy"))
    class_embeddings(backbone, ["cat", "dog"], cache_dir=False)
    assert backbone.calls == 2


def test_encode_texts_cached_expands_user_and_repairs_a_damaged_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    backbone = CountingTexts()
    first = encode_texts_cached(backbone, ["a", "bb"], cache_dir="~/c")
    path = text_path(tmp_path / "c", "fp-text", ["fp-text", "texts", ["a", "bb"]])
    assert path.is_file() and not (Path.cwd() / "~").exists()
    path.write_bytes(path.read_bytes()[:-3])
    np.testing.assert_array_equal(encode_texts_cached(backbone, ["a", "bb"], cache_dir="~/c"), first)
    assert backbone.calls == 2 and npy_intact(path, (2, DIM))


# ---- writing and checking files ----------------------------------------------------------------------------------

def test_npy_intact_checks_size_and_shape(tmp_path):
    path = tmp_path / "x.npy"
    atomic_save_npy(path, np.zeros((4, 3), np.float32))
    assert npy_intact(path, (4, 3)) and npy_intact(path, (4, None)) and npy_intact(path)
    assert not npy_intact(path, (5, 3)) and not npy_intact(path, (4,)) and not npy_intact(tmp_path / "none.npy")
    path.write_bytes(path.read_bytes()[:-1])
    assert not npy_intact(path, (4, 3))


def test_atomic_write_leaves_no_temporary_behind_on_error(tmp_path):
    with pytest.raises(ValueError):
        atomic_save_npy(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object))  # pickles refused
    assert not list(tmp_path.iterdir())


# ---- ls and prune ------------------------------------------------------------------------------------------------

def _entry(cache: Path, fingerprint: str, location: str, shards: int, finish: bool, rng) -> Path:
    folder = cache / fingerprint / "images" / location.strip("/").replace("/", "-")
    store = ShardStore(folder, {"fingerprint": fingerprint, "backbone": f"model-{fingerprint}", "dim": DIM,
                                "dataset": {"location": location, "n": 4 * shards}})
    for s in range(shards):
        store.write_shard(s, np.arange(4 * s, 4 * s + 4), unit_rows(rng.standard_normal((4, DIM))), {})
    if finish:
        store.finish(shards, np.zeros(4 * shards, int), [str(i) for i in range(4 * shards)], {})
    return folder


@pytest.fixture
def populated(tmp_path, rng) -> Path:
    """A cache with a complete and an unfinished entry of fingerprint fp-a, an old complete one of fp-b, a text file."""
    cache = tmp_path / "cache"
    _entry(cache, "fp-a", "/data/one", 2, True, rng)
    _entry(cache, "fp-a", "/data/two", 1, False, rng)
    old = _entry(cache, "fp-b", "/data/one", 1, True, rng)
    os.utime(old / "last_used", (time.time() - 10 * 86400,) * 2)
    text = text_path(cache, "fp-a", ["k"])
    text.parent.mkdir(parents=True)
    atomic_save_npy(text, np.zeros((3, DIM), np.float32))
    return cache


def test_list_entries_describes_each_entry(populated):
    rows = {(e.fingerprint, e.kind, e.location): e for e in list_entries(populated)}
    assert set(rows) == {("fp-a", "images", "/data/one"), ("fp-a", "images", "/data/two"),
                         ("fp-b", "images", "/data/one"), ("fp-a", "text", None)}
    done, partial = rows["fp-a", "images", "/data/one"], rows["fp-a", "images", "/data/two"]
    assert done.complete and done.rows == 8 and done.backbone == "model-fp-a" and done.bytes > 8 * DIM * 4
    assert not partial.complete and partial.rows == 4
    assert rows["fp-a", "text", None].rows == 1
    assert rows["fp-b", "images", "/data/one"].last_used < time.time() - 9 * 86400


def test_touch_last_used_updates_what_ls_shows(populated):
    folder = populated / "fp-b" / "images" / "data-one"
    touch_last_used(folder)
    assert [e for e in list_entries(populated) if e.path == folder][0].last_used > time.time() - 60


@pytest.mark.parametrize("options, removed", [
    ({"older_than_days": 5}, {("fp-b", "images")}),
    ({"incomplete": True}, {("fp-a", "images")}),
    ({"fingerprint": "fp-a"}, {("fp-a", "images"), ("fp-a", "text")}),
    ({"everything": True}, {("fp-a", "images"), ("fp-b", "images"), ("fp-a", "text")}),
    ({}, set()),
])
def test_prune_removes_what_matches(populated, options, removed):
    before = list_entries(populated)
    dry = prune(populated, dry_run=True, **options)
    assert list_entries(populated) == before
    gone = prune(populated, **options)
    assert [e.path for e in gone] == [e.path for e in dry]
    assert {(e.fingerprint, e.kind) for e in gone} == removed
    assert not any(e.path.exists() for e in gone)
    assert len(list_entries(populated)) == len(before) - len(gone)


def test_cli_cache_ls_and_prune(populated, capsys):
    main(["cache", "ls", "--cache-dir", str(populated)])
    out = capsys.readouterr().out
    assert "4 entries" in out and "/data/two" in out and "incomplete" in out and "model-fp-b" in out
    main(["cache", "prune", "--incomplete", "--dry-run", "--cache-dir", str(populated)])
    assert "would remove 1 entries" in capsys.readouterr().out and (populated / "fp-a" / "images" / "data-two").exists()
    main(["cache", "prune", "--older-than", "5", "--cache-dir", str(populated)])
    out = capsys.readouterr().out
    assert "removed 1 entries" in out and "freed" in out and not (populated / "fp-b").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["cache", "prune", "--cache-dir", str(populated)])  # says what to give rather than removing all
    assert "--all" in str(exit_.value) + capsys.readouterr().err


# ---- extraction: one cache, many processes, damage repaired --------------------------------------------------------

@pytest.fixture(scope="module")
def small_slice(tmp_path_factory) -> Path:
    """The first 160 CIFAR-10 test images as an .npz (with classes.json beside it)."""
    return npz_slice(tmp_path_factory.mktemp("cache_slice"), "cifar10", "test.npz", rows=slice(160))


def test_extract_expands_user_and_false_means_no_cache(tiny_backbone, small_slice, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    fs = extract(tiny_backbone, small_slice, cache_dir="~/c", num_workers=0, progress=False)
    assert list((tmp_path / "c" / tiny_backbone.fingerprint / "images").iterdir()) and not (tmp_path / "~").exists()
    uncached = extract(tiny_backbone, small_slice, cache_dir=False, num_workers=0, progress=False)
    assert not isinstance(uncached.features, np.memmap) and not any(default_cache_dir().iterdir())
    np.testing.assert_array_equal(uncached.features, fs.features)


def _cli_extract(model: Path, data: Path, cache: Path) -> subprocess.Popen:
    """``zeroshot extract`` in its own process: batches of 4 images, 64-image shards, so runs overlap."""
    return subprocess.Popen([sys.executable, "-m", "zeroshot", "extract", str(data), "--model", str(model),
                             "--cache-dir", str(cache), "--device", "cpu", "--batch-size", "4", "--workers", "0",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    """Wait for a CLI run; it must succeed."""
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def _features_file(cache: Path) -> Path:
    """The joined features of the one entry of a cache."""
    (path,) = cache.glob("*/images/*/features.npy")
    return path


def test_two_processes_extracting_into_one_cache_both_succeed(tiny_backbone, tiny_model_dir, small_slice, tmp_path):
    shared_cache, fresh = tmp_path / "shared", tmp_path / "fresh"
    racing = [_cli_extract(tiny_model_dir, small_slice, shared_cache) for _ in range(2)]
    extract(tiny_backbone, small_slice, cache_dir=fresh, batch_size=4, num_workers=0, progress=False)
    for proc in racing:
        _finish(proc)
    expected = _features_file(fresh).read_bytes()
    assert _features_file(shared_cache).read_bytes() == expected
    assert not list(shared_cache.glob("*/images/*/shard-*")) and not list(shared_cache.rglob("*.tmp"))

    features = _features_file(shared_cache)
    features.write_bytes(features.read_bytes()[:-100])  # a damaged complete set: the next run re-encodes it
    _finish(_cli_extract(tiny_model_dir, small_slice, shared_cache))
    assert features.read_bytes() == expected


class Interrupted(Exception):
    pass


def _interrupted_run(backbone, data, cache, monkeypatch, batches: int) -> None:
    """An extraction that dies after encoding ``batches`` batches (its committed shards stay on disk)."""
    original, calls = backbone.encode_images, []

    def failing(batch):
        if len(calls) == batches:
            raise Interrupted
        calls.append(1)
        return original(batch)

    monkeypatch.setattr(backbone, "encode_images", failing)
    with pytest.raises(Interrupted):
        extract(backbone, data, cache_dir=cache, batch_size=16, shard_batches=2, num_workers=0, progress=False)
    monkeypatch.setattr(backbone, "encode_images", original)


@pytest.mark.parametrize("damage", ["delete features", "truncate rows", "delete rows and features"])
def test_a_damaged_shard_is_encoded_again(tiny_backbone, small_slice, monkeypatch, tmp_path, damage):
    reference = extract(tiny_backbone, small_slice, cache_dir=tmp_path / "ref", batch_size=16, shard_batches=2,
                        num_workers=0, progress=False)
    _interrupted_run(tiny_backbone, small_slice, tmp_path / "c", monkeypatch, batches=5)
    sidecars = sorted((tmp_path / "c").glob("*/images/*/shard-*.json"))
    assert len(sidecars) == 2
    for kind in ("features", "rows"):
        if kind in damage:
            path = sidecars[0].with_name(sidecars[0].name.replace(".json", f".{kind}.npy"))
            path.unlink() if "delete" in damage else path.write_bytes(path.read_bytes()[:-8])
    repaired = extract(tiny_backbone, small_slice, cache_dir=tmp_path / "c", batch_size=16, shard_batches=2,
                       num_workers=0, progress=False)
    np.testing.assert_array_equal(repaired.features, reference.features)
    assert json.loads(next((tmp_path / "c").glob("*/images/*/manifest.json")).read_text())["complete"]


def test_atomic_concat_npy_streams_parts_into_one_array(tmp_path):
    from zeroshot.cache import atomic_concat_npy

    parts = [np.full((n, 3), i, np.float32) for i, n in enumerate([4, 0, 2])]
    atomic_concat_npy(tmp_path / "x.npy", iter(parts), (6, 3), np.float32)
    assert np.array_equal(np.load(tmp_path / "x.npy"), np.concatenate(parts))
    with pytest.raises(ValueError, match="hold 6 rows, not 7"):
        atomic_concat_npy(tmp_path / "y.npy", iter(parts), (7, 3), np.float32)
    assert not list(tmp_path.glob("*y.npy*"))  # nothing half-written is left behind


def test_a_files_digest_is_remembered_until_the_file_changes(tmp_path):
    weights, calls = tmp_path / "w.bin", []
    weights.write_bytes(b"abc")

    def compute(path):
        calls.append(path)
        return f"digest-{path.read_bytes().decode()}"

    assert remembered_digest(weights, compute) == remembered_digest(weights, compute) == "digest-abc"
    assert len(calls) == 1 and list_entries() == []  # the memo is not a cache entry to list or prune
    weights.write_bytes(b"abcd")
    assert remembered_digest(weights, compute) == "digest-abcd" and len(calls) == 2
    os.utime(weights, ns=(1, 1))
    assert remembered_digest(weights, compute) == "digest-abcd" and len(calls) == 3
    stat = weights.stat()
    time.sleep(0.05)  # past the file system's clock tick, which may be coarser than a nanosecond
    weights.write_bytes(b"wxyz")  # same size, and the old times put back: the change time still moved
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert remembered_digest(weights, compute) == "digest-wxyz" and len(calls) == 4


def test_a_second_process_fingerprints_the_default_model_without_reading_the_text_weights():
    """issue 22: the text tower (90 MB) was hashed on every load; a new process now reads its remembered digest."""
    probe = ("import builtins, sys; real = builtins.open; opened = []\n"
             "builtins.open = lambda f, *a, **k: (opened.append(str(f)), real(f, *a, **k))[1]\n"
             "from zeroshot import load_backbone\n"
             "print(load_backbone('default', device='cpu').fingerprint)\n"
             "print(sum(f.endswith('model.safetensors') and 'minilm' in f.lower() for f in opened))")
    runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    assert runs[0][0] == runs[1][0] and (runs[0][1], runs[1][1]) == ("1", "0")
