"""Zero-shot image-text retrieval on a caption dataset: recall@k both ways, as CLIP_benchmark defines it.

CLIP_benchmark (``clip_benchmark/metrics/zeroshot_retrieval.py``) embeds every image and every caption, L2-normalises
them and scores ``texts @ images.T``. ``image_retrieval_recall@k`` (text -> image) is the share of captions whose
image is among the caption's k best-scoring images; ``text_retrieval_recall@k`` (image -> text) is the share of
images with at least one of their captions among the image's k best-scoring captions.
"""
from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import numpy as np

from ..features import normalise_rows

DEFAULT_KS = (1, 5, 10)


def retrieval_recall(image_features: np.ndarray, text_features: np.ndarray, text_image: np.ndarray,
                     ks: tuple[int, ...] = DEFAULT_KS, *, chunk: int = 4096) -> dict[str, float]:
    """CLIP_benchmark's ``image_retrieval_recall@k`` and ``text_retrieval_recall@k`` (fractions) for each k.

    ``text_image[t]`` is the row of ``image_features`` that caption ``t`` describes; every image needs at least one
    caption. A query succeeds at k when fewer than k candidates score strictly above its best positive: its rank is
    counted once from the score matrix (``chunk`` queries at a time) and serves every k; ties count in the query's
    favour (CLIP_benchmark's ``topk`` breaks them arbitrarily; real features hardly ever tie).
    """
    images = normalise_rows(np.asarray(image_features, dtype=np.float32))
    texts = normalise_rows(np.asarray(text_features, dtype=np.float32))
    text_image = np.asarray(text_image, dtype=np.int64)
    if text_image.shape != (len(texts),) or text_image.min(initial=0) < 0 or text_image.max(initial=0) >= len(images):
        raise ValueError(f"text_image needs one image row (0..{len(images) - 1}) per text ({len(texts)}), "
                         f"got shape {text_image.shape}")
    if len(images) == 0 or np.bincount(text_image, minlength=len(images)).min() == 0:
        raise ValueError("every image needs at least one caption (and there must be images)")
    image_rows = np.arange(len(images))
    text_ranks = _ranks(texts, images, text_image, image_rows, chunk)   # images above each caption's image
    image_ranks = _ranks(images, texts, image_rows, text_image, chunk)  # captions above each image's best caption
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float(np.mean(text_ranks < k))
        metrics[f"text_retrieval_recall@{k}"] = float(np.mean(image_ranks < k))
    return metrics


def _ranks(queries: np.ndarray, candidates: np.ndarray, query_image: np.ndarray, candidate_image: np.ndarray,
           chunk: int) -> np.ndarray:
    """Per query row, how many candidates score strictly above its best positive (a candidate of the same image).

    The positive scores are read from the same score block they are compared with, so rounding cannot rank a
    positive above itself."""
    ranks = []
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk] @ candidates.T
        positive = query_image[start:start + chunk, None] == candidate_image[None, :]
        best = np.where(positive, scores, -np.inf).max(axis=1, keepdims=True)
        ranks.append((scores > best).sum(axis=1))
    return np.concatenate(ranks)


def caption_dataset(folder: str | os.PathLike) -> tuple[Path, Path]:
    """(image folder, captions CSV) of a caption dataset folder; FileNotFoundError naming what is missing, so the
    command line fails before a model loads."""
    folder = Path(folder)
    images, captions = folder / "images", folder / "captions.csv"
    if not (captions.is_file() and images.is_dir()):
        missing = captions if not captions.is_file() else images
        raise FileNotFoundError(f"{missing} does not exist; a caption dataset is a folder holding images/ and "
                                "captions.csv (columns image, caption), e.g. ../shared/data/flickr8k_1k")
    return images, captions


def evaluate_retrieval(backbone, folder: str | os.PathLike, *, ks: tuple[int, ...] = DEFAULT_KS,
                       cache_dir: str | os.PathLike | None | bool = None, extract_options: dict | None = None,
                       exclude: Collection[str] = ()) -> dict:
    """Retrieval recall of ``backbone`` on a caption dataset: ``folder/images/`` and ``folder/captions.csv`` (header
    naming ``image`` and ``caption`` columns, e.g. Flickr8k's ``image,caption_idx,caption``).

    Image features come from :func:`zeroshot.extract` and caption embeddings from
    :func:`zeroshot.prompts.encode_texts_cached`, both cached per backbone fingerprint (``cache_dir`` as there).
    Captions are matched to images as the search index matches them (by id, or by a file name that names one image:
    :func:`~zeroshot.retrieval.search.match_captions`); images without a caption and captions of images that failed to
    decode are left out, and so are the images whose ids are in ``exclude`` with their captions (e.g. leaked into
    training data: ``zeroshot dedup``). Returns the metrics of :func:`retrieval_recall` with ``n_images``,
    ``n_texts``, ``n_excluded`` and ``failed`` (id -> reason). ``extract_options``: further keyword arguments for
    ``extract`` (batch size, ...).
    """
    from ..extraction import extract
    from ..prompts import encode_texts_cached
    from ..retrieval.search import match_captions, read_captions

    image_folder, captions_csv = caption_dataset(folder)
    fs = extract(backbone, image_folder, cache_dir=cache_dir, **(extract_options or {}))
    excluded = np.isin(fs.ids, sorted(exclude))
    fs = fs.subset(np.flatnonzero(~excluded))
    owners, texts = match_captions(fs.ids.tolist(), *read_captions(captions_csv), f"a decodable image of {image_folder}")
    row_of = {image_id: row for row, image_id in enumerate(fs.ids.tolist())}
    used, text_image = np.unique([row_of[owner] for owner in owners], return_inverse=True)  # captioned images only
    metrics = retrieval_recall(np.asarray(fs.features)[used], encode_texts_cached(backbone, texts, cache_dir),
                               text_image, ks)
    return {**metrics, "n_images": len(used), "n_texts": len(texts), "n_excluded": int(excluded.sum()),
            "failed": fs.failed}
