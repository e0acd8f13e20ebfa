"""Every generated-vs-real metric on two feature matrices at once: what ``zeroshot gen-eval`` reports
(``shared/methods/generated_image_eval.md``): Fréchet distance with its bootstrap CI, small-sample floor and
curve over N; precision / recall / density / coverage; CLIPScore / RefCLIPScore with prompts; class consistency
and a per-class breakdown with labels."""
from __future__ import annotations

import numpy as np

from ..metrics import per_class_recall
from .clipscore import clip_score_summary, ref_clip_score
from .frechet import bootstrap_frechet, frechet_distance, frechet_floor, frechet_vs_n
from .manifold import manifold_metrics

FD_SIZES = (250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


def fd_sizes(n: int) -> list[int]:
    """Sample sizes for the FD-vs-N curve: the standard steps below ``n``, then ``n`` itself."""
    return [s for s in FD_SIZES if s < n] + [n]


def class_consistency(G: np.ndarray, labels: np.ndarray, W: np.ndarray, class_names: list[str]) -> dict:
    """Zero-shot top-1 of the rows of G against their intended ``labels`` (indices into ``class_names``, whose
    embeddings are ``W``), overall and per class; chance is 1 / C."""
    predicted = np.argmax(G @ W.T, axis=1)
    recall = per_class_recall(labels, predicted, len(class_names))
    counts = np.bincount(labels, minlength=len(class_names))
    return {"accuracy": float((predicted == labels).mean()), "chance": 1 / len(class_names),
            "per_class": {name: float(r) for name, r, n in zip(class_names, recall, counts) if n},
            "n_per_class": {name: int(n) for name, n in zip(class_names, counts) if n}}


def per_class_metrics(R: np.ndarray, G: np.ndarray, reference_labels: np.ndarray, generated_labels: np.ndarray,
                      class_names: list[str], k_pr: int, k_dc: int) -> dict:
    """FD and the manifold metrics within each class present on both sides with more than ``max(k)`` rows (FD at
    these sizes is far above its large-N value: compare classes with each other, not with the overall FD)."""
    result = {}
    for c, name in enumerate(class_names):
        real, generated = R[reference_labels == c], G[generated_labels == c]
        if min(len(real), len(generated)) > max(k_pr, k_dc):
            result[name] = {"fd": frechet_distance(real, generated),
                            **manifold_metrics(real, generated, k_pr=k_pr, k_dc=k_dc)}
    return result


def evaluate_generated(generated, reference, *, generated_labels: np.ndarray | None = None,
                       reference_labels: np.ndarray | None = None, class_names: list[str] | None = None,
                       class_embeddings: np.ndarray | None = None, prompts: np.ndarray | None = None,
                       references: np.ndarray | None = None, reference_owner: np.ndarray | None = None,
                       n_boot: int = 100, k_pr: int = 3, k_dc: int = 5, seed: int = 0) -> dict:
    """The metrics of generated image features against reference (real) ones, both L2-normalised rows of one
    backbone. ``generated_labels`` / ``reference_labels``: intended / true classes (indices into ``class_names``;
    -1 = none) for class consistency (with ``class_embeddings``) and the per-class breakdown; ``prompts``: one text
    embedding per generated row (CLIPScore), with ``references`` and their ``reference_owner`` rows
    (RefCLIPScore)."""
    G, R = np.asarray(generated, np.float32), np.asarray(reference, np.float32)
    fd = bootstrap_frechet(R, G, n_boot=n_boot, seed=seed)
    result = {
        "n_generated": len(G), "n_reference": len(R),
        "features": "L2-normalised image embeddings (FD_CLIP convention)",
        "frechet_distance": {**fd, "floor_reference_halves": frechet_floor(R, seed=seed),
                             "floor_n": len(R) // 2, "vs_n": frechet_vs_n(R, G, fd_sizes(min(len(R), len(G))),
                                                                         seed=seed)},
        "manifold": manifold_metrics(R, G, k_pr=k_pr, k_dc=k_dc),
    }
    if prompts is not None:
        result["clip_score"] = clip_score_summary(G, prompts)
        if references is not None:
            scores = ref_clip_score(G, prompts, references, reference_owner)
            result["ref_clip_score"] = {"ref_clip_score": float(scores.mean()), "n": len(scores)}
    labelled = generated_labels is not None and class_names is not None
    if labelled and class_embeddings is not None:
        keep = generated_labels >= 0
        result["class_consistency"] = {"generated": class_consistency(G[keep], generated_labels[keep],
                                                                      class_embeddings, class_names)}
        if reference_labels is not None and (reference_labels >= 0).any():
            keep = reference_labels >= 0
            result["class_consistency"]["reference"] = class_consistency(R[keep], reference_labels[keep],
                                                                         class_embeddings, class_names)
    if labelled and reference_labels is not None:
        result["per_class"] = per_class_metrics(R, G, reference_labels, generated_labels, class_names, k_pr, k_dc)
    return result
