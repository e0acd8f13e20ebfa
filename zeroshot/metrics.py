"""Classification metrics with CLIP_benchmark's definitions (accuracies as fractions)."""
from __future__ import annotations

import numpy as np


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


def plot_confusion_matrix(cm, class_names: list[str], path, title: str = "") -> None:
    """Row-normalised confusion matrix as a PNG (drawn with Pillow: no plotting stack on the eval path)."""
    from PIL import Image, ImageDraw, ImageFont

    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    cell = max(4, min(40, 800 // max(n, 1)))
    font = ImageFont.load_default()
    labels = n <= 60
    margin = 8 + (max(len(c) for c in class_names) * 6 if labels else 0)
    top = margin + 20
    img = Image.new("RGB", (margin + n * cell + 10, top + n * cell + 30), "white")
    dark_blue = np.array([8, 48, 107])
    colors = 255 - norm[..., None] * (255 - dark_blue)  # 0 -> white, 1 -> dark blue
    grid = Image.fromarray(colors.round().astype(np.uint8), "RGB").resize((n * cell, n * cell), Image.Resampling.NEAREST)
    img.paste(grid, (margin, top))
    draw = ImageDraw.Draw(img)
    draw.text((margin, 4), f"{title}  (rows: true class, columns: predicted)", fill="black", font=font)
    if labels:
        column_names = Image.new("RGB", (margin, n * cell), "white")
        cdraw = ImageDraw.Draw(column_names)
        for k, name in enumerate(class_names):
            draw.text((4, top + k * cell + cell // 2 - 5), name, fill="black", font=font)
            cdraw.text((4, k * cell + cell // 2 - 5), name, fill="black", font=font)
        img.paste(column_names.rotate(90, expand=True), (margin, 20), None)
        if cell >= 24:
            for i in range(n):
                for j in range(n):
                    draw.text((margin + j * cell + 3, top + i * cell + cell // 2 - 5), f"{int(cm[i, j])}",
                              fill="white" if norm[i, j] > 0.5 else "black", font=font)
    img.save(path)
