"""Classification metrics with CLIP_benchmark's definitions (accuracies as fractions)."""
from __future__ import annotations

import os

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax with max-subtraction, in float64 for stability, returned as float32."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z.astype(np.float32)


def true_class_rank(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """0-based rank of the true class per row. Ties go to the lower class index, so rank 0 == argmax."""
    scores = np.asarray(scores)
    y = np.asarray(y)
    true = scores[np.arange(len(y)), y][:, None]
    lower_index = np.arange(scores.shape[1])[None, :] < y[:, None]
    return (scores > true).sum(axis=1) + ((scores == true) & lower_index).sum(axis=1)


def top_k_accuracy(scores: np.ndarray, y: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true class is among the k best; NaN when there are fewer than k classes."""
    if scores.shape[1] < k:
        return float("nan")
    return float((true_class_rank(scores, y) < k).mean())


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    return np.bincount(np.asarray(y) * n_classes + np.asarray(pred), minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def per_class_recall(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) correct_c / n_c per class (a class's zero-shot accuracy); NaN for classes absent from ``y``."""
    cm = confusion_matrix(y, pred, n_classes)
    support = cm.sum(axis=1)
    return np.divide(np.diag(cm), support, out=np.full(n_classes, np.nan), where=support > 0)


def mean_per_class_recall(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean over the classes present in ``y`` of correct_c / n_c (= sklearn's balanced_accuracy_score)."""
    return float(np.nanmean(per_class_recall(y, pred, n_classes)))


def classification_metrics(scores: np.ndarray, y: np.ndarray, class_names: list[str] | None = None) -> dict:
    """acc1, acc5, mean and per-class recall and the confusion matrix of labelled rows (label >= 0).

    ``per_class_recall`` maps each class name (its index as a string without ``class_names``) to its recall, None
    for a class with no labelled row (per-class zero-shot accuracy, e.g. for concept-frequency plots)."""
    y = np.asarray(y)
    keep = y >= 0
    if not keep.any():
        raise ValueError("no labelled samples to evaluate (all labels are -1)")
    scores, y = np.asarray(scores)[keep], y[keep]
    n_classes = scores.shape[1]
    if y.max() >= n_classes:
        raise ValueError(f"labels go up to {y.max()} but there are only {n_classes} classes")
    if class_names is not None and len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names for {n_classes} score columns")
    pred = scores.argmax(axis=1)
    recall = per_class_recall(y, pred, n_classes)
    names = class_names if class_names is not None else [str(c) for c in range(n_classes)]
    return {
        "n": int(len(y)),
        "acc1": top_k_accuracy(scores, y, 1),
        "acc5": top_k_accuracy(scores, y, 5),
        "mean_per_class_recall": float(np.nanmean(recall)),
        "per_class_recall": {name: None if np.isnan(r) else float(r) for name, r in zip(names, recall.tolist())},
        "confusion_matrix": confusion_matrix(y, pred, n_classes).tolist(),
    }


def zero_shot_metrics(features, labels, class_embeddings: np.ndarray, logit_scale: float,
                      class_names: list[str] | None = None) -> dict:
    """:func:`classification_metrics` of the zero-shot logits ``logit_scale * X @ W.T`` (what
    :class:`~zeroshot.heads.ZeroShotClassifier` scores), computed on the arrays alone: a cached evaluation needs
    NumPy only, not scikit-learn."""
    return classification_metrics(logit_scale * (np.asarray(features) @ np.asarray(class_embeddings).T), labels,
                                  class_names)


ANNOTATED_CLASSES = 40  # above this many classes the cells are too small for numbers: top_confusions lists them


def top_confusions(cm, class_names: list[str], k: int = 50) -> list[dict]:
    """The ``k`` most frequent mistakes, most images first: true class, predicted class, images, and their
    share of the true class (ties in the order of the matrix)."""
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    off = np.where(np.eye(len(cm), dtype=bool), 0, cm)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    return [{"true": class_names[i], "predicted": class_names[j], "images": int(off[i, j]),
             "share_of_true": float(off[i, j] / support[i])}
            for i, j in zip(*np.unravel_index(order, cm.shape)) if off[i, j]]


def plot_confusion_matrix(cm, class_names: list[str], path: str | os.PathLike, title: str = "",
                          normalize: str = "rows") -> None:
    """The confusion matrix as a PNG, rows = true class. ``normalize="rows"`` colours and labels each cell with
    its share of the true class (%: comparable across classes of any size), ``"none"`` with image counts.
    Up to ``ANNOTATED_CLASSES`` classes every cell carries its number; above, the cells are too small, so
    the ten most frequent mistakes are listed beside the matrix. A square-root colour scale keeps small
    confusions visible next to a strong diagonal."""
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    if normalize not in ("rows", "none"):
        raise ValueError(f"normalize must be 'rows' or 'none', got {normalize!r}")
    cm = np.asarray(cm)
    n = len(class_names)
    values = 100 * cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize == "rows" else cm
    annotate = n <= ANNOTATED_CLASSES
    side = max(6.0, 0.5 * n) if annotate else 0.14 * n  # inches: room for one label line per class
    big = side > 10  # text grows with the figure, so the whole PNG still reads at a glance
    fig = Figure(figsize=(side + (3.0 if annotate else 8.0), side + 2.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=max(values.max(), 1)),
                      interpolation="nearest")
    bar = fig.colorbar(image, cax=ax.inset_axes([1.03, 0.0, 0.03 if annotate else 0.015, 0.5]))
    bar.set_label("% of the true class" if normalize == "rows" else "images", fontsize=16 if big else 11)
    labels = [name if len(name) <= 24 else name[:23] + "…" for name in class_names]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=9 if annotate else 7)
    ax.set_yticks(range(n), labels, fontsize=9 if annotate else 7)
    ax.set_xlabel("predicted class", fontsize=16 if big else 11)
    ax.set_ylabel("true class", fontsize=16 if big else 11)
    ax.set_title(title, fontsize=20 if big else 12)
    if annotate:
        dark = values > 0.35 * values.max()
        for i, j in zip(*np.nonzero(cm)):
            v = values[i, j]
            ax.text(j, i, f"{v:.0f}" if v >= 0.95 or normalize == "none" else f"{v:.1f}", ha="center", va="center",
                    fontsize=8 if big else 11, color="white" if dark[i, j] else "black")
    else:
        lines = [f"{c['true']} → {c['predicted']}: {c['images']} ({100 * c['share_of_true']:.0f} %)"
                 for c in top_confusions(cm, class_names, 10)]
        ax.text(1.02, 1.0, "most frequent mistakes\n(true → predicted: images, % of the true class)\n\n"
                + "\n".join(lines), transform=ax.transAxes, va="top", fontsize=16)
    fig.savefig(path, dpi=100, bbox_inches="tight")
