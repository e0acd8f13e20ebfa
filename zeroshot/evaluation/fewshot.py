"""The few-shot protocol on cached features (CoOp style): for each shot count k and seed, sample k labelled shots
per class from a support set, fit every head on them, measure top-1 on a test set. Results go to CSV, JSON (mean
and std over seeds) and an accuracy-vs-shots PNG; ``zeroshot fewshot`` runs it from the command line."""
from __future__ import annotations

import csv
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ..heads.registry import REGISTRY, canonical_name, names, spec_for

HEAD_NAMES = names("classifier")  # every registered classifier runs in the protocol
SUPERVISED = tuple(n for n in HEAD_NAMES if "labels" in REGISTRY[n].needs)
LABEL_FREE = tuple(n for n in HEAD_NAMES if n not in SUPERVISED)  # no shots: one row each, shots = 0
DEFAULT_LOGIT_SCALE = 100.0  # CLIP's; the CLI passes the backbone's own


def new_head(name: str, seed: int, logit_scale: float = DEFAULT_LOGIT_SCALE):
    """An unfitted head of the protocol, seeded with the run's seed; every head that takes a logit scale gets
    ``logit_scale`` (the backbone's, as ``eval`` and ``ood`` use)."""
    return spec_for(name, "classifier").build(random_state=seed, logit_scale=logit_scale)


def sample_shots(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of k rows per class, drawn without replacement with ``seed``; a class with fewer rows is an error."""
    counts = np.bincount(labels)
    short = np.flatnonzero((counts > 0) & (counts < k))
    if short.size:
        raise ValueError(f"{k}-shot sampling needs {k} support images per class; classes {short[:10].tolist()} have "
                         f"only {counts[short[:10]].tolist()}")
    from ..heads._fewshot import class_ranks

    order, rank = class_ranks(labels, seed)
    return np.sort(order[rank < k])


def split_per_class(labels: np.ndarray, n_support: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of a single-split dataset: the first ``n_support`` rows of each class (dataset order)
    form the support pool, the rest the test set."""
    from ..heads._fewshot import class_ranks

    order, rank = class_ranks(labels, None)
    counts = np.bincount(labels)
    if (counts[counts > 0] <= n_support).any():
        raise ValueError(f"--support-per-class {n_support} leaves no test images for some classes "
                         f"(smallest class has {counts[counts > 0].min()})")
    return np.sort(order[rank < n_support]), np.sort(order[rank >= n_support])


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _label_free_row(name: str, support_X, test_X, test_y, W, logit_scale: float) -> dict:
    """A head without labels: fitted on the class embeddings and, when it takes images, on the unlabelled test set
    itself (transductive, e.g. ZLaP's graph) or on the UNLABELLED support pool (inductive, queries = the test
    set)."""
    spec = REGISTRY[name]
    head = new_head(name, 0, logit_scale)
    unlabelled = test_X if spec.transductive else support_X
    _, fit_s = _timed(lambda: spec.fit(head, features=unlabelled, class_embeddings=W))
    if spec.transductive:
        scores, predict_s = head.transductive_scores_, 0.0
    else:
        scores, predict_s = _timed(lambda: head.decision_function(test_X))
    return {"head": name, "shots": 0, "seed": "", "acc1": float((scores.argmax(axis=1) == test_y).mean()),
            "fit_s": fit_s, "predict_s": predict_s, "search": "none (no labels)", "val_accuracy": "", "chosen": {},
            "error": ""}


def _supervised_row(name: str, k: int, seed: int, X, y, test_X, test_y, W, logit_scale: float) -> dict:
    row = {"head": name, "shots": k, "seed": seed}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            head = new_head(name, seed, logit_scale)
            _, fit_s = _timed(lambda: REGISTRY[name].fit(head, features=X, labels=y, class_embeddings=W))
            pred, predict_s = _timed(lambda: head.predict(test_X))
        except ValueError as exc:  # e.g. GDA with one shot per class: no covariance can be estimated
            return {**row, "acc1": None, "fit_s": "", "predict_s": "", "search": "", "val_accuracy": "",
                    "chosen": {}, "error": str(exc)}
    notes = sorted({str(w.message) for w in caught})
    return {**row, "acc1": float((pred == test_y).mean()), "fit_s": fit_s, "predict_s": predict_s,
            "search": head.search_["source"], "val_accuracy": head.search_["val_accuracy"], "chosen": head.chosen_,
            "error": "; ".join(notes)}


def run_fewshot(support_X, support_y, test_X, test_y, class_embeddings, *, shots=(1, 2, 4, 8, 16), seeds=(1, 2, 3),
                heads=HEAD_NAMES, logit_scale: float = DEFAULT_LOGIT_SCALE, progress: bool = False) -> list[dict]:
    """One row per (head, shots, seed): top-1 on the test set, fit / predict seconds, the chosen hyperparameters
    and how they were found. Label-free heads get one row with shots = 0. Each head's own validation split is
    seeded with the run's seed; the test set never enters a fit (except ZLaP transductive, which is unlabelled).
    ``heads``: registry names (``_`` spellings accepted); ``logit_scale`` goes to every head that takes one."""
    heads = [canonical_name(h) for h in heads]
    unknown = [h for h in heads if h not in HEAD_NAMES]
    if unknown:
        raise ValueError(f"unknown heads {unknown}; choose from {', '.join(HEAD_NAMES)}")
    from ..heads._fewshot import check_labels

    support_y = check_labels(support_y, len(support_X), len(class_embeddings), name="support labels")
    test_y = check_labels(test_y, len(test_X), len(class_embeddings), name="test labels")
    rows = [_label_free_row(h, support_X, test_X, test_y, class_embeddings, logit_scale)
            for h in heads if h in LABEL_FREE]
    supervised = [h for h in heads if h in SUPERVISED]
    n_runs, done = len(shots) * len(seeds) * len(supervised), 0
    for k in shots:
        for seed in seeds:
            rows_k = sample_shots(support_y, k, seed)  # one draw of shots for every head
            X, y = support_X[rows_k], support_y[rows_k]
            for name in supervised:
                rows.append(_supervised_row(name, k, seed, X, y, test_X, test_y, class_embeddings, logit_scale))
                done += 1
                if progress:
                    acc = rows[-1]["acc1"]
                    print(f"[{done}/{n_runs}] {name} {k}-shot seed {seed}: "
                          + (f"top-1 {acc:.4f}" if acc is not None else f"not fitted: {rows[-1]['error']}"),
                          file=sys.stderr)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and sample std (ddof 1; 0 for one seed) of top-1 per (head, shots), over the ``n_seeds`` seeds that
    fitted; ``n_failed`` counts the seeds where the head refused a fit (``acc1`` None, e.g. GDA with one shot per
    class)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["head"], r["shots"]), []).append(r["acc1"])
    out = []
    for (head, shots), accs in groups.items():
        ok = np.array([a for a in accs if a is not None])
        out.append({"head": head, "shots": shots, "n_seeds": len(ok), "n_failed": len(accs) - len(ok),
                    "mean": float(ok.mean()) if len(ok) else None,
                    "std": float(ok.std(ddof=1)) if len(ok) > 1 else 0.0})
    return out


def markdown_table(summary: list[dict]) -> str:
    """Heads as rows, shot counts as columns, ``mean ± std`` in % (label-free heads in a 'no labels' column)."""
    shots = sorted({s["shots"] for s in summary if s["shots"]})
    cells = {(s["head"], s["shots"]): s for s in summary}
    heads = list(dict.fromkeys(s["head"] for s in summary))
    lines = ["| head | no labels | " + " | ".join(f"{k} shots" for k in shots) + " |",
             "|---|---|" + "---|" * len(shots)]
    for h in heads:
        row = []
        for k in [0] + shots:
            s = cells.get((h, k))
            row.append("" if s is None else "n/a" if not s["n_seeds"] else
                       f"{100 * s['mean']:.2f}" + (f" ± {100 * s['std']:.2f}" if s["n_seeds"] > 1 else ""))
        lines.append(f"| {h} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def plot_accuracy_vs_shots(summary: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Mean top-1 ± std over seeds against shots per class, log2 x-axis; label-free heads as horizontal lines.
    A head that failed to fit at a shot count for every seed (GDA at 1 shot: no covariance from one image per
    class) has no point there, so an x on the axis marks the gap and the legend says so; a shot count where only
    some seeds failed is named in the head's legend entry (its point averages the seeds that fitted)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    styles = iter(["--", ":", "-.", (0, (5, 1)), (0, (1, 3))])
    heads = list(dict.fromkeys(s["head"] for s in summary))
    n_failed_heads = 0  # heads that failed somewhere so far: their "no fit" notes stack instead of overlapping
    for colour, head in zip((f"C{k}" for k in range(len(heads))), heads):
        points = sorted((s for s in summary if s["head"] == head), key=lambda s: s["shots"])
        fitted = [s for s in points if s["n_seeds"]]
        if points[0]["shots"] == 0:
            if fitted:
                ax.axhline(100 * fitted[0]["mean"], linestyle=next(styles), linewidth=1.2, label=f"{head} (no labels)",
                           color="black" if head == "zero-shot" else colour)
            continue
        partly = [f"{s['n_failed']} of {s['n_failed'] + s['n_seeds']} seeds failed at {_count(s['shots'], 'shot')}"
                  for s in fitted if s["n_failed"]]
        if fitted:
            ax.errorbar([s["shots"] for s in fitted], [100 * s["mean"] for s in fitted],
                        yerr=[100 * s["std"] for s in fitted], marker="o", capsize=3, color=colour,
                        label=head + (f" ({'; '.join(partly)})" if partly else ""))
        failed = [s["shots"] for s in points if not s["n_seeds"]]
        if failed:  # on the x-axis (y in axes units), where no accuracy can be read into it
            on_axis = ax.get_xaxis_transform()
            ax.plot(failed, [0] * len(failed), "x", color=colour, markersize=10, markeredgewidth=2.5,
                    transform=on_axis, clip_on=False,
                    label=f"{head}: fit failed at {', '.join(_count(k, 'shot') for k in failed)} (every seed)")
            for k in failed:
                ax.text(k, 0.04 + 0.05 * n_failed_heads, f"{head}: no fit", color=colour, transform=on_axis,
                        fontsize=9, ha="center", va="bottom")
            n_failed_heads += 1
    shots = sorted({s["shots"] for s in summary if s["shots"]})
    seeds = max((s["n_seeds"] + s["n_failed"] for s in summary if s["shots"]), default=0)
    ax.set_xscale("log", base=2)
    ax.margins(x=0.1)  # room for a "no fit" note centred on the first or last shot count
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel(f"top-1 accuracy (%), mean ± std over {_count(seeds, 'seed')}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    fig.savefig(path, dpi=120)


def write_report(rows: list[dict], folder, meta: dict, title: str = "") -> dict:
    """``rows.csv`` (one line per fit), ``summary.json`` (meta, mean/std per head and shots, rows) and
    ``accuracy_vs_shots.png`` in ``folder``; returns the summary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fields = ["head", "shots", "seed", "acc1", "fit_s", "predict_s", "search", "val_accuracy", "chosen", "error"]
    with open(folder / "rows.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**r, "chosen": json.dumps(r["chosen"])} for r in rows)
    summary = summarise(rows)
    (folder / "summary.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    plot_accuracy_vs_shots(summary, folder / "accuracy_vs_shots.png", title)
    return summary
