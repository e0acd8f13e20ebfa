"""Index over more rows than memory: 10,000,000 clustered synthetic 384-d unit rows written to a FeatureSet folder
on disk (~15 GB) chunk by chunk, then indexed shard by shard with `auto` at `--max-memory` (retrieval.md section 7).

Reports peak RSS (``resource.getrusage(...).ru_maxrss`` of this process, which runs every phase: writing, building,
exact search, queries), build time (``Index.build``: choose, train on a seeded sample, add chunk by chunk, tune
nprobe on 500 held-out rows), recall@10 against exact search on `--queries` fresh draws from the same mixture
(never in the index; exact neighbours found chunk by chunk), queries/s (one warm batch) and index bytes.
Data: `clustered` from scripts/bench_index.py (random centres on the sphere plus Gaussian noise, normalised).
The features are written with plain file writes, not through a writable map, whose dirty pages would count as
this process's memory; the FeatureSet folder is deleted at the end unless `--keep`.

    nice -n 5 python scripts/bench_index_large.py [--rows 10000000] [--max-memory 2G] [--keep] [--nprobes 16,64]
    python scripts/bench_index_large.py --features DIR --index DIR --nprobes 8,16,32   # measure a kept build again
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import faiss
import numpy as np
from bench_index import add_synthetic_args, clustered

from zeroshot import FeatureSet, Index
from zeroshot.cache import atomic_write_json
from zeroshot.features import normalise_rows
from zeroshot.retrieval.index import exact_search, knn_recall

WRITE_ROWS = 100_000  # rows generated and written at a time


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_features(folder: Path, n: int, centres: np.ndarray, noise: float, rng: np.random.Generator,
                   description: dict) -> FeatureSet:
    """A FeatureSet folder of n clustered unit rows with string ids, features.npy written chunk by chunk."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "features.npy"
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, centres.shape[1]))
    offset = header.offset
    del header  # only the header was written; the rows follow through the file, not the map
    with open(path, "r+b") as f:
        f.seek(offset)
        for start in range(0, n, WRITE_ROWS):
            clustered(min(WRITE_ROWS, n - start), centres, noise, rng).tofile(f)
    np.save(folder / "labels.npy", np.full(n, -1, np.int64))
    np.save(folder / "ids.npy", np.arange(n).astype(f"U{len(str(n))}"))
    atomic_write_json(folder / "manifest.json", {"fingerprint": "synthetic", "dataset": description,
                                                 "version": 1, "complete": True, "n": n, "dim": centres.shape[1]})
    return FeatureSet.load(folder)


def measure(index: Index, features: FeatureSet, queries: np.ndarray, kth: np.ndarray, k: int) -> tuple[float, float]:
    """(queries/s of one warm batch, k-recall@k against the exact k-th similarities ``kth``)."""
    index.search_positions(queries[:50], k)  # warm-up
    start = time.perf_counter()
    found = index.search_positions(queries, k)[1]
    qps = round(len(queries) / (time.perf_counter() - start), 1)
    rows = np.where(found >= 0, index.ids[np.maximum(found, 0)].astype(np.int64), -1)  # ids are row numbers
    return qps, round(knn_recall(features.features, queries, rows, kth), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    add_synthetic_args(parser)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "bench_out" / "index_large"))
    parser.add_argument("--keep", action="store_true", help="keep the FeatureSet and index folders")
    parser.add_argument("--features", help="use this FeatureSet folder (an earlier run's, --keep) instead of writing one")
    parser.add_argument("--index", help="use this saved index instead of building one (with --features)")
    parser.add_argument("--nprobes", default="", help="also measure recall and queries/s at these nprobe values")
    parser.add_argument("--json")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    description = {"kind": "synthetic", "rows": args.rows, "dim": args.dim, "clusters": args.clusters,
                   "noise": args.noise, "seed": args.seed}
    print(f"# seed {args.seed}, faiss {faiss.__version__}, {args.threads} threads, dataset: clustered synthetic "
          f"{args.rows:,} x {args.dim} ({args.clusters} clusters, noise {args.noise}), {args.queries} held-out "
          f"queries, auto at --max-memory {args.max_memory}, target recall@{args.k} {args.target_recall}", flush=True)
    rng = np.random.default_rng(args.seed)
    centres = normalise_rows(rng.standard_normal((args.clusters, args.dim), dtype=np.float32))
    queries = clustered(args.queries, centres, args.noise, rng)
    out = Path(args.out)
    report = {**description, "queries": args.queries, "threads": args.threads, "faiss": faiss.__version__,
              "max_memory": args.max_memory}
    try:
        start = time.perf_counter()
        if args.features:
            features = FeatureSet.load(args.features)
        else:
            features = write_features(out / "features", args.rows, centres, args.noise, rng, description)
            report.update(write_s=round(time.perf_counter() - start, 1), data_gib=round(
                (out / "features" / "features.npy").stat().st_size / 2**30, 2))
        report["rss_after_write_gib"] = round(peak_rss_gib(), 2)
        print(json.dumps(report), flush=True)
        start = time.perf_counter()
        if args.index:
            index = Index.load(args.index)
        else:
            index = Index.build(features, factory="auto", max_memory=args.max_memory,
                                target_recall=args.target_recall, k=args.k, seed=args.seed)
            report["build_s"] = round(time.perf_counter() - start, 1)
        report.update(factory=index.factory, params=index.params, tuned_recall=index.tuned_recall,
                      rss_after_build_gib=round(peak_rss_gib(), 2))
        print(json.dumps(report), flush=True)
        start = time.perf_counter()
        kth = exact_search(features.features, queries, args.k)[0][:, args.k - 1]
        report["exact_s"] = round(time.perf_counter() - start, 1)
        report["qps"], report["recall@10"] = measure(index, features, queries, kth, args.k)
        for nprobe in [int(p) for p in args.nprobes.split(",") if p]:
            tuned = dict(index.params)
            index.set_params(nprobe=nprobe)
            report[f"nprobe {nprobe}: qps, recall@10"] = measure(index, features, queries, kth, args.k)
            index.set_params(**tuned)
        if not args.index:
            index.save(out / "index")
            report["index_bytes"] = sum(p.stat().st_size for p in (out / "index").iterdir())
        report["peak_rss_gib"] = round(peak_rss_gib(), 2)
        print(json.dumps(report), flush=True)
        ok = report["peak_rss_gib"] < 8 and report["recall@10"] >= args.target_recall
        print(f"# {args.rows:,} rows: {index.factory} {index.params}, build {report.get('build_s')} s, "
              f"recall@{args.k} {report['recall@10']}, {report['qps']} queries/s, peak RSS "
              f"{report['peak_rss_gib']} GiB -> {'meets' if ok else 'MISSES'} < 8 GiB and recall >= "
              f"{args.target_recall}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
