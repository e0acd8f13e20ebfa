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
    return _roc(tp, fp) + (np.r_[np.inf, thresholds],)


def _roc(tp: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


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


def _average_precision(tp: np.ndarray, fp: np.ndarray) -> float:
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * tp / (tp + fp)))


def average_precision(score_positive, score_negative) -> float:
    """Step-wise average precision: sum over thresholds of (recall step) x precision, as scikit-learn computes it."""
    tp, fp, _ = _cumulative_counts(_check_scores(score_positive, "positive scores"),
                                   _check_scores(score_negative, "negative scores"))
    return _average_precision(tp, fp)


def ood_metrics(score_id, score_ood) -> dict:
    """AUROC, FPR@95%TPR, AUPR-In (ID positive), AUPR-Out (OOD positive, scores negated) as fractions, n_in, n_out.
    One sort serves all four: the OOD-positive counts are the ID-positive ones read from the other end."""
    score_id, score_ood = _check_scores(score_id, "score_id"), _check_scores(score_ood, "score_ood")
    return _metrics(*_cumulative_counts(score_id, score_ood)[:2])


def _metrics(tp: np.ndarray, fp: np.ndarray) -> dict:
    fpr, tpr = _roc(tp, fp)
    n_in, n_out = int(tp[-1]), int(fp[-1])
    # OOD accepted at score <= t_k: n_out - #OOD above t_k, i.e. the counts one threshold up, in reverse order
    ood_tp, ood_fp = (n_out - np.r_[0.0, fp[:-1]])[::-1], (n_in - np.r_[0.0, tp[:-1]])[::-1]
    return {"auroc": float(np.trapezoid(tpr, fpr)), "fpr95": float(fpr[_first_reaching(tpr, 0.95)]),
            "aupr_in": _average_precision(tp, fp), "aupr_out": _average_precision(ood_tp, ood_fp),
            "n_in": n_in, "n_out": n_out}


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


def plot_roc(pairs: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, title: str = "") -> None:
    """One ROC line per name, ``pairs[name] = (score_id, score_ood)``, best AUROC first in the legend, each entry
    with its AUROC and FPR95 (%), and a dot where the line crosses 95 % TPR (its FPR95)."""
    from matplotlib.figure import Figure

    lines = []
    for name, (score_id, score_ood) in pairs.items():
        tp, fp, _ = _cumulative_counts(_check_scores(score_id, "score_id"), _check_scores(score_ood, "score_ood"))
        lines.append((_metrics(tp, fp), name, *_roc(tp, fp)))
    fig = Figure(figsize=(6, 6), layout="constrained")
    ax = fig.add_subplot()
    for m, name, fpr, tpr in sorted(lines, key=lambda line: -line[0]["auroc"]):
        line, = ax.plot(fpr, tpr, linewidth=1.4,
                        label=f"{name}: AUROC {100 * m['auroc']:.1f}, FPR95 {100 * m['fpr95']:.1f}")
        ax.plot(m["fpr95"], 0.95, "o", color=line.get_color(), markersize=4)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="false positive rate (OOD accepted)", ylabel="true positive rate (ID accepted)", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=8, loc="lower right", title="detector: AUROC, FPR95 (%)", title_fontsize=8)
    fig.savefig(path, dpi=110)


def plot_score_histograms(scores: dict[str, np.ndarray], path: str | os.PathLike, title: str = "",
                          tpr: float = 0.95) -> None:
    """Density histograms of one detector's scores per dataset, the ID set first (grey, filled) and each OOD set
    as a coloured outline, so overlaps stay readable; the dashed line is the threshold keeping ``tpr`` of the ID
    scores (the FPR95 rule), and each legend entry says what share of its set that threshold keeps."""
    from matplotlib.figure import Figure

    arrays = {name: np.asarray(s, dtype=np.float64) for name, s in scores.items()}
    threshold = threshold_at_tpr(next(iter(arrays.values())), tpr)
    finite = np.concatenate(list(arrays.values()))
    bins = np.linspace(*np.quantile(finite, [0.001, 0.999]), 60) if np.ptp(finite) > 0 else 10
    fig = Figure(figsize=(7, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for k, (name, s) in enumerate(arrays.items()):
        label = f"{name}, n={len(s)}: {100 * (s >= threshold).mean():.1f} % kept"
        if k == 0:
            ax.hist(s, bins=bins, density=True, histtype="stepfilled", color="0.8", edgecolor="0.4", label=label)
        else:
            ax.hist(s, bins=bins, density=True, histtype="step", linewidth=1.8, label=label)
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2,
               label=f"threshold keeping {100 * tpr:.0f} % of ID (FPR{100 * tpr:.0f} rule)")
    ax.set(xlabel="score (higher = more in-distribution)", ylabel="density", title=title)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)  # below the axes: never over a histogram
    fig.savefig(path, dpi=110)
