"""LinearProbe's C search as shipped (one BLAS thread per fit, a search step's fits at once on a thread pool) against
the same search as before (one fit after another, the BLAS libraries' default threads), side by side (issue 22): wall
seconds of ``LinearProbe().fit`` (search + final fit), the chosen C and test top-1, in interleaved order.

    python scripts/bench_probe_search.py [--runs cifar10:16:1,tinyimagenet:4:1,...] [--json OUT]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import warnings
from unittest import mock

from bench_fewshot import runs_and_sets
from sklearn.exceptions import ConvergenceWarning

import zeroshot.heads.linear_probe as linear_probe
from zeroshot.evaluation.fewshot import sample_shots
from zeroshot.heads import LinearProbe


def fit(X, y, seed: int, sequential: bool) -> tuple[float, LinearProbe]:
    """``LinearProbe().fit`` as shipped, or (``sequential``) as before issue 22: one fit after another, the BLAS
    libraries' default threads."""
    with contextlib.ExitStack() as stack:
        if sequential:
            stack.enter_context(mock.patch.object(linear_probe, "parallel_scores", lambda score, workers: None))
            stack.enter_context(mock.patch.object(linear_probe, "one_blas_thread", contextlib.nullcontext))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        probe = LinearProbe(random_state=seed).fit(X, y)
        return time.perf_counter() - start, probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--runs", default="cifar10:16:1,cifar10:16:2,tinyimagenet:4:1,tinyimagenet:4:2,"
                                          "tinyimagenet:16:1", help="dataset:shots:seed, comma-separated")
    parser.add_argument("--json")
    args = parser.parse_args()
    backbone, runs, sets = runs_and_sets(args.model, args.runs)
    print(f"# model {backbone.name}, fingerprint {backbone.fingerprint}, {os.cpu_count()} CPUs, parallel from "
          f"{linear_probe.PARALLEL_WORK:,} multiply-adds per product", flush=True)
    report = []
    for i, (name, shots, seed) in enumerate(runs):
        X, y, Xt, yt = sets[name][:4]
        rows = sample_shots(y, shots, seed=seed)
        row = {"dataset": name, "shots": shots, "seed": seed}
        for sequential in ((True, False) if i % 2 == 0 else (False, True)):
            seconds, probe = fit(X[rows], y[rows], seed, sequential)
            side = "sequential" if sequential else "shipped"
            row |= {f"{side}_s": round(seconds, 2), f"{side}_C": probe.chosen_["C"],
                    f"{side}_top1": round(float(probe.score(Xt, yt)), 4)}
        row["speedup"] = round(row["sequential_s"] / row["shipped_s"], 2)
        report.append(row)
        print(json.dumps(row), flush=True)
    same = sum(r["sequential_C"] == r["shipped_C"] and r["sequential_top1"] == r["shipped_top1"] for r in report)
    print(f"# same C and top-1 in {same} of {len(report)} runs", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
