"""The default model's training set: decoded images (Tiny ImageNet train, Flickr8k's first 800 photos, optionally
rendered digits) and the caption embeddings each is pulled towards, built one way for training and for ablations."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..datasets import Dataset, ImageFiles
from ..extraction import decode_all
from ..images import ImageTransform
from .align import Targets
from .default_captions import DIGIT_LABEL, default_model_captions
from .digit_images import digit_images

FLICKR_GROUP = 2000  # contrastive group of a Flickr photo: 2000 + photo, so its repeated copies are positives of
# each other (other images' groups are their corpus labels: Tiny ImageNet classes 0-199, digits DIGIT_LABEL + d)


class FirstRows(Dataset):
    """The first ``n`` samples of a dataset (short runs decode only what they train on)."""

    def __init__(self, dataset: Dataset, n: int):
        self.base = dataset
        super().__init__(dataset.ids[:n], dataset.labels[:n], dataset.classes, dataset.location)

    def raw(self, index: int):
        return self.base.raw(index)


@dataclass
class TrainingSet:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    targets: Targets
    texts: list[str]
    sources: dict[str, int]  # images per source

    def __str__(self) -> str:
        parts = ", ".join(f"{n} {name}" for name, n in self.sources.items())
        return f"{len(self.images)} training images ({parts}), {len(self.texts)} captions"


def training_set(data: str | Path, transform: ImageTransform, encode_texts: Callable[[list[str]], np.ndarray], *,
                 hypernyms: bool = False, digits_per_class: int = 0, flickr_repeats: int = 1,
                 limit: int | None = None, seed: int = 0, decoded: dict | None = None) -> TrainingSet:
    """Images and caption targets: every Tiny ImageNet image draws one of its class's prompts (plus WordNet hypernym
    captions with ``hypernyms``), every Flickr photo one of its captions, every digit image (``digits_per_class``
    per digit, seeded) one of the digit captions; images of one class are each other's positives. ``flickr_repeats``:
    each Flickr photo appears that many times per epoch (captioned photos are 1.5 % of the images). ``limit``: only
    the first Tiny ImageNet images (smoke runs). ``decoded`` keeps decoded photos between calls (ablations)."""
    if flickr_repeats < 1:
        raise ValueError(f"flickr_repeats must be at least 1, got {flickr_repeats}")
    decoded = {} if decoded is None else decoded
    corpus = default_model_captions(Path(data), with_hypernyms=hypernyms, digits_per_class=digits_per_class)
    if "photos" not in decoded:
        tiny = corpus.tiny_imagenet if limit is None else FirstRows(corpus.tiny_imagenet, limit)
        tin, tin_rows, _ = decode_all(tiny, transform)
        flickr, flickr_rows, _ = decode_all(ImageFiles(corpus.flickr_paths), transform)
        decoded["photos"] = (tin, tin_rows, flickr, flickr_rows)
    tin, tin_rows, flickr, flickr_rows = decoded["photos"]
    photo = np.tile(np.arange(len(flickr_rows)), flickr_repeats)
    kept = [tin_rows, len(corpus.tiny_imagenet) + np.asarray(flickr_rows)[photo]]
    groups = [corpus.labels[tin_rows], FLICKR_GROUP + photo]
    images = [tin, flickr.repeat(flickr_repeats, 1, 1, 1)]
    sources = {"Tiny ImageNet": len(tin), "Flickr8k": len(flickr) * flickr_repeats}
    if digits_per_class:
        pixels, labels = digit_images(digits_per_class, size=transform.size, seed=seed)
        digit_rows = corpus.first_image_of(DIGIT_LABEL + labels)
        kept.append(digit_rows)
        groups.append(corpus.labels[digit_rows])
        images.append(torch.as_tensor(pixels).permute(0, 3, 1, 2).contiguous())
        sources["rendered digits"] = len(pixels)
    offsets, indices = corpus.layout(np.concatenate(kept))
    groups = np.concatenate(groups)
    texts = corpus.texts
    embeddings = torch.as_tensor(np.asarray(encode_texts(texts), np.float32))
    return TrainingSet(torch.cat(images), Targets(embeddings, offsets, indices, groups), texts, sources)
