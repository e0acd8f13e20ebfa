"""Peak memory of ``Index.build`` on an in-memory matrix (issue 22): each build runs in a fresh process that makes
the clustered rows of scripts/bench_index.py, then builds; the figure is the process's peak resident memory during
the build (VmHWM, reset once the matrix is made) above what it held after its imports, against the feature matrix
plus the index (``serialize_index`` bytes). Side by side: the plain faiss a user would write (``index_factory``, ``train`` on the same sample, one
``add`` of the whole matrix) for the same factory.

    python scripts/bench_index_memory.py [--rows 1000000] [--builds Flat,auto,faiss-auto]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def status_mib(field: str) -> float:
    """A memory field of this process from /proc/self/status (VmRSS: resident now, VmHWM: peak), in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:")) / 1024


def reset_peak() -> None:
    """Start the peak over from the current resident memory (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(build: str, rows: int, dim: int, clusters: int, noise: float, seed: int) -> dict:
    """One build in this process: its peak memory above the imports, the matrix and the index sizes."""
    import faiss
    from bench_index import clustered

    from zeroshot.retrieval.index import TRAIN_PER_LIST, Index, choose_factory, gather_rows, seeded_rows

    faiss.omp_set_num_threads(2)
    imports = status_mib("VmRSS")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    X = clustered(rows, centres, noise, rng, chunk=10_000)
    with_data = status_mib("VmRSS")
    reset_peak()
    start = time.perf_counter()
    if build.startswith("faiss-"):
        factory = choose_factory(rows, dim) if build == "faiss-auto" else build.removeprefix("faiss-")
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            index.train(gather_rows(X, seeded_rows(rows, TRAIN_PER_LIST * ivf.nlist, seed)))
        index.add(X)
    else:
        built = Index.build(X, factory=build, seed=seed)
        factory, index = built.factory, built.faiss_index
    seconds = time.perf_counter() - start
    above = status_mib("VmHWM") - imports  # before serialising, which copies the index
    index_bytes = faiss.serialize_index(index).nbytes
    matrix = X.nbytes / 2**20
    return {"build": build, "factory": factory, "rows": rows, "seconds": round(seconds, 1),
            "matrix_mib": round(matrix), "index_mib": round(index_bytes / 2**20),
            "peak_above_imports_mib": round(above), "held_with_the_matrix_mib": round(with_data - imports),
            "ratio_to_matrix_plus_index": round(above / (matrix + index_bytes / 2**20), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--builds", default="Flat,auto,faiss-auto")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.dim, args.clusters, args.noise, args.seed)))
        return
    print(f"# seed {args.seed}, fingerprint: none (synthetic vectors), dataset: clustered synthetic {args.rows:,} x "
          f"{args.dim}, {args.clusters} clusters, noise {args.noise}; one fresh process per build", flush=True)
    rows = []
    for build in args.builds.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", build, "--rows", str(args.rows), "--dim",
                              str(args.dim), "--clusters", str(args.clusters), "--noise", str(args.noise),
                              "--seed", str(args.seed)], check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
