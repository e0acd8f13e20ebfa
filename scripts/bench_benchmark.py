"""Cold and warm wall time of a whole ``zeroshot benchmark`` grid (issue 18's acceptance), whole processes.

    python scripts/bench_benchmark.py --models default,runs/student-v3/model --output bench/ [--json out.json]

The cold run starts from an empty feature/text cache (a fresh temporary folder unless --cache-dir is given), so it
encodes every image and prompt; the warm runs repeat the same command on that cache (no --skip-existing: every
result is evaluated again, from cached arrays). Then ``zeroshot benchmark build`` writes OUTPUT.csv/.md/.png.
OUTPUT must hold no earlier results (they would join the table).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="default")
    parser.add_argument("--datasets", default="cifar10,tinyimagenet-val,dtd10,mnist,flickr8k")
    parser.add_argument("--tasks", default="zeroshot_classification,zeroshot_retrieval")
    parser.add_argument("--output", default="bench_out/benchmark")
    parser.add_argument("--cache-dir", default=None, help="an empty folder for the cold run (default: a temporary one)")
    parser.add_argument("--warm-runs", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    earlier = list(Path(args.output).glob("*.json"))
    if earlier:
        sys.exit(f"--output {args.output} already holds {len(earlier)} results, which would join this run's table; "
                 "give an empty or new folder")
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        cache = args.cache_dir or tmp
        if any(Path(cache).iterdir()):
            sys.exit(f"--cache-dir {cache} is not empty: the cold run needs an empty cache")
        grid = [sys.executable, "-m", "zeroshot", "benchmark", "--models", args.models, "--datasets", args.datasets,
                "--tasks", args.tasks, "--output", args.output, "--cache-dir", cache, "--quiet"]
        cold = timed(grid)
        warm = [timed(grid) for _ in range(args.warm_runs)]
        table = f"{args.output.rstrip('/')}.csv"
        subprocess.run([sys.executable, "-m", "zeroshot", "benchmark", "build", args.output, "--output", table],
                       check=True, stdout=subprocess.DEVNULL)
    results = [json.loads(p.read_text()) for p in sorted(Path(args.output).glob("*.json"))]
    fingerprints = sorted({f"{r['model']}={r['fingerprint']}" for r in results})
    report = {"models": args.models, "fingerprints": fingerprints, "datasets": args.datasets, "tasks": args.tasks,
              "seed": "none (zero-shot and retrieval are deterministic)", "results": len(results),
              "cold_s": round(cold, 1), "warm_s": [round(w, 2) for w in warm],
              "warm_speedup": round(cold / min(warm), 1), "table": table}
    print(json.dumps(report, indent=1))
    print(Path(table).with_suffix(".md").read_text())
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
