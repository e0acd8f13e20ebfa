"""What our input checks cost: each OOD detector's ``score_samples`` and the zero-shot, linear-probe, GDA and
Tip-Adapter ``decision_function`` next to the plain NumPy (or faiss) formula on the same rows, and ``KNN.fit`` on all
the rows next to a plain faiss ``IndexFlatIP.add`` of them, on synthetic unit-row features (no model, no data set).
Prints the seed, the data and a Markdown table of median seconds over repeats.

    python scripts/bench_head_overhead.py [--rows 100000] [--dim 384] [--classes 10] [--repeats 7] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import time

import faiss
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


def plain_formulas(X: np.ndarray, W: np.ndarray, W_no: np.ndarray, s: float, fitted: dict) -> dict:
    """The scores written directly from the fitted heads' arrays, trusting X to be finite unit rows: the floor our
    heads are measured against."""
    probe, gda, tip, maha, knn = (fitted[n] for n in ("linear-probe", "gda", "tip", "mahalanobis", "knn"))

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
        "gda": lambda: (s * (X @ W.T) + gda.chosen_["alpha"] * (X @ gda.coef_.T + gda.intercept_)),
        "tip": lambda: s * (X @ W.T) + tip.chosen_["alpha"] * (
            np.exp(-tip.chosen_["beta"] * (1 - X @ tip.cache_keys_.T)) @ one_hot(tip.cache_labels_, len(W))),
        "mahalanobis": lambda: mahalanobis(X, maha),
        "knn": lambda: -np.sqrt(np.maximum(0, 2 - 2 * knn._search_index().search(X, knn.k_)[0][:, -1])),
    }


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[labels]


def mahalanobis(X: np.ndarray, head) -> np.ndarray:
    """``-min_c |(x - mu_c) L^-T|^2`` from the fitted whitener and means, as a user would write it."""
    z = (X - head.location_) @ head.whitener_
    m = (head.means_ - head.location_) @ head.whitener_
    return -((z * z).sum(axis=1)[:, None] - 2 * z @ m.T + (m * m).sum(axis=1)).min(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--id-rows", type=int, default=2000, help="ID features of Mahalanobis and kNN")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    W = normalise_rows(rng.standard_normal((args.classes, args.dim))).astype(np.float32)
    W_no = normalise_rows(rng.standard_normal((args.classes, args.dim))).astype(np.float32)
    X = normalise_rows(rng.standard_normal((args.rows, args.dim))).astype(np.float32)
    n_id = args.id_rows
    id_labels, s = np.arange(n_id) % args.classes, 39.6
    id_rows = normalise_rows(W[id_labels] + rng.standard_normal((n_id, args.dim))).astype(np.float32)
    shots = slice(16 * args.classes)  # the labels cycle through the classes: 16 shots each
    text = {"class_embeddings": W, "no_class_embeddings": W_no}
    few = {**text, "features": id_rows[shots], "labels": id_labels[shots]}
    inputs = {"mcm": text, "maxlogit": text, "energy": text, "clipn-ctw": text, "clipn-atd": text, "zero-shot": text,
              "linear-probe": few, "gda": few, "tip": few,
              "mahalanobis": {"features": id_rows, "labels": id_labels}, "knn": {"features": id_rows}}
    ours = {name: REGISTRY[name].fit(REGISTRY[name].build(logit_scale=s, C=1.0, random_state=args.seed), **given)
            for name, given in inputs.items()}
    plain = plain_formulas(X, W, W_no, s, ours)
    print(f"# seed {args.seed}; data: synthetic random unit rows, {args.rows:,} x {args.dim} float32, "
          f"{args.classes} classes (no model), {args.id_rows:,} ID rows for Mahalanobis / kNN (k = "
          f"{ours['knn'].k_}), 16 shots per class for the few-shot heads; median of {args.repeats} repeats; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| head | ours (s) | plain formula (s) | ratio |\n|---|---|---|---|")
    for name, head in ours.items():
        score = head.score_samples if REGISTRY[name].kind == "ood" else head.decision_function
        assert np.allclose(score(X), plain[name](), rtol=1e-4, atol=1e-4), name
        t_ours, t_plain = median_seconds(lambda: score(X), args.repeats), median_seconds(plain[name], args.repeats)
        print(f"| {name} | {t_ours:.4f} | {t_plain:.4f} | {t_ours / t_plain:.2f} |", flush=True)
    knn = REGISTRY["knn"].build(random_state=args.seed)
    t_ours = median_seconds(lambda: REGISTRY["knn"].fit(knn, features=X), args.repeats)
    t_plain = median_seconds(lambda: faiss.IndexFlatIP(args.dim).add(X), args.repeats)
    print(f"| knn fit on the {args.rows:,} rows (k = {knn.k_}) vs faiss IndexFlatIP.add | {t_ours:.4f} | {t_plain:.4f} | "
          f"{t_ours / t_plain:.2f} |", flush=True)


if __name__ == "__main__":
    main()
