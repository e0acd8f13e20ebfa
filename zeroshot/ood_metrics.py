"""OOD metrics with ID as the positive class (spec: methods/ood_scores.md 1), and ROC / score-histogram plots.

Scores are ID scores: higher = more in-distribution. Every threshold counts a sample as accepted when its score is
``>= tau``, so tied scores fall on the same side: AUROC gives ties half credit (Mann-Whitney), FPR95 is the FPR at
the largest threshold whose TPR reaches 95 % (this file's rule; MCM, OpenOOD, CLIPN and knn-ood each use another,
see the spec), and AUPR is step-wise average precision (scikit-learn's, not the trapezoid).
"""
from __future__ import annotations

import os

import numpy as np


def _check_scores(scores, name: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(scores)).sum())} NaN or inf scores")
    return scores


def _cumulative_counts(positive, negative) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, false positives, threshold) at every distinct score, thresholds descending."""
    scores = np.concatenate([positive, negative])
    is_positive = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    order = np.argsort(-scores, kind="stable")
    scores, is_positive = scores[order], is_positive[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # one point per distinct score
    tp = np.cumsum(is_positive)[last_of_each]
    return tp, last_of_each + 1 - tp, scores[last_of_each]


def roc_curve(score_id, score_ood) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, TPR, thresholds) with ID positive, from (0, 0) at threshold +inf down to (1, 1)."""
    score_id, score_ood = _check_scores(score_id, "score_id"), _check_scores(score_ood, "score_ood")
    tp, fp, thresholds = _cumulative_counts(score_id, score_ood)
    return np.r_[0.0, fp / len(score_ood)], np.r_[0.0, tp / len(score_id)], np.r_[np.inf, thresholds]


def auroc(score_id, score_ood) -> float:
    """P(ID score > OOD score) + 1/2 P(equal): the trapezoidal area under the ROC over distinct thresholds."""
    fpr, tpr, _ = roc_curve(score_id, score_ood)
    return float(np.trapezoid(tpr, fpr))


def _first_reaching(tpr: np.ndarray, target: float) -> int:
    if not 0 < target <= 1:
        raise ValueError(f"the target TPR must be in (0, 1], got {target}")
    return int(np.argmax(tpr >= target))  # the curve ends at TPR 1, so some point reaches it


def fpr_at_tpr(score_id, score_ood, tpr: float = 0.95) -> float:
    """FPR at the largest threshold whose TPR is >= ``tpr`` (ties on both sides counted as accepted)."""
    fpr_curve, tpr_curve, _ = roc_curve(score_id, score_ood)
    return float(fpr_curve[_first_reaching(tpr_curve, tpr)])


def threshold_at_tpr(score_id, tpr: float = 0.95) -> float:
    """The largest threshold that accepts (score >= threshold) at least ``tpr`` of the ID scores."""
    descending = np.sort(_check_scores(score_id, "score_id"))[::-1]
    at_least = np.arange(1, len(descending) + 1) / len(descending)  # TPR at threshold descending[i] is >= this
    return float(descending[_first_reaching(at_least, tpr)])


def average_precision(score_positive, score_negative) -> float:
    """Step-wise average precision: sum over thresholds of (recall step) x precision, as scikit-learn computes it."""
    tp, fp, _ = _cumulative_counts(_check_scores(score_positive, "positive scores"),
                                   _check_scores(score_negative, "negative scores"))
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * tp / (tp + fp)))


def ood_metrics(score_id, score_ood) -> dict:
    """AUROC, FPR@95%TPR, AUPR-In (ID positive), AUPR-Out (OOD positive, scores negated) as fractions, n_in, n_out."""
    score_id, score_ood = _check_scores(score_id, "score_id"), _check_scores(score_ood, "score_ood")
    return {"auroc": auroc(score_id, score_ood), "fpr95": fpr_at_tpr(score_id, score_ood, 0.95),
            "aupr_in": average_precision(score_id, score_ood), "aupr_out": average_precision(-score_ood, -score_id),
            "n_in": len(score_id), "n_out": len(score_ood)}


def evaluate_detectors(detectors: dict, X_id, ood_sets: dict) -> tuple[list[dict], dict[str, dict[str, np.ndarray]]]:
    """Score ID and every OOD set with every fitted detector: (one metrics row per detector x OOD set,
    ``scores[detector][set]`` with the ID set under ``"ID"``)."""
    rows, scores = [], {}
    for name, detector in detectors.items():
        scores[name] = {"ID": detector.score_samples(X_id)}
        for ood_name, X_ood in ood_sets.items():
            scores[name][ood_name] = detector.score_samples(X_ood)
            rows.append({"detector": name, "ood": ood_name, **ood_metrics(scores[name]["ID"], scores[name][ood_name])})
    return rows, scores


def markdown_table(rows: list[dict]) -> str:
    """Detectors as rows, OOD sets as columns, cells ``AUROC / FPR95`` in percent (the best AUROC per set in bold)."""
    detectors = list(dict.fromkeys(r["detector"] for r in rows))
    sets = list(dict.fromkeys(r["ood"] for r in rows))
    cell = {(r["detector"], r["ood"]): r for r in rows}
    best = {o: max(r["auroc"] for r in rows if r["ood"] == o) for o in sets}
    lines = ["| detector | " + " | ".join(f"{o} AUROC / FPR95" for o in sets) + " |",
             "|---|" + "---|" * len(sets)]
    for d in detectors:
        cells = []
        for o in sets:
            r = cell.get((d, o))
            text = f"{100 * r['auroc']:.2f} / {100 * r['fpr95']:.2f}" if r else "-"
            cells.append(f"**{text}**" if r and r["auroc"] == best[o] else text)
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, title: str = "") -> None:
    """One ROC line per name: ``curves[name] = (fpr, tpr)``; the 95 % TPR level is marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=name, linewidth=1.2)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="false positive rate (OOD accepted)", ylabel="true positive rate (ID accepted)", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_score_histograms(scores: dict[str, np.ndarray], path: str | os.PathLike, title: str = "") -> None:
    """Overlaid, density-normalised histograms of one detector's scores per dataset (ID first, then OOD sets)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    finite = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores.values()])
    bins = np.linspace(*np.quantile(finite, [0.001, 0.999]), 60) if np.ptp(finite) > 0 else 10
    for name, s in scores.items():
        ax.hist(s, bins=bins, density=True, histtype="stepfilled", alpha=0.35, label=f"{name} (n={len(s)})")
    ax.set(xlabel="score (higher = more in-distribution)", ylabel="density", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
