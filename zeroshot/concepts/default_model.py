"""The default model's own pretraining corpus, counted three ways (methods/concept_frequency.md 1c): captions that
mention a concept (text side), training images whose label shows it (image side), and both at once (integrated).

Counts are per training epoch: a caption counts its expected number of draws (an image draws one of its captions per
visit), an image counts once, so all three are in image-caption pairs seen per epoch.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..train.default_captions import DIGIT_LABEL, shipped_corpus
from .image_side import image_counts, integrated_counts, tag_images
from .lemmas import Lemmatiser
from .matching import Concept, count_corpus
from .wordnet import label_to_concepts


def default_model_counts(concepts: list[Concept], *, data: str | Path, mode: str = "all_unigrams",
                         lemmatiser: Lemmatiser | str = "lemminflect", tagger=None) -> tuple[list[dict], dict]:
    """counts.csv rows (text, image and integrated counts per concept, with matched variants and example captions)
    and their provenance, from the corpus that ``scripts/train_default_model.py`` built from ``data`` with the
    shipped model's recipe (hypernym captions, Flickr repeats and rendered digits, as its ``training.json`` says).

    The image side comes from the Tiny ImageNet labels and the digits through WordNet, or with ``tagger`` (a
    callable: the corpus -> (n_images, C) bool tags, see :func:`corpus_tags`) from a CLIP tagger over every training
    image."""
    corpus, recipe = shipped_corpus(data)
    draws = corpus.draws_per_epoch()
    index, counts = count_corpus(lambda: zip(corpus.texts, draws.tolist()), concepts, mode=mode,
                                 lemmatiser=lemmatiser, examples=3)
    names = [c.name for c in counts]
    shows = label_to_concepts(corpus.class_wnids, names)
    if tagger is None:
        images = image_counts(corpus.labels, shows, names)
        both = integrated_counts({c.name: c.caption_ids for c in counts}, corpus.text_labels(), shows,
                                 weights=draws)
    else:
        tags = tagger(corpus)
        images = dict(zip(names, tags.sum(axis=0).tolist()))
        both = dict(zip(names, tagged_integrated(corpus, [c.caption_ids for c in counts], tags).tolist()))
    rows = [{"concept": c.name, "text_count": round(c.count, 2), "image_count": images[c.name],
             "integrated_count": round(both[c.name], 2), "frequency": c.frequency, "variants": c.variants,
             "examples": c.examples} for c in counts]
    labels = {name: sorted(corpus.class_wnids[k] for k, shown in shows.items() if name in shown) for name in names}
    meta = {"corpus": {"path": "default-model", "format": "scripts/train_default_model.py captions",
                       "data": str(data), "texts": len(corpus.texts), "images": len(corpus),
                       "sha256": hashlib.sha256("\n".join(corpus.texts).encode()).hexdigest(),
                       "labelled_images": int((corpus.labels >= 0).sum()), "recipe": recipe},
            "n_captions": len(corpus.texts), "count_unit": "image-caption pairs per training epoch",
            "lemmatiser": index.lemmatiser.name, "lemmatiser_version": index.lemmatiser.version, "mode": mode,
            "image_labels_per_concept": labels}
    return rows, meta


def tagged_integrated(corpus, caption_ids: list[np.ndarray], tags: np.ndarray) -> np.ndarray:
    """Per concept, the expected draws per epoch of captions that mention it by images tagged with it: an image draws
    one of its captions uniformly, so it adds the share of its captions that mention the concept."""
    spans = (corpus.stops - corpus.starts).astype(np.float64)
    totals = np.zeros(len(caption_ids))
    for c, ids in enumerate(caption_ids):
        mentions = np.zeros(len(corpus.texts) + 1)
        mentions[np.asarray(ids, dtype=np.int64) + 1] = 1
        cumulative = np.cumsum(mentions)
        share = (cumulative[corpus.stops] - cumulative[corpus.starts]) / spans
        totals[c] = (share * tags[:, c]).sum()
    return totals


def corpus_tags(corpus, backbone, concept_embeddings: np.ndarray, threshold: float, *, cache_dir=None,
                progress: bool = True) -> np.ndarray:
    """(n_images, C) CLIP tags (:func:`~zeroshot.concepts.image_side.tag_images`) of every training image of the
    default corpus, encoded by ``backbone`` through the feature cache; an image that fails to decode shows nothing.
    Each Flickr photo's tags are repeated for its copies; the digits are rendered again (the corpus's seed, at
    the shipped model's 64 pixels) and encoded from memory."""
    from ..datasets import ArrayImages, ImageFiles
    from ..extraction import extract
    from ..train.digit_images import digit_images

    def tags_of(dataset) -> np.ndarray:
        fs = extract(backbone, dataset, cache_dir=cache_dir, progress=progress)
        order = np.argsort(dataset.ids)
        tags = np.zeros((len(dataset), len(concept_embeddings)), dtype=bool)
        tags[order[np.searchsorted(np.asarray(dataset.ids)[order], fs.ids)]] = tag_images(
            fs.features, concept_embeddings, threshold)
        return tags

    flickr = tags_of(ImageFiles(corpus.flickr_paths))
    parts = [tags_of(corpus.tiny_imagenet), np.tile(flickr, (corpus.flickr_repeats, 1))]
    if corpus.digits_per_class:
        pixels, labels = digit_images(corpus.digits_per_class, seed=corpus.digit_seed)
        order = np.argsort(labels, kind="stable")  # the corpus lists digit images sorted by digit
        parts.append(tags_of(ArrayImages(pixels[order], DIGIT_LABEL + labels[order], name="rendered digits")))
    return np.concatenate(parts)
