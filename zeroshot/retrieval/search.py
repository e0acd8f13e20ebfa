"""Queries against an :class:`~zeroshot.retrieval.index.Index`: text -> images through the backbone's text tower and prompt
templates, image -> images by id (the stored row, itself excluded) or by a new image file or upload
(retrieval.md section 5). Every query function takes a batch and answers, per query, a list of ``Hit``; each can
hide near-duplicates (``dedup``), and text queries can also match the captions stored with the index.
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..images import BadImage
from ..prompts import class_embeddings
from .index import Index, check_k

POOL = 4  # with near-duplicate hiding or caption matching, a query looks at POOL * k candidates
DEDUP_COSINE = 0.97  # near-duplicates: above every distinct Flickr8k-1k pair, below most resized copies (README)


class Hit(NamedTuple):
    """One result: the row's id, its image file (None when the data were not files), the score (cosine; with
    caption matching the mean of two, see :func:`search_text`) and the caption that matched best (caption matching)."""

    id: str | int
    path: str | None
    score: float
    caption: str | None = None


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


def _pool(k: int, dedup: float | None, captions: bool = False) -> int:
    """How many candidates a query asks faiss for: k, or ``POOL`` times k when some will be hidden as near-duplicates
    (``dedup``, a cosine in (0, 1]) or re-ranked with captions."""
    if dedup is not None and not 0 < dedup <= 1:
        raise ValueError(f"dedup must be a cosine in (0, 1], got {dedup!r}")
    return check_k(k) * (POOL if captions or dedup is not None else 1)


def _ranked(index: Index, scores: np.ndarray, rows: np.ndarray, k: int, *, skip: int = -1,
            dedup: float | None = None, text: np.ndarray | None = None) -> list[Hit]:
    """One query's candidates (scores, positions; best first) as up to k Hits: missing results (-1) and the query's
    own row (``skip``) dropped, and with ``dedup`` every result whose stored row is within that cosine of a better
    result's, hidden or not (a near-duplicate). ``text``: the caption query, to name each hit's best caption."""
    keep = (rows >= 0) & (rows != skip)
    scores, rows = scores[keep], rows[keep]
    if dedup is not None and len(rows):
        V = index.faiss_index.reconstruct_batch(rows)
        near = np.triu(V @ V.T >= dedup, 1).any(axis=0)  # column j: some better result i < j is that close
        scores, rows = scores[~near], rows[~near]
    rows, scores = rows[:k], scores[:k]
    paths = index.paths[rows] if index.paths is not None else [""] * len(rows)
    return [Hit(i, p or None, float(s), None if text is None else _best_caption(index, r, text))
            for i, p, s, r in zip(index.ids[rows].tolist(), paths, scores, rows.tolist())]


def _best_caption(index: Index, row: int, text: np.ndarray) -> str | None:
    """The caption of the image at ``row`` most similar to the text query ``text`` (None: it has none)."""
    start, stop = np.searchsorted(index.caption_rows, [row, row + 1])
    return index.captions[start + int(np.argmax(index.caption_features[start:stop] @ text))] if stop > start else None


def _with_captions(index: Index, image_query: np.ndarray, text_query: np.ndarray, rows: np.ndarray,
                   pool: int) -> tuple[np.ndarray, np.ndarray]:
    """One text query's candidates re-ranked with captions: its ``pool`` best images by image similarity and the
    ``pool`` images with the best captions, each scored by the mean of its image similarity (the stored row) and its
    best caption's similarity to the text (0 for an image without captions); (scores, positions), best first."""
    starts = np.flatnonzero(np.r_[True, np.diff(index.caption_rows) > 0])  # each captioned image's first caption
    by_row = np.zeros(len(index), np.float32)
    by_row[index.caption_rows[starts]] = np.maximum.reduceat(index.caption_features @ text_query, starts)
    best = np.argpartition(-by_row, pool - 1)[:pool] if pool < len(by_row) else np.arange(len(by_row))
    candidates = np.union1d(rows[rows >= 0], best)
    scores = (index.faiss_index.reconstruct_batch(candidates) @ image_query + by_row[candidates]) / 2
    order = np.argsort(-scores, kind="stable")
    return scores[order], candidates[order]


def search_text(index: Index, backbone, texts: list[str], k: int = 10, templates: list[str] | None = None, *,
                captions: bool = False, dedup: float | None = None) -> list[list[Hit]]:
    """The k images most similar to each text (free text or class names; optional prompt templates).

    ``captions``: also match the index's captions (:func:`add_captions`): each image is scored by the mean of its
    similarity to the text and its best caption's (the text as typed, without templates), over the ``POOL * k`` best
    images by either; each Hit names that caption. ``dedup``: hide near-duplicates, see :func:`_ranked`.
    """
    index.check_fingerprint(backbone.fingerprint)
    if captions and not index.captions:
        raise ValueError("this index holds no captions: build it with `zeroshot index build ... --captions FILE`")
    queries = text_features(backbone, texts, templates)
    plain = text_features(backbone, texts) if captions and templates else queries
    pool = _pool(k, dedup, captions)
    out = []
    for query, text, scores, rows in zip(queries, plain, *index.search_positions(queries, pool)):
        if captions:
            scores, rows = _with_captions(index, query, text, rows, pool)
        out.append(_ranked(index, scores, rows, k, dedup=dedup, text=text if captions else None))
    return out


def search_images(index: Index, backbone, images: list[str | os.PathLike | bytes], k: int = 10, *,
                  dedup: float | None = None) -> list[list[Hit]]:
    """The k indexed images most similar to each new image file (or encoded bytes)."""
    index.check_fingerprint(backbone.fingerprint)
    queries = image_features(backbone, images)
    return [_ranked(index, scores, rows, k, dedup=dedup)
            for scores, rows in zip(*index.search_positions(queries, _pool(k, dedup)))]


def search_ids(index: Index, ids: list, k: int = 10, *, dedup: float | None = None) -> list[list[Hit]]:
    """The k images most similar to indexed images, by id, using their stored rows; each leaves itself out."""
    own = index.positions(ids)
    found = index.search_positions(index.vectors(ids), _pool(k, dedup) + 1)
    return [_ranked(index, scores, rows, k, skip=row, dedup=dedup) for scores, rows, row in zip(*found, own)]


def read_captions(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(image names, captions) from a CSV file whose header names an ``image`` and a ``caption`` column, e.g.
    Flickr8k's ``image,caption_idx,caption`` (other columns are ignored), in file order; empty captions are skipped."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"image", "caption"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: no {' or '.join(sorted(missing))} column; a captions file is a CSV whose "
                             "header names the columns image and caption (e.g. Flickr8k's image,caption_idx,caption)")
        rows = [(row["image"], row["caption"].strip()) for row in reader if (row["caption"] or "").strip()]
    return [image for image, _ in rows], [caption for _, caption in rows]


def add_captions(index: Index, backbone, images: list[str], captions: list[str]) -> int:
    """Attach captions to the indexed images they name, with their embeddings from the backbone's text tower, so that
    ``search_text(..., captions=True)`` can match them; replaces the captions held; returns how many were attached.

    ``images[i]`` names the image of ``captions[i]``: its id, or the file name of exactly one id (Flickr8k's captions
    name files; an index of a folder tree has ids like ``dogs/1.jpg``). Captions that name no indexed image are left
    out; when none names one, ValueError.
    """
    index.check_fingerprint(backbone.fingerprint)
    owners, texts = match_captions(index.ids.tolist(), images, captions, "an indexed image")
    index.set_captions(owners, texts, backbone.encode_texts(texts))
    return len(texts)


def match_captions(ids: list, images: list[str], captions: list[str], what: str = "an image") -> tuple[list, list[str]]:
    """(owner ids, texts) of the captions whose ``images[i]`` names one of ``ids``: by the id itself, or by the file
    name of exactly one id (Flickr8k's captions name files; a folder tree's ids look like ``dogs/1.jpg``). The others
    are left out; when none is left, ValueError."""
    names = Counter(Path(str(i)).name for i in ids)
    lookup = {Path(str(i)).name: i for i in ids if names[Path(str(i)).name] == 1} | {str(i): i for i in ids}
    pairs = [(lookup[name], caption) for name, caption in zip(images, captions) if name in lookup]
    if not pairs:
        raise ValueError(f"none of the {len(captions)} captions names {what} by id or file name (the first names "
                         f"{images[0] if images else None!r}, there are e.g. {ids[:1]})")
    owners, texts = map(list, zip(*pairs))
    return owners, texts


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
