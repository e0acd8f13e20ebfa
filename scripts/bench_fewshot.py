"""Few-shot benchmark on the default model's features, and the speed of the training-free heads.

Accuracy (CoOp-style protocol, ``zeroshot.evaluation.fewshot``): CIFAR-10 with shots drawn from train.npz and top-1 on
test.npz; Tiny ImageNet val split per class into the first 16 images (support pool) and the other 34 (test);
1/2/4/8/16 shots, seeds 1,2,3, every head; hyperparameters searched on a split of the shots only.
Speed: each training-free head fitted on the Tiny ImageNet support pool (16 shots x 200 classes, 384-d) with its
hyperparameters fixed (the validation search is timed separately), then predicting the 10,000 val features.
Calibration (CIFAR-10): temperature scaling of zero-shot and of GDA (16 shots, seed 1) logits, fitted on held-out
train.npz images, ECE on test.npz; EM prior correction on test.npz subsampled to a 10:1 label shift.
Solver timing (CIFAR-10, 16 shots, seed 1): the final fit of LinearProbe(C) against plain LogisticRegression(C) at
fixed C values, interleaved rounds, best of 15, with the largest coefficient difference.

    python scripts/bench_fewshot.py [--model default] [--sets cifar10,tinyimagenet] [--out bench_out/fewshot]
                                    [--seeds 1,2,3] [--shots 1,2,4,8,16] [--no-accuracy] [--no-calibration]
                                    [--no-speed] [--no-solver-timing]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

import zeroshot
from zeroshot.evaluation.fewshot import HEAD_NAMES, markdown_table, run_fewshot, sample_shots, split_per_class, write_report
from zeroshot.heads import (GDA, TEEN, CapSAdapter, LinearProbe, PriorCorrection, TemperatureScaling, TipAdapter,
                            ZeroShotClassifier, ZLaP, softmax)
from zeroshot.heads.calibration import calibration_metrics
from zeroshot.plotting import run_title

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_sets(backbone, cache, names: list[str]) -> dict:
    """name -> (support X, support y, test X, test y, class embeddings, description)."""
    sets = {}
    if "cifar10" in names:
        support = zeroshot.extract(backbone, DATA / "cifar10" / "train.npz", cache_dir=cache, progress=False)
        test = zeroshot.extract(backbone, DATA / "cifar10" / "test.npz", cache_dir=cache, progress=False)
        card = zeroshot.load_card("cifar10").select(test.classes)
        sets["cifar10"] = (support.features, support.labels, test.features, test.labels,
                           zeroshot.class_embeddings(backbone, card.classes, card.templates, cache_dir=cache),
                           "CIFAR-10: shots from cifar10/train.npz (2,000), top-1 on cifar10/test.npz (10,000)")
    if "tinyimagenet" in names:
        val = zeroshot.extract(backbone, DATA / "tinyimagenet" / "val", cache_dir=cache, progress=False)
        support_rows, test_rows = split_per_class(val.labels, 16)
        card = zeroshot.load_card("tinyimagenet").select(val.classes)
        sets["tinyimagenet"] = (val.features[support_rows], val.labels[support_rows], val.features[test_rows],
                                val.labels[test_rows],
                                zeroshot.class_embeddings(backbone, card.classes, card.templates, cache_dir=cache),
                                "Tiny ImageNet val: first 16 per class = support pool (3,200), other 34 = test "
                                "(6,800)")
    return {k: (np.asarray(a), b, np.asarray(c), d, e, f) for k, (a, b, c, d, e, f) in sets.items()}


def runs_and_sets(model: str, runs: str):
    """(backbone, [(dataset, shots, seed), ...], :func:`load_sets` of those datasets) from ``--model`` and a
    ``--runs`` string ``dataset:shots:seed,...``: what the probe benchmarks iterate over."""
    backbone = zeroshot.load_backbone(model, device="cpu")
    parsed = [(name, int(k), int(seed)) for name, k, seed in (r.split(":") for r in runs.split(","))]
    return backbone, parsed, load_sets(backbone, zeroshot.default_cache_dir(), sorted({name for name, _, _ in parsed}))


def median_time(fn, repeats: int = 5) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (all threads) over ``repeats`` runs after one warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return float(np.median(walls)), float(np.median(cpus))


def speed(backbone, cache) -> list[dict]:
    """Fit on 16 x 200 Tiny ImageNet shots (fixed hyperparameters), predict all 10,000 val features."""
    val = zeroshot.extract(backbone, DATA / "tinyimagenet" / "val", cache_dir=cache, progress=False)
    X_all = np.asarray(val.features)
    support_rows, _ = split_per_class(val.labels, 16)
    X, y = X_all[support_rows], val.labels[support_rows]
    card = zeroshot.load_card("tinyimagenet").select(val.classes)
    W = zeroshot.class_embeddings(backbone, card.classes, card.templates, cache_dir=cache)
    heads = {"zero-shot": (lambda: ZeroShotClassifier().fit(class_embeddings=W), None),
             "tip": (lambda: TipAdapter(alpha=1.0, beta=5.5).fit(X, y, class_embeddings=W), lambda: TipAdapter()),
             "gda": (lambda: GDA(alpha=0.1).fit(X, y, class_embeddings=W), lambda: GDA()),
             "caps": (lambda: CapSAdapter(alpha=1.0, beta=5.5, gamma=1.0, delta=0.5).fit(X, y, class_embeddings=W),
                      lambda: CapSAdapter()),
             "teen": (lambda: TEEN(tau=16.0, shift=0.5).fit(X, y, class_embeddings=W), lambda: TEEN()),
             "zlap-inductive": (lambda: ZLaP().fit(X, class_embeddings=W), None)}
    rows = []
    for name, (fit, searched) in heads.items():
        head = fit()
        fit_wall, fit_cpu = median_time(fit)
        predict_wall, predict_cpu = median_time(lambda: head.decision_function(X_all))
        row = {"head": name, "fit_s": fit_wall, "fit_cpu_s": fit_cpu, "predict_10k_s": predict_wall,
               "predict_10k_cpu_s": predict_cpu, "search_s": None}
        if searched is not None:
            row["search_s"] = searched().fit(X, y, class_embeddings=W).search_["seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    zlap_t = median_time(lambda: ZLaP().fit(X_all, class_embeddings=W), repeats=3)
    rows.append({"head": "zlap (transductive, graph on all 10,000)", "fit_s": zlap_t[0], "fit_cpu_s": zlap_t[1],
                 "predict_10k_s": 0.0, "predict_10k_cpu_s": 0.0, "search_s": None})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def solver_timing(backbone, cache, Cs=(1.0, 100.0, 1e4), seed: int = 1, shots: int = 16,
                  rounds: int = 15) -> list[dict]:
    """Final fit of ``LinearProbe(C)`` (scikit-learn's lbfgs on float64 features) against plain
    ``LogisticRegression(C, max_iter=1000)`` (the probe's max_iter and tol) on a CIFAR-10 support set, given the
    features as float32 (how they come; L-BFGS stops early there) and as float64 (the probe's model). Best wall
    time of ``rounds`` rounds, the order rotated each round; ratio = probe time / LogisticRegression time."""
    X, y = load_sets(backbone, cache, ["cifar10"])["cifar10"][:2]
    rows = sample_shots(y, shots, seed=seed)
    X, y = X[rows], y[rows]
    X64 = X.astype(np.float64)
    report = []
    for C in Cs:
        fits = {"probe": (LinearProbe(C=C), X), "sklearn_float32": (LogisticRegression(C=C, max_iter=1000), X),
                "sklearn_float64": (LogisticRegression(C=C, max_iter=1000), X64)}
        names, best = list(fits), dict.fromkeys(fits, np.inf)
        for r in range(rounds):
            for name in names[r % 3:] + names[:r % 3]:
                estimator, features = fits[name]
                start = time.perf_counter()
                estimator.fit(features, y)
                best[name] = min(best[name], time.perf_counter() - start)
        probe = fits["probe"][0]
        row = {"C": C, "seed": seed, "shots": shots, "n_iter": probe.n_iter_, **{f"{k}_s": v for k, v in best.items()}}
        for name in ("sklearn_float64", "sklearn_float32"):
            row[f"ratio_vs_{name}"] = best["probe"] / best[name]
            row[f"max_coef_diff_{name}"] = float(np.abs(probe.coef_ - fits[name][0].coef_).max())
        report.append(row)
        print(json.dumps(row), flush=True)
    return report


def calibration(backbone, cache) -> dict:
    """ECE_15 before / after temperature scaling (T fitted on train.npz rows that are not shots), and EM prior
    correction under a 10:1 label shift of the test set (class 0 keeps 1,000 images, the others 100)."""
    X, y, Xt, yt, W, _ = load_sets(backbone, cache, ["cifar10"])["cifar10"]
    shots = sample_shots(y, 16, seed=1)
    held_out = np.setdiff1d(np.arange(len(y)), shots)
    heads = {"zero-shot": ZeroShotClassifier(logit_scale=backbone.logit_scale).fit(class_embeddings=W),
             "gda (16 shots, seed 1)": GDA(random_state=1, logit_scale=backbone.logit_scale).fit(X[shots], y[shots],
                                                                                class_embeddings=W)}
    report = {}
    for name, head in heads.items():
        ts = TemperatureScaling().fit(head.decision_function(X[held_out]), y[held_out])
        logits = head.decision_function(Xt)
        before, after = calibration_metrics(softmax(logits), yt), calibration_metrics(ts.predict_proba(logits), yt)
        report[name] = {"temperature": ts.temperature_, "top1_before": float((logits.argmax(1) == yt).mean()),
                        "top1_after": float((ts.predict(logits) == yt).mean()),
                        **{f"{k}_before": v for k, v in before.items()}, **{f"{k}_after": v for k, v in after.items()}}
        print(json.dumps({"calibration": name, **report[name]}), flush=True)
    rows = np.concatenate([np.flatnonzero(yt == 0)] + [np.flatnonzero(yt == c)[:100] for c in range(1, 10)])
    zero_shot = heads["zero-shot"]
    ts = TemperatureScaling().fit(zero_shot.decision_function(X[held_out]), y[held_out])
    logits = ts.transform(zero_shot.decision_function(Xt[rows]))
    implicit = softmax(ts.transform(zero_shot.decision_function(X[held_out]))).mean(axis=0)  # on balanced images
    report["label shift 10:1, zero-shot + TS"] = {"n": len(rows), "true_prior_class0": float((yt[rows] == 0).mean()),
                                                  "top1_before": float((logits.argmax(1) == yt[rows]).mean())}
    for source, prior in (("uniform", None), ("implicit (mean prediction on held-out train)", implicit)):
        em = PriorCorrection(method="em", source_prior=prior).fit(logits)
        report["label shift 10:1, zero-shot + TS"][f"em, source prior {source}"] = {
            "top1": float((em.predict(logits) == yt[rows]).mean()), "estimated_prior_class0": float(em.prior_[0])}
    print(json.dumps({"calibration": "label shift 10:1", **report["label shift 10:1, zero-shot + TS"]}), flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--sets", default="cifar10,tinyimagenet")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--shots", default="1,2,4,8,16")
    parser.add_argument("--heads", default=",".join(HEAD_NAMES))
    parser.add_argument("--out", default="bench_out/fewshot")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--no-calibration", action="store_true")
    parser.add_argument("--no-solver-timing", action="store_true")
    args = parser.parse_args()
    backbone = zeroshot.load_backbone(args.model, device="cpu")
    cache = zeroshot.default_cache_dir()
    seeds, shots = [int(s) for s in args.seeds.split(",")], [int(k) for k in args.shots.split(",")]
    heads = [h for h in args.heads.split(",") if h]
    print(f"# model {backbone.name}, fingerprint {backbone.fingerprint}, seeds {seeds}, shots {shots}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    out = Path(args.out)
    if not args.no_accuracy:
        for name, (X, y, Xt, yt, W, description) in load_sets(backbone, cache, args.sets.split(",")).items():
            print(f"# dataset {description}", flush=True)
            start = time.perf_counter()
            rows = run_fewshot(X, y, Xt, yt, W, shots=shots, seeds=seeds, heads=heads,
                               logit_scale=backbone.logit_scale, progress=True)
            meta = {"model": backbone.name, "fingerprint": backbone.fingerprint, "dataset": description,
                    "seeds": seeds, "shots": shots, "heads": heads, "seconds": round(time.perf_counter() - start, 1)}
            summary = write_report(rows, out / name, meta,
                                   title=run_title(name, name, backbone.name, backbone.fingerprint))
            print(markdown_table(summary), flush=True)
    if not args.no_calibration:
        print("# calibration: CIFAR-10, T fitted on the 1,840 train.npz images that are not shots of seed 1",
              flush=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "calibration.json").write_text(json.dumps(calibration(backbone, cache), indent=1))
    if not args.no_speed:
        print(f"# speed: Tiny ImageNet 16 shots x 200 classes, 384-d; predict 10,000; load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        rows = speed(backbone, cache)
        out.mkdir(parents=True, exist_ok=True)
        (out / "speed.json").write_text(json.dumps({"fingerprint": backbone.fingerprint, "rows": rows,
                                                    "load_average": os.getloadavg()}, indent=1))
    if not args.no_solver_timing:
        dataset = "CIFAR-10: 16 shots x 10 classes (seed 1) from cifar10/train.npz"
        print(f"# solver timing: final fit, LinearProbe(C) vs LogisticRegression(C); {dataset}; fingerprint "
              f"{backbone.fingerprint}; load average {os.getloadavg()[0]:.1f}", flush=True)
        rows = solver_timing(backbone, cache)
        out.mkdir(parents=True, exist_ok=True)
        (out / "solver_timing.json").write_text(json.dumps({"fingerprint": backbone.fingerprint, "dataset": dataset,
                                                            "rows": rows, "load_average": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
