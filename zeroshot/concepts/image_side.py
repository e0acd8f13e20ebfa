"""Image-side and integrated (image-text matched) concept counts from labelled training images.

The paper tags every pretraining image with RAM++; offline, a labelled image shows a concept when its label's
WordNet synset is the concept's or a descendant (:func:`zeroshot.concepts.wordnet.label_to_concepts`). An
unlabelled image (label -1, e.g. a Flickr photo of the default corpus) shows nothing we can vouch for.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def _keys_showing(key_concepts: Mapping[int, Iterable[str]]) -> dict[str, list[int]]:
    """Invert label (or image) -> concepts into concept -> labels (or images)."""
    keys: dict[str, list[int]] = {}
    for key, names in key_concepts.items():
        for name in names:
            keys.setdefault(name, []).append(int(key))
    return keys


def _total(mask: np.ndarray, weights: np.ndarray | None) -> float | int:
    """How many rows ``mask`` selects, or their summed weight."""
    return int(mask.sum()) if weights is None else float(weights[mask].sum(dtype=np.float64))


def image_counts(image_labels: Sequence[int] | np.ndarray, label_concepts: Mapping[int, Iterable[str]],
                 concepts: Iterable[str],
                 weights: Sequence[float] | np.ndarray | None = None) -> dict[str, float | int]:
    """Per concept, the number of images whose label shows it (or their summed ``weights``, e.g. visits per epoch).

    ``label_concepts`` is :func:`~zeroshot.concepts.wordnet.label_to_concepts`'s output; labels < 0 show nothing.
    """
    labels = np.asarray(image_labels)
    w = None if weights is None else np.asarray(weights, dtype=float)
    keys = _keys_showing(label_concepts)
    return {name: _total(np.isin(labels, keys.get(name, [])), w) for name in concepts}


def integrated_counts(text_caption_ids: Mapping[str, Iterable[int]], caption_image_index: Sequence[int] | np.ndarray,
                      image_concepts: Mapping[int, Iterable[str]],
                      weights: Sequence[float] | np.ndarray | None = None) -> dict[str, float | int]:
    """Per concept, the captions that mention it (text side) AND whose image shows it (image side): their number,
    or their summed ``weights`` (e.g. expected draws per epoch).

    ``text_caption_ids``: concept -> ids of the captions that mention it (``ConceptCount.caption_ids``).
    ``caption_image_index``: per caption id, the key of its image in ``image_concepts``, negative when unknown.
    The key is an image index, or a label when every image of a label shows the same concepts (as in the
    default corpus, where ``DefaultCorpus.text_labels()`` gives it and ``label_to_concepts`` the mapping).
    """
    owner = np.asarray(caption_image_index)
    w = None if weights is None else np.asarray(weights, dtype=float)
    keys = _keys_showing(image_concepts)
    counts: dict[str, float | int] = {}
    for name, ids in text_caption_ids.items():
        ids = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
        shown = np.zeros(len(owner), dtype=bool)
        shown[ids[np.isin(owner[ids], keys.get(name, []))]] = True
        counts[name] = _total(shown, w)
    return counts


def tag_images(features: np.ndarray, concept_embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """(N, C) bool: image i shows concept c when cos(image_i, concept prompt_c) >= ``threshold``. A CLIP-tagged
    stand-in for the paper's RAM++ tags (not RAM++); tagging a model's own training images with that same model is
    circular, so say so wherever these counts are shown."""
    return np.asarray(features, dtype=np.float32) @ np.asarray(concept_embeddings, dtype=np.float32).T >= threshold
