"""Ray against the local engine on the same data, side by side: time, images/s, byte-identical FeatureSets, the
per-unit cost, and the faults (a Ray worker killed mid-unit; the driver killed at about 40 % and rerun).

Each run starts from an empty cache (one folder per run under --work), so every image is decoded and encoded; the
Ray runs start their own local cluster (as `zeroshot extract --engine ray` without --address does) and the figures
include its start-up. The fault runs use the command line in a subprocess, as a user would.

    python scripts/bench_ray_extract.py [--data tinyimagenet/val,tinyimagenet/train-{000000..000009}.tar.gz]
        [--shapes 1x2,2x1] [--rounds 1] [--faults tinyimagenet/val] [--json bench_out/ray_extract.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import zeroshot
from zeroshot.datasets import ShardPlan, open_dataset
from zeroshot.extraction import default_batch_size
from zeroshot.images import decode_raw

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def digest(fs) -> str:
    """sha256 over features, labels and ids: equal digests = byte-identical FeatureSets."""
    h = hashlib.sha256(np.ascontiguousarray(fs.features).tobytes())
    h.update(np.asarray(fs.labels).tobytes())
    h.update("\n".join(map(str, fs.ids)).encode())
    return h.hexdigest()


def units(data: str) -> int:
    """How many work units the default CPU plan cuts ``data`` into."""
    batch = default_batch_size("cpu")
    return len(ShardPlan(len(open_dataset(data)), batch, batch * 16))


def timed_extract(backbone, data: str, cache: Path, **engine) -> tuple[float, object]:
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    fs = zeroshot.extract(backbone, data, cache_dir=cache, progress=False, **engine)
    return time.perf_counter() - start, fs


def compare(backbone, data: str, shapes: list[tuple[int, int]], work: Path, rounds: int) -> list[dict]:
    """Local and Ray runs, one per (workers x CPUs) shape, interleaved for ``rounds`` rounds on the same data; the
    median time of each is reported (the machine is shared and noisy)."""
    import ray

    n_units = units(data)
    times, digests, n = {}, {}, 0
    for _ in range(rounds):
        local_s, local = timed_extract(backbone, data, work / "local")
        times.setdefault("local", []).append(local_s)
        digests["local"], n = digest(local), len(local)
        for workers, cpus in shapes:
            ray.init(num_cpus=workers * cpus, include_dashboard=False, logging_level="ERROR")
            try:
                ray_s, on_ray = timed_extract(backbone, data, work / "ray", engine="ray", ray_workers=workers)
            finally:
                ray.shutdown()
            times.setdefault((workers, cpus), []).append(ray_s)
            digests[(workers, cpus)] = digest(on_ray)
    local_s = float(np.median(times["local"]))
    rows = [{"data": data, "engine": "local", "s": round(local_s, 1), "runs_s": [round(t, 1) for t in times["local"]],
             "img_s": round(n / local_s, 1), "units": n_units, "sha256": digests["local"]}]
    for workers, cpus in shapes:
        ray_s = float(np.median(times[workers, cpus]))
        rows.append({"data": data, "engine": f"ray {workers}x{cpus} CPU", "s": round(ray_s, 1),
                     "runs_s": [round(t, 1) for t in times[workers, cpus]], "img_s": round(n / ray_s, 1),
                     "units": n_units, "s_per_unit_per_worker": round(ray_s * workers / n_units, 3),
                     "vs_local": round(local_s / ray_s, 2), "sha256": digests[workers, cpus],
                     "identical": digests[workers, cpus] == digests["local"]})
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def decode_rate(backbone, data: str, n: int = 1000) -> float:
    """Images/s that one core decodes and transforms (no model): what bounds a GPU worker per CPU it is given.
    Tiny ImageNet's 64 px JPEGs are the cheap case; Flickr8k's 500 x 375 photos are what web images cost."""
    dataset = open_dataset(data)
    n = min(n, len(dataset))
    for raw in map(dataset.raw, range(n)):  # warm-up: files into the page cache, as in the runs measured above
        if isinstance(raw, str):
            Path(raw).read_bytes()
    start = time.perf_counter()
    for i in range(n):  # one image at a time, as one decode thread works
        decode_raw(dataset.raw(i), backbone.transform)
    return n / (time.perf_counter() - start)


def driver_cost(backbone, work: Path, units_timed: int = 20) -> float:
    """Milliseconds the driver spends per committed unit (fetching a unit's features from the object store and
    writing its arrays and sidecar): the serial part that bounds how many workers one driver can keep busy."""
    import ray

    from zeroshot.features import ShardStore

    batch = default_batch_size("cpu") * 16
    store = ShardStore(work / "driver", {"fingerprint": "bench", "dataset": {}, "dim": backbone.embed_dim})
    rng = np.random.default_rng(0)
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        refs = [ray.put((rng.standard_normal((batch, backbone.embed_dim), dtype=np.float32),
                         np.arange(batch), {})) for _ in range(units_timed)]
        start = time.perf_counter()
        for shard, ref in enumerate(refs):
            features, rows, failed = ray.get(ref)
            store.write_shard(shard, rows, features, failed)
        return (time.perf_counter() - start) / units_timed * 1000
    finally:
        ray.shutdown()


def cli(data: str, cache: Path) -> list[str]:
    return [sys.executable, "-m", "zeroshot", "extract", data, "--cache-dir", str(cache), "--engine", "ray"]


def wait_units(entry_glob: Path, count: int, proc: subprocess.Popen) -> int:
    while proc.poll() is None:
        done = len(list(entry_glob.glob("*/images/*/shard-*.json")))
        if done >= count:
            return done
        time.sleep(0.05)
    raise RuntimeError("the run ended before it could be interrupted")


def faults(backbone, data: str, work: Path, reference: str) -> dict:
    """A worker killed mid-unit, then the driver killed at ~40 % and rerun: both must give the reference bytes."""
    n_units = units(data)
    report = {"data": data, "units": n_units}
    cache = work / "fault-worker"
    shutil.rmtree(cache, ignore_errors=True)
    proc = subprocess.Popen(cli(data, cache), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    wait_units(cache, 2, proc)
    report["worker_killed"] = subprocess.run(["pkill", "-9", "-f", "ray::UnitEncoder"]).returncode == 0
    report["worker_run_rc"] = proc.wait()
    report["worker_run_identical"] = digest(zeroshot.extract(backbone, data, cache_dir=cache, progress=False)) == reference

    cache = work / "fault-driver"
    shutil.rmtree(cache, ignore_errors=True)
    proc = subprocess.Popen(cli(data, cache), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    report["units_at_driver_kill"] = wait_units(cache, round(0.4 * n_units), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    report["units_committed_after_kill"] = len(list(cache.glob("*/images/*/shard-*.json")))
    start = time.perf_counter()
    rerun = subprocess.run(cli(data, cache), capture_output=True, text=True)
    report["rerun_s"] = round(time.perf_counter() - start, 1)
    report["rerun_rc"] = rerun.returncode
    report["rerun_says"] = next((line for line in rerun.stderr.splitlines() if "already in the cache" in line), None)
    report["rerun_identical"] = digest(zeroshot.extract(backbone, data, cache_dir=cache, progress=False)) == reference
    print(json.dumps(report), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="tinyimagenet/val,tinyimagenet/train-{000000..000009}.tar.gz",
                        help="comma-separated datasets under the shared data folder")
    parser.add_argument("--shapes", default="1x2,2x1", help="Ray workers x CPUs each, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved local/Ray rounds (median reported)")
    parser.add_argument("--faults", default="tinyimagenet/val", help="dataset for the fault runs ('' = none)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--work", default="bench_out/ray_extract", help="scratch caches (deleted at the end)")
    parser.add_argument("--costs-only", action="store_true", help="only the decode rates and the driver's cost")
    parser.add_argument("--json")
    args = parser.parse_args()
    backbone = zeroshot.load_backbone(args.model, device="cpu")
    shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",") if shape]
    work = Path(args.work)
    print(f"# seed: none (no randomness), model {args.model} (fingerprint {backbone.fingerprint}), {os.cpu_count()} "
          f"CPUs, batch {default_batch_size('cpu')}, units of 16 batches, data {SHARED}", flush=True)
    report = {"fingerprint": backbone.fingerprint, "runs": [], "faults": None}
    for data in [] if args.costs_only else args.data.split(","):
        report["runs"] += compare(backbone, str(SHARED / data), shapes, work, args.rounds)
    report["decode_img_s_per_core"] = {name: round(decode_rate(backbone, str(SHARED / name)), 1)
                                       for name in ("tinyimagenet/val", "flickr8k_1k/images")}
    report["driver_ms_per_unit"] = round(driver_cost(backbone, work), 1)
    print(json.dumps({key: report[key] for key in ("decode_img_s_per_core", "driver_ms_per_unit")}), flush=True)
    if args.faults and not args.costs_only:
        data = str(SHARED / args.faults)
        reference = next(r["sha256"] for r in report["runs"] if r["data"] == data and r["engine"] == "local")
        report["faults"] = faults(backbone, data, work, reference)
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
