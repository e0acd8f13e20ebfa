"""What our input checks cost: each OOD detector's ``score_samples`` and the zero-shot and linear-probe
``decision_function`` next to the plain NumPy formula on the same rows, on synthetic unit-row features
(no model, no data set). Prints the seed, the data and a Markdown table of median seconds over repeats.

    python scripts/bench_head_overhead.py [--rows 100000] [--dim 384] [--classes 10] [--repeats 7] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from zeroshot.features import normalise_rows
from zeroshot.heads import REGISTRY


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def lse(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


def plain_formulas(X: np.ndarray, W: np.ndarray, W_no: np.ndarray, s: float, probe) -> dict:
    """The scores written directly, trusting X to be finite unit rows: the floor our heads are measured against."""
    def clipn(inference: str):
        cos = (X @ np.vstack([W, W_no]).T).astype(np.float64)
        yes, no = s * cos[:, :len(W)], s * cos[:, len(W):]
        log_p, z = yes - lse(yes)[:, None], yes - no
        if inference == "ctw":
            return np.take_along_axis(z, log_p.argmax(axis=1)[:, None], axis=1)[:, 0]
        return lse(log_p - np.logaddexp(0, -z)) - lse(log_p - np.logaddexp(0, z))

    return {
        "mcm": lambda: (lambda z: z.max(axis=1) - lse(z))((X @ W.T).astype(np.float64)),
        "maxlogit": lambda: (X @ W.T).max(axis=1),
        "energy": lambda: lse(s * (X @ W.T).astype(np.float64)),
        "clipn-ctw": lambda: clipn("ctw"),
        "clipn-atd": lambda: clipn("atd"),
        "zero-shot": lambda: s * (X @ W.T),
        "linear-probe": lambda: X @ probe.coef_.T + probe.intercept_,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    W = normalise_rows(rng.standard_normal((args.classes, args.dim))).astype(np.float32)
    W_no = normalise_rows(rng.standard_normal((args.classes, args.dim))).astype(np.float32)
    X = normalise_rows(rng.standard_normal((args.rows, args.dim))).astype(np.float32)
    shots = normalise_rows(W[np.arange(16 * args.classes) % args.classes]
                           + rng.standard_normal((16 * args.classes, args.dim))).astype(np.float32)
    labels, s = np.arange(16 * args.classes) % args.classes, 39.6
    inputs = {"classes": W, "no_classes": W_no, "features": shots, "labels": labels}
    ours = {name: REGISTRY[name].fit(REGISTRY[name].build(logit_scale=s, C=1.0), **inputs)
            for name in ("mcm", "maxlogit", "energy", "clipn-ctw", "clipn-atd", "zero-shot", "linear-probe")}
    plain = plain_formulas(X, W, W_no, s, ours["linear-probe"])
    print(f"# seed {args.seed}; data: synthetic random unit rows, {args.rows:,} x {args.dim} float32, "
          f"{args.classes} classes (no model); median of {args.repeats} repeats; {os.cpu_count()} CPUs")
    print("| head | ours (s) | plain formula (s) | ratio |\n|---|---|---|---|")
    for name, head in ours.items():
        score = head.score_samples if REGISTRY[name].kind == "ood" else head.decision_function
        assert np.allclose(score(X), plain[name](), rtol=1e-4, atol=1e-4), name
        t_ours, t_plain = median_seconds(lambda: score(X), args.repeats), median_seconds(plain[name], args.repeats)
        print(f"| {name} | {t_ours:.4f} | {t_plain:.4f} | {t_ours / t_plain:.2f} |", flush=True)


if __name__ == "__main__":
    main()
