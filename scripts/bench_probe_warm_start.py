"""Would warm starts speed up ``LinearProbe``'s C search at the same chosen C and accuracy? (issue 22)

Side by side on the default model's features: ``LinearProbe()`` as shipped (every search fit from zero, scikit-learn's
lbfgs, then one final fit at the chosen C) against the same bracket search where each fit starts from the solution
at the nearest C already fitted (``LogisticRegression(warm_start=True)``), the coarse grid fitted from the strongest
regularisation down so that it walks the regularisation path. Both use the same validation split, the same final
cold fit at their chosen C, and report wall seconds, the chosen C, test top-1 and the L-BFGS iterations per fit.

    python scripts/bench_probe_warm_start.py [--runs cifar10:16:1,cifar10:16:2,cifar10:16:3,tinyimagenet:4:1]
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
from bench_fewshot import runs_and_sets
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from zeroshot.evaluation.fewshot import sample_shots
from zeroshot.heads import LinearProbe
from zeroshot.heads._fewshot import carve_validation
from zeroshot.heads.linear_probe import LAMBDAS, bracket_search


def warm_search(X, y, X_val, y_val, max_iter: int = 1000, tol: float = 1e-4) -> tuple[float, dict[int, int]]:
    """The shipped :func:`bracket_search`, each fit started at its nearest fitted neighbour, the coarse grid fitted
    first from the strongest regularisation down (the search then finds those scores fitted). Returns (chosen C,
    iterations per grid index)."""
    solutions, scores, iterations = {}, {}, {}

    def score(j: int) -> float:
        if j not in scores:
            model = LogisticRegression(C=1 / LAMBDAS[j], max_iter=max_iter, tol=tol, warm_start=True)
            if solutions:
                model.coef_, model.intercept_ = solutions[min(solutions, key=lambda i: (abs(i - j), i))]
            model.fit(X.astype(np.float64), y)
            solutions[j], iterations[j] = (model.coef_, model.intercept_), int(model.n_iter_[0])
            scores[j] = float((model.predict(X_val) == y_val).mean())
        return scores[j]

    for j in range(0, len(LAMBDAS), 16)[::-1]:  # walk the regularisation path: strongest first
        score(j)
    best, _ = bracket_search(score)
    return 1 / LAMBDAS[best], iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--runs", default="cifar10:16:1,cifar10:16:2,cifar10:16:3,tinyimagenet:4:1",
                        help="dataset:shots:seed, comma-separated")
    parser.add_argument("--json")
    args = parser.parse_args()
    backbone, runs, sets = runs_and_sets(args.model, args.runs)
    print(f"# model {backbone.name}, fingerprint {backbone.fingerprint}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    report = []
    for i, (name, shots, seed) in enumerate(runs):
        X, y, Xt, yt = sets[name][:4]
        rows = sample_shots(y, shots, seed=seed)
        X, y = X[rows], y[rows]
        row = {"dataset": name, "shots": shots, "seed": seed}
        for side in (("cold", "warm") if i % 2 == 0 else ("warm", "cold")):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                if side == "cold":
                    probe = LinearProbe(random_state=seed).fit(X, y)
                    C = probe.chosen_["C"]
                else:  # the probe's own validation split, then the same final cold fit at the chosen C
                    fit, val = carve_validation(y, 0.25, seed)
                    C, iterations = warm_search(X[fit], y[fit], X[val], y[val])
                    row["warm_iterations"] = {f"{1 / LAMBDAS[j]:.3g}": n for j, n in sorted(iterations.items())}
                    probe = LinearProbe(C=C).fit(X, y)
            row |= {f"{side}_s": round(time.perf_counter() - start, 2), f"{side}_C": C,
                    f"{side}_top1": round(float(probe.score(Xt, yt)), 4)}
        report.append(row)
        print(json.dumps(row), flush=True)
    print(f"# warm vs cold: {sum(r['cold_s'] for r in report) / sum(r['warm_s'] for r in report):.2f}x faster "
          f"over all runs; same C in {sum(r['cold_C'] == r['warm_C'] for r in report)} of {len(report)}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
