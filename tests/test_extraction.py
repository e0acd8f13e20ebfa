"""Extraction engine: caching, kill -9 resume with bit-identical features, bad files skipped and reported."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BAD_FILES, npz_slice, shared
from zeroshot import FeatureSet, extract, open_dataset


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory) -> Path:
    """The first 240 CIFAR-10 test images as an .npz (with classes.json beside it)."""
    return npz_slice(tmp_path_factory.mktemp("cifar_slice"), "cifar10", "test.npz", rows=slice(240))


def test_extract_real_slice_then_cache_hit(tiny_backbone, cifar_slice, tmp_path, monkeypatch):
    fs = extract(tiny_backbone, cifar_slice, cache_dir=tmp_path, batch_size=32, num_workers=0, progress=False)
    assert fs.features.shape == (240, 32) and fs.features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fs.features, axis=1), 1, atol=1e-5)
    with np.load(cifar_slice, allow_pickle=False) as z:
        assert list(fs.ids) == [str(i) for i in z["ids"]]
        assert np.array_equal(fs.labels, z["labels"])
    assert fs.classes[:3] == ["airplane", "automobile", "bird"]
    assert fs.fingerprint == tiny_backbone.fingerprint and fs.failed == {}

    def no_encoding(*_):
        raise AssertionError("a cached extraction must not encode again")

    monkeypatch.setattr(tiny_backbone, "encode_images", no_encoding)
    again = extract(tiny_backbone, cifar_slice, cache_dir=tmp_path, progress=False)
    assert isinstance(again.features, np.memmap)
    assert np.array_equal(np.asarray(again.features), fs.features)


def test_features_match_open_clip_reference(tiny_backbone, cifar_slice, tmp_path):
    """Our engine (uint8 transport, normalise on device, fused tower) equals open_clip's own eval path."""
    import open_clip
    import torch

    fs = extract(tiny_backbone, cifar_slice, cache_dir=tmp_path, batch_size=64, num_workers=0, progress=False)
    preprocess = open_clip.image_transform(32, is_train=False)
    with np.load(cifar_slice, allow_pickle=False) as z:
        images = torch.stack([preprocess(Image.fromarray(a)) for a in z["images"][:16]])
    with torch.inference_mode():
        reference = tiny_backbone.model.encode_image(images, normalize=True).numpy()
    np.testing.assert_allclose(fs.features[:16], reference, atol=2e-5)


def test_cache_is_keyed_by_backbone(tiny_backbone, tiny_model_dir, cifar_slice, tmp_path):
    from zeroshot import load_backbone

    draft = load_backbone(tiny_model_dir, device="cpu", decode="draft")
    assert draft.fingerprint != tiny_backbone.fingerprint
    a = extract(tiny_backbone, cifar_slice, cache_dir=tmp_path, num_workers=0, progress=False)
    b = extract(draft, cifar_slice, cache_dir=tmp_path, num_workers=0, progress=False)
    assert a.fingerprint != b.fingerprint
    folders = list(tmp_path.glob("*/images/*"))
    assert len(folders) == 2
    with pytest.raises(ValueError, match="made by backbone"):
        FeatureSet.load(folders[0], fingerprint="0" * 16)


RUNNER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from zeroshot import extract, load_backbone, open_dataset

    model, data, cache, out, delay = sys.argv[1:6]
    backbone = load_backbone(model, device="cpu")
    dataset = open_dataset(data)
    encoded = []
    original = backbone.encode_images

    def counting(batch):
        time.sleep(float(delay))  # slow enough for the test to kill us mid-run
        encoded.append(len(batch))
        return original(batch)

    backbone.encode_images = counting
    fs = extract(backbone, dataset, cache_dir=cache, batch_size=16, shard_batches=2, num_workers=1, progress=False)
    np.save(out, np.asarray(fs.features))
    print(json.dumps({"encoded": sum(encoded), "n": len(fs)}))
""")


def _run(script, *args):
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kill_9_then_resume_is_bit_identical(tiny_model_dir, cifar_slice, tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, str(script), tiny_model_dir, cifar_slice, cache, tmp_path / "x.npy",
                             "0.15"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.glob("*/images/*/shard-*.json"))) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the extraction finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads(next(cache.glob("*/images/*/manifest.json")).read_text())
    assert not manifest["complete"]
    kept = sum(json.loads(p.read_text())["rows"] for p in cache.glob("*/images/*/shard-*.json"))  # the sidecars
    assert 0 < kept < 240

    resumed = _run(script, tiny_model_dir, cifar_slice, cache, tmp_path / "resumed.npy", 0)
    assert resumed == {"encoded": 240 - kept, "n": 240}  # complete shards were not encoded again
    fresh = _run(script, tiny_model_dir, cifar_slice, tmp_path / "fresh_cache", tmp_path / "fresh.npy", 0)
    assert fresh["encoded"] == 240
    assert np.array_equal(np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "fresh.npy"))




def test_bad_files_are_skipped_and_reported(tiny_backbone, messy_folder, tmp_path):
    fs = extract(tiny_backbone, messy_folder, cache_dir=tmp_path / "c", batch_size=4, num_workers=1, progress=False)
    assert set(fs.failed) == BAD_FILES
    assert "0 bytes" in fs.failed["empty.jpg"] and "not a decodable image" in fs.failed["notes.png"]
    good = {p.name for p in messy_folder.iterdir()} - BAD_FILES
    assert set(fs.ids) == good and len(fs) == 6
    assert np.isfinite(fs.features).all()


def test_cli_classify_messy_folder(tiny_model_dir, messy_folder, tmp_path):
    out = tmp_path / "pred.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "zeroshot", "classify", str(messy_folder), "--classes", "cat,dog,texture",
         "--model", str(tiny_model_dir), "--cache-dir", str(tmp_path / "c"), "--output", str(out), "--quiet",
         "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv_rows(out))
    assert {r["id"] for r in rows} == {p.name for p in messy_folder.iterdir()} - BAD_FILES
    assert all(r["prediction"] in {"cat", "dog", "texture"} for r in rows)
    assert all(abs(sum(float(r[f"score{k}"]) for k in (1, 2, 3)) - 1) < 1e-3 for r in rows)
    for name in BAD_FILES:
        assert name in proc.stderr


def csv_rows(path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)


def test_cli_eval_writes_metrics_and_png(tiny_model_dir, cifar_slice, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "zeroshot", "eval", "--model", str(tiny_model_dir), "--dataset", str(cifar_slice),
         "--card", "cifar10", "--cache-dir", str(tmp_path / "c"), "--output", str(out), "--quiet", "--device", "cpu",
         "--normalize", "none"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 240 and 0 <= metrics["acc1"] <= metrics["acc5"] <= 1
    assert len(metrics["confusion_matrix"]) == 10 and sum(map(sum, metrics["confusion_matrix"])) == 240
    assert list(metrics["per_class_recall"]) == metrics["classes"]
    assert Image.open(out / "confusion_matrix.png").size[0] > 100
    confusions = list(csv_rows(out / "top_confusions.csv"))
    assert confusions and {c["true"] for c in confusions} <= set(metrics["classes"])
    cm, names = metrics["confusion_matrix"], metrics["classes"]  # the worst pair's count, from the matrix itself
    worst = confusions[0]
    assert int(worst["images"]) == cm[names.index(worst["true"])][names.index(worst["predicted"])]


@pytest.mark.parametrize("args, message", [
    (["--card", "no-such-card"], "unknown card"),
    (["--card", "mnist"], "has no class"),
])
def test_cli_eval_errors_say_what_to_fix(tiny_model_dir, cifar_slice, tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "zeroshot", "eval", "--model", str(tiny_model_dir), "--dataset", str(cifar_slice),
         "--cache-dir", str(tmp_path / "c"), "--output", str(tmp_path / "e"), "--quiet", "--device", "cpu", *args],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and message in proc.stderr


def test_dataset_order_is_deterministic(messy_folder):
    assert open_dataset(messy_folder).ids == open_dataset(messy_folder).ids


def test_cli_extract_saves_a_loadable_feature_set(tiny_model_dir, cifar_slice, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "zeroshot", "extract", str(cifar_slice), "--model", str(tiny_model_dir),
         "--cache-dir", str(tmp_path / "c"), "--output", str(tmp_path / "fs"), "--quiet", "--device", "cpu",
         "--batch-size", "48", "--workers", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["n"] == 240 and summary["dim"] == 32 and summary["failed"] == {}
    saved = FeatureSet.load(tmp_path / "fs", fingerprint=summary["fingerprint"])
    assert saved.features.shape == (240, 32) and saved.classes[0] == "airplane"


def test_cpu_streams_encode_the_same_features_in_order(tiny_backbone):
    """Batches encoded on several threads at once come back in order, as one stream encodes them up to float
    rounding (a single-threaded kernel may sum in another order), failures kept; the torch thread count is restored."""
    import torch

    from zeroshot.extraction import encode_unit

    generator = torch.Generator().manual_seed(0)
    size = tiny_backbone.transform.size
    batches = [(torch.randint(0, 255, (n, 3, size, size), dtype=torch.uint8, generator=generator),
                np.arange(start, start + n), [(start + n, "bad")]) for start, n in ((0, 5), (6, 3), (10, 7))]
    batches.insert(1, (None, np.zeros(0, np.int64), [(18, "unreadable")]))
    ids = [f"i{k}" for k in range(20)]
    threads = torch.get_num_threads()
    one = encode_unit(tiny_backbone, iter(batches), ids)
    two = encode_unit(tiny_backbone, iter(batches), ids, streams=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_allclose(one[1], two[1], atol=1e-5)
    assert one[2] == two[2] == {"i5": "bad", "i9": "bad", "i17": "bad", "i18": "unreadable"}
    assert torch.get_num_threads() == threads
