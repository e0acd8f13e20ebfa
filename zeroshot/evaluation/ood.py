"""OOD evaluation: detectors built by name from what the user has (class embeddings, ID training features, a
negation map), and the report of an evaluation (tables, ROC curves, score histograms). Used by ``zeroshot ood``
and ``scripts/bench_ood.py``."""
from __future__ import annotations

import csv
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from ..heads.registry import REGISTRY, canonical_name, names, spec_for

DETECTORS = names("ood")
FEATURE_DETECTORS = tuple(n for n in DETECTORS if "features" in REGISTRY[n].needs)  # fitted on ID image features
CLIPN_DETECTORS = tuple(n for n in DETECTORS if "no_class_embeddings" in REGISTRY[n].needs)  # need a negation map


def fit_detector(name: str, *, logit_scale: float, class_embeddings=None, no_class_embeddings=None,
                 class_names=None, train=None):
    """A fitted detector by registry name (``_`` spellings accepted): text detectors from ``class_embeddings``
    (+ ``no_class_embeddings`` for CLIPN), feature detectors from the ``train`` FeatureSet (its labels feed
    Mahalanobis when every row has one); every detector that takes a logit scale gets the backbone's. A missing input is the
    registry's error, which says what to give."""
    spec = spec_for(name, "ood")
    inputs = {"class_embeddings": class_embeddings, "no_class_embeddings": no_class_embeddings,
              "class_names": class_names}
    if train is not None:
        labels = np.asarray(train.labels)
        inputs |= {"features": train.features, "labels": labels if len(labels) and (labels >= 0).all() else None}
    return spec.fit(spec.build(logit_scale=logit_scale), **inputs)


def choose_detectors(spec: str, *, have_classes: bool, have_train: bool,
                     have_negation: bool) -> tuple[list[str], list[str]]:
    """(detectors to run, notes on the ones 'all' leaves out): 'all' means every detector the inputs allow."""
    if spec != "all":
        chosen = [canonical_name(n) for n in spec.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detectors {unknown}; choose from {', '.join(DETECTORS)} or 'all'")
        return chosen, []
    chosen, notes = [], []
    for name in DETECTORS:
        if name not in FEATURE_DETECTORS and not have_classes:
            notes.append(f"{name}: skipped, needs --card or --classes")
        elif name in FEATURE_DETECTORS and not have_train:
            notes.append(f"{name}: skipped, needs --train ID images")
        elif name in CLIPN_DETECTORS and not have_negation:
            notes.append(f"{name}: skipped, needs --negation (zeroshot ood train-clipn)")
        else:
            chosen.append(name)
    return chosen, notes


def run_detectors(names: list[str], X_id, ood_sets: dict, *, logit_scale: float, train=None, progress: bool = False,
                  **side) -> tuple[list[dict], dict[str, dict[str, np.ndarray]]]:
    """Fit each detector of ``names`` (:func:`fit_detector`, ``side``: its text inputs) and score the ID and every
    OOD set with it, one detector after the other: (rows, scores) as :func:`~zeroshot.ood_metrics.evaluate_detectors`.
    ``progress``: a line per detector on stderr as it finishes, ``[2/9] energy: cifar100 AUROC 91.20 / FPR95 40.10
    (0.3 s)``, so a long evaluation shows where it is (``zeroshot fewshot`` does the same per fit)."""
    from ..ood_metrics import evaluate_detectors

    rows, scores = [], {}
    for done, name in enumerate(names, 1):
        start = time.perf_counter()
        detector = fit_detector(name, logit_scale=logit_scale, train=train, **side)
        new_rows, new_scores = evaluate_detectors({name: detector}, X_id, ood_sets)
        rows += new_rows
        scores |= new_scores
        if progress:
            results = ", ".join(f"{r['ood']} AUROC {100 * r['auroc']:.2f} / FPR95 {100 * r['fpr95']:.2f}"
                                for r in new_rows)
            print(f"[{done}/{len(names)}] {name}: {results} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return rows, scores


def write_report(out: Path, rows: list[dict], scores: dict, meta: dict) -> None:
    """results.json (meta + rows), results.csv, results.md, one ROC PNG per OOD set, one histogram PNG per detector;
    the plots' titles name the ID data (``meta["card"]``, else ``meta["id"]``) and the model."""
    from ..ood_metrics import markdown_table, plot_roc, plot_score_histograms
    from ..plotting import run_title

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**meta, "results": rows}, indent=1))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(markdown_table(rows) + "\n")
    run = run_title(meta.get("card"), meta["id"], meta["model"], meta["fingerprint"])
    for ood_name in dict.fromkeys(r["ood"] for r in rows):
        pairs = {d: (s["ID"], s[ood_name]) for d, s in scores.items()}
        plot_roc(pairs, out / f"roc_{_slug(ood_name)}.png", title=f"{run}\nID vs OOD {ood_name}")
    for detector, per_set in scores.items():
        plot_score_histograms(per_set, out / f"hist_{_slug(detector)}.png", title=f"{run}\n{detector} scores")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")
