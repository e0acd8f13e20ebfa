"""Extraction on Ray: the same shard plan and the same bytes as the local engine, a killed worker retried, a killed
driver resumed from its committed units. One local Ray cluster serves the whole session (``ray_cluster``)."""
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

from conftest import BAD_FILES, npz_slice
from zeroshot import extract
from zeroshot.datasets import ShardPlan
from zeroshot.engines.extract import worker_shape

N_IMAGES, BATCH, SHARD_BATCHES = 240, 16, 2  # 8 units of 32 images


@pytest.fixture(scope="module")
def cifar_slice(tmp_path_factory) -> Path:
    return npz_slice(tmp_path_factory.mktemp("cifar_slice"), "cifar10", "test.npz", rows=slice(N_IMAGES))


@pytest.fixture(scope="module")
def local_reference(tiny_backbone, cifar_slice, tmp_path_factory):
    return extract(tiny_backbone, cifar_slice, cache_dir=tmp_path_factory.mktemp("local"), batch_size=BATCH,
                   shard_batches=SHARD_BATCHES, num_workers=0, progress=False)


def assert_same(a, b) -> None:
    """Byte-identical FeatureSets: features, labels, ids and the failed files."""
    assert np.asarray(a.features).tobytes() == np.asarray(b.features).tobytes()
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.ids, b.ids)
    assert a.failed == b.failed


# --- the plan and the worker shape (no cluster) -----------------------------------------------------------------
def test_shard_plan_covers_every_index_once_in_fixed_batches():
    plan = ShardPlan(n=1000, batch_size=64, shard_size=256)
    assert len(plan) == 4
    rows = [i for s in range(len(plan)) for batch in plan.batches(s) for i in batch]
    assert rows == list(range(1000))
    assert [len(b) for b in plan.batches(3)] == [64, 64, 64, 40]
    assert plan.batches(1) == ShardPlan(1000, 64, 256).batches(1)  # the same on every run
    with pytest.raises(IndexError):
        plan.rows(4)
    with pytest.raises(ValueError, match="multiple of the batch size"):
        ShardPlan(1000, 64, 100)


@pytest.mark.parametrize("resources,workers,gpus,expected", [
    ({"CPU": 2}, None, 0, (1, 2)),  # CPUs: one actor per 2 CPUs, using both
    ({"CPU": 16}, None, 0, (8, 2)),
    ({"CPU": 16}, 3, 0, (3, 5)),
    ({"CPU": 32, "GPU": 8}, None, 1, (8, 4)),  # GPUs: one actor per GPU, CPUs shared out to decode
    ({"CPU": 32, "GPU": 8}, None, 0.5, (16, 2)),
])
def test_worker_shape(resources, workers, gpus, expected):
    assert worker_shape(resources, workers, gpus) == expected


def test_worker_shape_refuses_gpus_the_cluster_lacks():
    with pytest.raises(RuntimeError, match="has 0 GPUs"):
        worker_shape({"CPU": 8}, None, 1)


def test_missing_ray_says_how_to_install(monkeypatch):
    from zeroshot.engines.session import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'zeroshot\[ray\]'"):
        require_ray()


# --- on the session's cluster -------------------------------------------------------------------------------------
def test_ray_and_local_write_the_same_bytes(ray_cluster, tiny_backbone, cifar_slice, local_reference, tmp_path):
    on_ray = extract(tiny_backbone, cifar_slice, cache_dir=tmp_path, batch_size=BATCH, shard_batches=SHARD_BATCHES,
                     engine="ray", ray_workers=2, progress=False)
    assert_same(on_ray, local_reference)
    assert on_ray.meta["dataset"] == local_reference.meta["dataset"]


def test_ray_reports_unreadable_files_by_id(ray_cluster, tiny_backbone, messy_folder, tmp_path):
    local = extract(tiny_backbone, messy_folder, cache_dir=tmp_path / "local", batch_size=4, num_workers=0,
                    progress=False)
    on_ray = extract(tiny_backbone, messy_folder, cache_dir=tmp_path / "ray", batch_size=4, engine="ray",
                     progress=False)
    assert set(on_ray.failed) == BAD_FILES
    assert_same(on_ray, local)


# Drives an extraction from its own process, so that the test can kill it (or its Ray workers). Every encoded batch
# sleeps DELAY seconds and is logged (one line per batch, appended by whichever process encodes it), which makes the
# units slow enough to kill mid-run and counts what was encoded.
RUNNER = textwrap.dedent("""
    import json, logging, sys, time
    import numpy as np
    from zeroshot import extract, load_backbone
    from zeroshot.backbone import Backbone

    model, data, cache, out, address, log, DELAY = sys.argv[1:8]
    logging.basicConfig(level=logging.INFO)  # zeroshot's notes ("N of M units already in the cache") on stderr

    class Slow(Backbone):  # defined here, so Ray ships it to the workers by value
        def encode_images(self, batch):
            time.sleep(float(DELAY))
            with open(log, "a") as f:
                f.write(f"{len(batch)}\\n")
            return super().encode_images(batch)

    backbone = load_backbone(model, device="cpu")
    backbone.__class__ = Slow
    fs = extract(backbone, data, cache_dir=cache, batch_size=16, shard_batches=2, engine="ray", address=address,
                 progress=True)
    np.save(out, np.asarray(fs.features))
    print(json.dumps({"n": len(fs)}))
""")


def start_runner(tmp_path, tiny_model_dir, cifar_slice, cache, address, name, delay):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    args = [tiny_model_dir, cifar_slice, cache, tmp_path / f"{name}.npy", address, tmp_path / f"{name}.log", delay]
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_units(cache: Path, count: int, proc) -> int:
    """Wait until ``count`` units are committed (their sidecars exist); returns how many are."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = len(list(cache.glob("*/images/*/shard-*.json")))
        if done >= count:
            return done
        time.sleep(0.02)
    pytest.fail(f"the run ended or stalled before {count} units were committed: {proc.stderr.read()[-2000:]}")


def encoded(log: Path) -> int:
    return sum(int(line) for line in log.read_text().split()) if log.exists() else 0


def test_a_killed_worker_is_restarted_and_its_unit_retried(ray_cluster, tiny_model_dir, cifar_slice,
                                                           local_reference, tmp_path):
    cache = tmp_path / "cache"
    proc = start_runner(tmp_path, tiny_model_dir, cifar_slice, cache, ray_cluster, "run", 0.1)
    wait_for_units(cache, 2, proc)
    killed = subprocess.run(["pkill", "-9", "-f", "ray::UnitEncoder"], capture_output=True)
    assert killed.returncode == 0, "no Ray worker to kill"
    assert proc.wait(timeout=180) == 0, proc.stderr.read()[-2000:]
    assert np.load(tmp_path / "run.npy").tobytes() == np.asarray(local_reference.features).tobytes()


def test_a_killed_driver_resumes_from_its_committed_units(ray_cluster, tiny_model_dir, cifar_slice, local_reference,
                                                          tmp_path):
    cache = tmp_path / "cache"
    proc = start_runner(tmp_path, tiny_model_dir, cifar_slice, cache, ray_cluster, "first", 0.15)
    wait_for_units(cache, 3, proc)  # about 40 % of the 8 units
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    entry = next(cache.glob("*/images/*"))
    assert not json.loads((entry / "manifest.json").read_text())["complete"]
    sidecars = list(entry.glob("shard-*.json"))
    kept = sum(json.loads(p.read_text())["rows"] for p in sidecars)
    assert 0 < kept < N_IMAGES

    rerun = start_runner(tmp_path, tiny_model_dir, cifar_slice, cache, ray_cluster, "rerun", 0)
    assert rerun.wait(timeout=180) == 0, rerun.stderr.read()[-2000:]
    assert f"{len(sidecars)} of 8 units already in the cache" in rerun.stderr.read()
    assert encoded(tmp_path / "rerun.log") == N_IMAGES - kept  # committed units were not encoded again
    assert np.load(tmp_path / "rerun.npy").tobytes() == np.asarray(local_reference.features).tobytes()


def test_cli_extract_on_ray_saves_the_local_bytes(ray_cluster, tiny_model_dir, cifar_slice, local_reference, tmp_path):
    out = tmp_path / "fs"
    proc = subprocess.run([sys.executable, "-m", "zeroshot", "extract", str(cifar_slice), "--model",
                           str(tiny_model_dir), "--batch-size", "16", "--engine", "ray", "--address", ray_cluster,
                           "--num-workers", "1", "--cache-dir", str(tmp_path / "cache"), "--output", str(out),
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == N_IMAGES
    from zeroshot import FeatureSet

    # units of 16 batches, not 2: the same batches of 16, so the same bytes
    assert_same(FeatureSet.load(out), local_reference)


@pytest.mark.parametrize("args,code,message", [
    (["--address", "auto"], 2, "--address: used only with --engine ray"),
    (["--engine", "ray", "--address", "headnode"], 2, "cannot read Ray address 'headnode'"),
    (["--engine", "ray", "--address", "127.0.0.1:9"], 1, "no Ray cluster answers at 127.0.0.1:9"),
    (["--engine", "ray", "--gpus-per-worker", "-1"], 2, "--gpus-per-worker must be 0 or more"),
])
def test_cli_engine_options_fail_in_one_line(tiny_model_dir, cifar_slice, tmp_path, args, code, message):
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "zeroshot", "extract", str(cifar_slice), "--model",
                           str(tiny_model_dir), "--cache-dir", str(tmp_path), *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert time.time() - start < 60  # an unreachable cluster is found out at once, not after Ray's retries
