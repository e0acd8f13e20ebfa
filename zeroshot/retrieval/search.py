"""Queries against an :class:`~zeroshot.retrieval.index.Index`: text -> images through the backbone's text tower and prompt
templates, image -> images by id (the stored row, itself excluded) or by a new image file or upload
(retrieval.md section 5). Every query function takes a batch and answers, per query, a list of ``Hit``.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from ..images import BadImage
from ..prompts import class_embeddings
from .index import Index, check_k


class Hit(NamedTuple):
    """One result: the row's id, its image file (None when the data were not files) and the cosine score."""

    id: str | int
    path: str | None
    score: float


def text_features(backbone, texts: list[str], templates: list[str] | None = None) -> np.ndarray:
    """(T, D) unit rows: each text put through each template (``{}`` = the text as is), embeddings averaged."""
    if isinstance(texts, str):
        texts = [texts]
    texts = [str(t).strip() for t in texts]
    if not texts or not all(texts):
        raise ValueError("empty text query: type some words to search for")
    unique, inverse = np.unique(texts, return_inverse=True)  # class_embeddings refuses repeated names
    return class_embeddings(backbone, unique.tolist(), templates or ["{}"])[inverse]


def image_features(backbone, images: list[str | os.PathLike | bytes]) -> np.ndarray:
    """(B, D) unit rows for image files or encoded bytes (an upload); undecodable input raises ValueError."""
    import torch

    if not images:
        raise ValueError("no image given")
    tensors = []
    for source in images:
        try:
            tensors.append(backbone.preprocess.load(source))
        except BadImage as exc:
            name = "the uploaded image" if isinstance(source, bytes) else str(source)
            raise ValueError(f"{name}: {exc}") from None
    return backbone.encode_images(torch.stack(tensors)).cpu().numpy()


def _hits(index: Index, scores: np.ndarray, rows: np.ndarray, k: int, skip: np.ndarray | None = None) -> list[list[Hit]]:
    """faiss (scores, positions) -> up to k Hits per query, without missing results (-1) or the query's own row
    (``skip``, one position per query)."""
    keep = rows >= 0
    if skip is not None:
        keep &= rows != skip[:, None]
    out = []
    for q_scores, q_rows, q_keep in zip(scores, rows, keep):
        r = q_rows[q_keep][:k]
        paths = index.paths[r] if index.paths is not None else [""] * len(r)
        out.append([Hit(i, p or None, float(s)) for i, p, s in zip(index.ids[r].tolist(), paths, q_scores[q_keep])])
    return out


def search_text(index: Index, backbone, texts: list[str], k: int = 10,
                templates: list[str] | None = None) -> list[list[Hit]]:
    """The k images most similar to each text (free text or class names; optional prompt templates)."""
    index.check_fingerprint(backbone.fingerprint)
    queries = text_features(backbone, texts, templates)
    return _hits(index, *index.search_positions(queries, k), k)


def search_images(index: Index, backbone, images: list[str | os.PathLike | bytes], k: int = 10) -> list[list[Hit]]:
    """The k indexed images most similar to each new image file (or encoded bytes)."""
    index.check_fingerprint(backbone.fingerprint)
    queries = image_features(backbone, images)
    return _hits(index, *index.search_positions(queries, k), k)


def search_ids(index: Index, ids: list, k: int = 10) -> list[list[Hit]]:
    """The k images most similar to indexed images, by id, using their stored rows; each leaves itself out."""
    rows = index.positions(ids)
    return _hits(index, *index.search_positions(index.vectors(ids), check_k(k) + 1), k, skip=rows)


def text_to_image_recall(index: Index, backbone, texts: list[str], owners: list, ks=(1, 5, 10)) -> dict[str, float]:
    """Text -> image recall@k: the share of texts (captions) whose own image (``owners``: its id) is among the
    k best of the index."""
    if len(texts) != len(owners):
        raise ValueError(f"{len(texts)} texts but {len(owners)} owner ids")
    owner_rows = index.positions(owners)
    _, found = index.search_positions(text_features(backbone, texts), max(ks), fingerprint=backbone.fingerprint)
    hit = found == owner_rows[:, None]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1), max(ks))
    return {f"recall@{k}": float((rank < k).mean()) for k in ks}
