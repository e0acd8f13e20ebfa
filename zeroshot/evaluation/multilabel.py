"""Multi-label zero-shot classification: CLIP_benchmark's mean average precision, targets read from a 0/1 table or
derived from captions by the concept matcher, and the evaluation of a backbone on a caption dataset.

CLIP_benchmark (``clip_benchmark/metrics/zeroshot_classification.py``, ``average_precision_per_class``) ranks the
N images by each class's score, takes the precision at every rank (true positives so far / rank), sums it at the
ranks of the positives and divides by max(positives, 1); ``mean_average_precision`` averages that over all classes,
a class without positives counting 0 (as it does there, e.g. for voc2007_multilabel).
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from ..concepts.matching import CaptionIndex, Concept, count_concepts
from ..retrieval.search import match_captions, read_captions
from .retrieval import caption_dataset

ID_COLUMNS = ("id", "image")  # the first column of a targets table, named either way


def average_precision_per_class(scores, targets) -> np.ndarray:
    """(C,) AP_c = sum over class c's positives of precision@rank / max(P_c, 1), images ranked by descending score.

    One stable argsort of the (N, C) scores ranks every class at once; tied scores keep row order (CLIP_benchmark's
    ``torch.sort`` leaves their order unspecified; scikit-learn's ``average_precision_score`` scores a tie as one
    group, so the two agree on tie-free scores)."""
    from ..heads.multilabel import check_targets

    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or not np.isfinite(scores).all():
        raise ValueError(f"scores must be a finite (N, C) matrix, got shape {scores.shape}")
    order = np.argsort(-scores, axis=0, kind="stable")
    hits = np.take_along_axis(check_targets(targets, scores.shape, "targets"), order, axis=0)
    precision = np.cumsum(hits, axis=0) / np.arange(1, len(hits) + 1)[:, None]
    return (precision * hits).sum(axis=0) / np.maximum(hits.sum(axis=0), 1)


def random_average_precision(positives, n: int) -> np.ndarray:
    """Expected AP of random scores for P positives among n images (0 for P = 0): with H_n the n-th harmonic number,
    E[AP] = H_n / n + (P - 1) / (n - 1) * (1 - H_n / n), a little above the prevalence P / n. It follows from
    AP = 1/P sum_k hit_k / k sum_{j<=k} hit_j with E[hit_k] = P / n and E[hit_j hit_k] = P (P - 1) / (n (n - 1))."""
    positives = np.asarray(positives, dtype=np.float64)
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    share = (positives - 1) / (n - 1) if n > 1 else np.zeros_like(positives)
    return np.where(positives > 0, harmonic / n + share * (1 - harmonic / n), 0.0)


def multilabel_metrics(scores, targets, class_names: Sequence[str] | None = None) -> dict:
    """CLIP_benchmark's ``mean_average_precision``, each class's AP and positives, and the chance level: the expected
    mAP of random scores (:func:`random_average_precision`) and the mean prevalence."""
    ap = average_precision_per_class(scores, targets)
    positives = np.asarray(targets).sum(axis=0).astype(int)
    names = [str(c) for c in range(len(ap))] if class_names is None else list(class_names)
    if len(names) != len(ap):
        raise ValueError(f"{len(names)} class names for {len(ap)} score columns")
    n = len(np.asarray(scores))
    return {"mean_average_precision": float(ap.mean()),
            "chance_mean_average_precision": float(random_average_precision(positives, n).mean()),
            "mean_prevalence": float(positives.mean() / n),
            "per_class_average_precision": dict(zip(names, ap.tolist())),
            "positives_per_class": dict(zip(names, positives.tolist()))}


def caption_concept_targets(captions: str | os.PathLike, concepts: Sequence[str | Concept], *,
                            lemmatiser: str = "lemminflect") -> tuple[list[str], np.ndarray]:
    """(image names, (N, C) bool): concept c is present in an image when any of its captions mentions it, as the
    concept matcher counts mentions (lemmatised words, a multi-word name as a phrase: :func:`count_concepts`).

    ``captions``: a captions CSV (columns image, caption) or a caption dataset folder holding one. Images come in
    the order of their first caption; the targets say what the captions mention, not everything a photo shows."""
    path = Path(captions)
    images, texts = read_captions(caption_dataset(path)[1] if path.is_dir() else path)
    if not concepts:
        raise ValueError("no concepts given: name the classes whose presence the captions decide")
    counts = count_concepts(CaptionIndex.build(texts, lemmatiser), concepts, mode="phrase", captions=texts,
                            examples=0)
    names = list(dict.fromkeys(images))
    row_of = {name: row for row, name in enumerate(names)}
    caption_row = np.array([row_of[name] for name in images], dtype=np.int64)
    targets = np.zeros((len(names), len(counts)), dtype=bool)
    for column, count in enumerate(counts):
        targets[caption_row[count.caption_ids], column] = True
    return names, targets


def read_targets(path: str | os.PathLike, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(image ids, (N, C) bool) from a caption dataset folder or captions CSV (:func:`caption_concept_targets`), or
    from a table: a header ``id`` (or ``image``) then one column per class, each row an image id and 0/1 values."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"targets {path} do not exist; give a CSV of image ids and 0/1 per class, or a "
                                "caption folder / captions.csv")
    if path.is_dir():
        return caption_concept_targets(path, classes)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = rows[0] if rows else []
    if "caption" in header:
        return caption_concept_targets(path, classes)
    return _target_table(path, header, rows[1:], list(classes))


def _target_table(path: Path, header: list[str], rows: list[list[str]], classes: list[str]) -> tuple[list, np.ndarray]:
    """The rows of a targets table checked against ``classes``: columns, ids and values."""
    if not header or header[0] not in ID_COLUMNS:
        raise ValueError(f"{path}: the header must start with an 'id' (or 'image') column, then one column per class")
    unknown = [c for c in header[1:] if c not in classes]
    missing = [c for c in classes if c not in header[1:]]
    if unknown or missing:
        wrong = [f"{what} columns {names[:5]}" for what, names in (("unknown", unknown), ("missing", missing)) if names]
        raise ValueError(f"{path}: {' and '.join(wrong)}; after the id column give one column per class "
                         f"({', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''})")
    rows = [row for row in rows if row]
    ragged = [row[:1] for row in rows if len(row) != len(header)]
    if ragged:
        raise ValueError(f"{path}: rows {ragged[:3]} do not have the header's {len(header)} fields")
    ids = [row[0] for row in rows]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise ValueError(f"{path}: images {duplicates[:5]} have more than one row; give one row per image")
    values = np.array([row[1:] for row in rows], dtype=str).reshape(len(ids), len(header) - 1)
    if not np.isin(values, ("0", "1")).all():
        raise ValueError(f"{path}: class columns must hold 0 or 1 (absent / present)")
    columns = [header.index(c) - 1 for c in classes]
    return ids, values[:, columns] == "1"


def align_targets(ids: Sequence, target_ids: Sequence[str], targets: np.ndarray, *,
                  strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``ids``, their targets) for the target rows that name an image of ``ids``, by id or by the file name
    of exactly one id (as captions name images: :func:`match_captions`). ``strict``: a target row naming no image is
    a ValueError; otherwise such rows (e.g. of images that failed to decode) are left out."""
    try:
        owners, picks = match_captions(list(ids), list(target_ids), list(range(len(target_ids))))
    except ValueError:
        owners, picks = [], []
    if (strict and len(picks) < len(target_ids)) or not picks:
        unknown = sorted(set(range(len(target_ids))) - set(picks))
        raise ValueError(f"{len(unknown)} of the {len(target_ids)} targets name no image given (e.g. "
                         f"{[target_ids[i] for i in unknown[:3]]}, the images are e.g. {list(ids)[:2]}); give "
                         "targets for these images only, named by id or file name")
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    rows = np.array([row_of[owner] for owner in owners], dtype=np.int64)
    if len(np.unique(rows)) < len(rows):
        raise ValueError("two target rows name the same image (by id and by file name); keep one")
    return rows, np.asarray(targets)[picks]


def evaluate_multilabel(backbone, folder: str | os.PathLike, classes: Sequence[str], templates: Sequence[str], *,
                        cache_dir: str | os.PathLike | None | bool = None, extract_options: dict | None = None,
                        exclude: Collection[str] = ()) -> dict:
    """Multi-label zero-shot mAP of ``backbone`` on a caption dataset (``folder/images/`` + ``folder/captions.csv``),
    the targets of each captioned image derived from its captions (:func:`caption_concept_targets`).

    Images are scored by cosine to each class's prompt-ensembled embedding (AP only ranks, so the logit scale and
    any per-class calibration leave it unchanged). Features come from :func:`zeroshot.extract` and class embeddings
    from :func:`zeroshot.class_embeddings`, both cached (``cache_dir`` as there); ``extract_options``: further
    keyword arguments of ``extract``. Images without captions, images that failed to decode and images whose ids are
    in ``exclude`` (e.g. leaked into training data: ``zeroshot dedup``) are left out. Returns
    :func:`multilabel_metrics` with ``n_images``, ``n_classes``, ``n_excluded`` and ``failed`` (id -> reason)."""
    from ..extraction import extract
    from ..prompts import class_embeddings

    image_folder, captions_csv = caption_dataset(folder)
    names, targets = caption_concept_targets(captions_csv, classes)
    W = class_embeddings(backbone, list(classes), list(templates), cache_dir=cache_dir)
    fs = extract(backbone, image_folder, cache_dir=cache_dir, **(extract_options or {}))
    excluded = np.isin(fs.ids, sorted(exclude))
    fs = fs.subset(np.flatnonzero(~excluded))
    rows, targets = align_targets(fs.ids.tolist(), names, targets, strict=False)
    metrics = multilabel_metrics(np.asarray(fs.features)[rows] @ W.T, targets, classes)
    return {**metrics, "n_images": len(rows), "n_classes": len(classes), "n_excluded": int(excluded.sum()),
            "failed": fs.failed}


def plot_average_precision(metrics: dict, n_images: int, path: str | os.PathLike, title: str = "") -> None:
    """Per-class AP as horizontal bars, best class on top, each with its positives and a tick at its chance AP
    (:func:`random_average_precision`); the mAP and the chance mAP as vertical lines."""
    from matplotlib.figure import Figure

    ap = metrics["per_class_average_precision"]
    positives = metrics["positives_per_class"]
    names = sorted(ap, key=ap.get)
    chance = random_average_precision([positives[c] for c in names], n_images)
    fig = Figure(figsize=(8, 1.5 + 0.28 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(range(len(names)), [ap[c] for c in names], color="tab:blue", label="average precision")
    ax.scatter(chance, range(len(names)), marker="|", s=120, color="tab:red", label="chance (random scores)", zorder=3)
    ax.axvline(metrics["mean_average_precision"], color="tab:blue", ls="--",
               label=f"mAP {metrics['mean_average_precision']:.1%}")
    ax.axvline(metrics["chance_mean_average_precision"], color="tab:red", ls=":",
               label=f"chance mAP {metrics['chance_mean_average_precision']:.1%}")
    ax.set_yticks(range(len(names)), [f"{c} ({positives[c]})" for c in names], fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_xlabel("average precision")
    ax.set_ylabel(f"class (positive images of {n_images})")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=100)
