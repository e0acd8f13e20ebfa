"""The default model's own pretraining corpus, counted three ways (methods/concept_frequency.md 1c): captions that
mention a concept (text side), training images whose label shows it (image side), and both at once (integrated).

Counts are per training epoch: a caption counts its expected number of draws (an image draws one of its captions per
visit), an image counts once, so all three are in image-caption pairs seen per epoch.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..train.default_captions import default_model_captions
from .image_side import image_counts, integrated_counts
from .lemmas import Lemmatiser
from .matching import Concept, count_corpus
from .wordnet import label_to_concepts


def default_model_counts(concepts: list[Concept], *, data: str | Path, mode: str = "all_unigrams",
                         lemmatiser: Lemmatiser | str = "lemminflect") -> tuple[list[dict], dict]:
    """counts.csv rows (text, image and integrated counts per concept, with matched variants and example captions)
    and their provenance, from the training corpus that ``scripts/train_default_model.py`` builds from ``data``."""
    corpus = default_model_captions(data)
    draws = corpus.draws_per_epoch()
    index, counts = count_corpus(lambda: zip(corpus.texts, draws.tolist()), concepts, mode=mode,
                                 lemmatiser=lemmatiser, examples=3)
    names = [c.name for c in counts]
    shows = label_to_concepts(corpus.class_wnids, names)
    images = image_counts(corpus.labels, shows, names)
    both = integrated_counts({c.name: c.caption_ids for c in counts}, corpus.text_labels(), shows, weights=draws)
    rows = [{"concept": c.name, "text_count": round(c.count, 2), "image_count": images[c.name],
             "integrated_count": round(both[c.name], 2), "frequency": c.frequency, "variants": c.variants,
             "examples": c.examples} for c in counts]
    labels = {name: sorted(corpus.class_wnids[k] for k, shown in shows.items() if name in shown) for name in names}
    meta = {"corpus": {"path": "default-model", "format": "scripts/train_default_model.py captions",
                       "data": str(data), "texts": len(corpus.texts), "images": len(corpus),
                       "sha256": hashlib.sha256("\n".join(corpus.texts).encode()).hexdigest(),
                       "labelled_images": int((corpus.labels >= 0).sum())},
            "n_captions": len(corpus.texts), "count_unit": "image-caption pairs per training epoch",
            "lemmatiser": index.lemmatiser.name, "lemmatiser_version": index.lemmatiser.version, "mode": mode,
            "image_labels_per_concept": labels}
    return rows, meta
