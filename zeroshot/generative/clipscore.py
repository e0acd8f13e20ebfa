"""CLIPScore and RefCLIPScore (Hessel et al., EMNLP 2021) on precomputed image and text embeddings: how well each
image matches its own caption or prompt, with no reference image set.

``CLIP-S(c, v) = w · max(cos(c, v), 0)`` with w = 2.5 (the paper); torchmetrics' ``CLIPScore`` reports
``100 · max(cos, 0)``, which :func:`clip_score_summary` gives too, under its own name.
"""
from __future__ import annotations

import numpy as np

from ..features import check_features, normalise_rows

PAPER_W = 2.5  # Hessel et al.: stretches the cosines CLIP gives captions (~0..0.4) over ~0..1
TORCHMETRICS_W = 100.0


def _unit64(X, name: str, dim: int | None = None) -> np.ndarray:
    """Checked features as float64 unit rows; all-zero rows are refused (no direction, no cosine)."""
    X = check_features(X, dim=dim, name=name).astype(np.float64)
    if not np.einsum("ij,ij->i", X, X).all():
        raise ValueError(f"{name} has all-zero rows, which have no direction: re-encode those samples or drop them")
    return normalise_rows(X)


def _paired(image_features, text_features, text_name: str) -> tuple[np.ndarray, np.ndarray]:
    images = _unit64(image_features, "image_features")
    texts = _unit64(text_features, text_name, dim=images.shape[1])
    if len(texts) != len(images) or not len(images):
        raise ValueError(f"{len(images)} image rows and {len(texts)} {text_name} rows: give one or more pairs, "
                         "row i of each")
    return images, texts


def _cosines(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Row-wise cosine of unit rows."""
    return np.einsum("ij,ij->i", A, B)


def clip_score(image_features, text_features, w: float = PAPER_W) -> np.ndarray:
    """Per pair (row i of each): ``w · max(cos(image_i, text_i), 0)``, rows L2-normalised first (Hessel et al.)."""
    return w * np.maximum(_cosines(*_paired(image_features, text_features, "text_features")), 0)


def clip_score_summary(image_features, text_features, w: float = PAPER_W) -> dict:
    """Mean and standard deviation (ddof = 0) of CLIPScore over n pairs in both scalings: ``clip_score`` is
    ``w · max(cos, 0)`` (Hessel et al., w = 2.5), ``clip_score_x100`` is ``100 · max(cos, 0)`` (torchmetrics)."""
    clipped = clip_score(image_features, text_features, w=1.0)
    mean, std = float(clipped.mean()), float(clipped.std())
    return {"clip_score": w * mean, "clip_score_std": w * std, "w": w,
            "clip_score_x100": TORCHMETRICS_W * mean, "clip_score_x100_std": TORCHMETRICS_W * std,
            "n": len(clipped)}


def _owners(reference_owner, n_references: int, n_samples: int) -> np.ndarray:
    """``reference_owner`` checked: one sample index per reference row, every sample owning at least one."""
    owner = np.asarray(reference_owner)
    if owner.shape != (n_references,) or owner.dtype.kind not in "iu":
        raise ValueError(f"reference_owner must be {n_references} integer sample indices (one per reference row), "
                         f"got {owner.dtype} of shape {owner.shape}")
    if n_references and (owner.min() < 0 or owner.max() >= n_samples):
        raise ValueError(f"reference_owner holds indices outside 0..{n_samples - 1}: each must name a candidate row")
    orphans = np.flatnonzero(np.bincount(owner, minlength=n_samples) == 0)
    if len(orphans):
        raise ValueError(f"{len(orphans)} samples have no reference (first: {orphans[:5].tolist()}): give each at "
                         "least one, or use clip_score for reference-free scoring")
    return owner


def ref_clip_score(image_features, candidate_features, reference_features, reference_owner,
                   w: float = PAPER_W) -> np.ndarray:
    """RefCLIPScore per sample (Hessel et al.): the harmonic mean of ``CLIP-S(candidate, image)`` (w-scaled) and
    ``max(max over the sample's references of cos(candidate, reference), 0)``; 0 when either is 0.

    ``reference_owner[j]`` is the sample (row of images and candidates) that reference row j belongs to. The
    authors' code (``get_refonlyclipscore``) leaves the reference term unclipped; this follows the paper's
    formula, which clips it at 0."""
    images, candidates = _paired(image_features, candidate_features, "candidate_features")
    references = _unit64(reference_features, "reference_features", dim=images.shape[1])
    owner = _owners(reference_owner, len(references), len(candidates))
    best = np.full(len(candidates), -np.inf)
    np.maximum.at(best, owner, _cosines(candidates[owner], references))
    text = np.maximum(best, 0)
    image = w * np.maximum(_cosines(images, candidates), 0)
    total = image + text
    return np.divide(2 * image * text, total, out=np.zeros_like(total), where=total > 0)
