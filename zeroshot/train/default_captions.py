"""The default model's training captions, built in one place for ``scripts/train_default_model.py`` and for counting
concepts in the model's own pretraining corpus (``--corpus default-model``).

Training images of one epoch, in this order: the 50,000 Tiny ImageNet train images (shard order), the first 800
Flickr8k photos (sorted by image id; the last 200 are held out), ``flickr_repeats`` times over, then the rendered
digits sorted by digit. A Tiny ImageNet image's captions are its class's prompts, templates x WordNet synonyms
(``classes_detail.json``, plus hypernym captions); a Flickr photo's captions are its own; a digit's are
``digit_captions``. :func:`shipped_corpus` builds it with the shipped model's recipe (its ``training.json``).
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import TarShards
from ..prompts import load_card
from .digit_images import DIGIT_WORDS, digit_captions

TEMPLATES = load_card("cifar10").templates + [  # generic photo templates + CLIP's 7 forward-selected ImageNet ones
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.", "a {} in a video game.",
    "art of the {}.", "a photo of the small {}.", "{}"]
FLICKR_TRAIN = 800
DIGIT_LABEL = 200  # label of digit d: 200 + d (Tiny ImageNet classes are 0-199)


def flickr_split(data: Path) -> tuple[list[Path], list[list[str]], list[Path], list[list[str]]]:
    """(train image paths, their captions, held-out paths, held-out captions), split by sorted image id."""
    captions: dict[str, list[str]] = {}
    with open(data / "flickr8k_1k" / "captions.csv", newline="") as f:
        for row in csv.DictReader(f):
            captions.setdefault(row["image"], []).append(row["caption"].strip())
    names = sorted(captions)
    paths = [data / "flickr8k_1k" / "images" / n for n in names]
    return (paths[:FLICKR_TRAIN], [captions[n] for n in names[:FLICKR_TRAIN]],
            paths[FLICKR_TRAIN:], [captions[n] for n in names[FLICKR_TRAIN:]])


@dataclass(frozen=True)
class DefaultCorpus:
    """Training texts and, per training image of an epoch, the span ``texts[starts[i]:stops[i]]`` it draws one
    caption from per visit. Images ``0 .. n_tiny-1`` are ``tiny_imagenet`` rows, then ``flickr_repeats`` copies of
    ``flickr_paths``, then ``digits_per_class`` rendered images of each digit, 0 first."""

    texts: list[str]
    starts: np.ndarray
    stops: np.ndarray
    labels: np.ndarray  # per image: its Tiny ImageNet class, -1 for a Flickr photo, DIGIT_LABEL + d for digit d
    class_wnids: list[str]  # per label (Tiny ImageNet's 200 classes, then the digits' WordNet synsets if any)
    tiny_imagenet: TarShards
    flickr_paths: list[Path]
    flickr_repeats: int = 1
    digits_per_class: int = 0
    digit_seed: int = 0  # the seed the digits were rendered with (training's seed)

    def __len__(self) -> int:
        return len(self.labels)

    def captions(self, image: int) -> list[str]:
        """The captions image ``image`` draws from."""
        return self.texts[self.starts[image] : self.stops[image]]

    def image_wnids(self) -> list[str | None]:
        """Per training image, the wnid of its label (None for Flickr photos, which have no label)."""
        return [self.class_wnids[k] if k >= 0 else None for k in self.labels.tolist()]

    def first_image_of(self, labels: np.ndarray) -> np.ndarray:
        """Per label in ``labels``, the index of the first training image with that label (its captions stand for
        every image of the label)."""
        values, first = np.unique(self.labels, return_index=True)
        return first[np.searchsorted(values, labels)]

    def layout(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, indices)`` of :class:`~zeroshot.train.align.Targets` for the training images ``images``."""
        starts, stops = self.starts[images], self.stops[images]
        return np.concatenate([[0], np.cumsum(stops - starts)]), _span_items(starts, stops)[1]

    def draws_per_epoch(self) -> np.ndarray:
        """Per text, its expected number of draws in one epoch: each image is visited once and draws one of its
        ``n`` captions uniformly, so a text gets ``1 / n`` from every image it belongs to (every image is assumed
        to decode; the last partial batch each epoch drops a few visits at random)."""
        image, text = _span_items(self.starts, self.stops)
        return np.bincount(text, weights=1.0 / (self.stops - self.starts)[image], minlength=len(self.texts))

    def text_labels(self) -> np.ndarray:
        """Per text, the label of every image that draws it (texts are never shared across labels): the Tiny
        ImageNet class of a prompt, -1 for a Flickr caption."""
        image, text = _span_items(self.starts, self.stops)
        labels = np.full(len(self.texts), -1)
        labels[text] = self.labels[image]
        return labels

    def rows(self) -> Iterator[tuple[str, float, int]]:
        """``(caption, expected draws per epoch, label)`` per text, in ``texts`` order (caption id = position)."""
        yield from zip(self.texts, self.draws_per_epoch().tolist(), self.text_labels().tolist())


def _span_items(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (span position, text index) pair of the spans ``texts[starts[i]:stops[i]]``, in order, without a loop
    over the spans: ``np.arange(starts[i], stops[i])`` for each i, concatenated, with i beside each index."""
    lengths = stops - starts
    owner = np.repeat(np.arange(len(lengths)), lengths)
    first = np.cumsum(lengths) - lengths  # where each span's run begins in the output
    return owner, np.arange(lengths.sum()) - first[owner] + starts[owner]


def hypernym_captions(name: str, wnid: str) -> list[str]:
    """Captions placing a class under its WordNet hypernyms (two levels up): "a photo of a retriever." and "a photo
    of a Labrador retriever, a kind of retriever.", so that broader words (dog, bird, truck) reach the images."""
    from ..concepts.wordnet import hypernyms

    return [c for h in hypernyms(wnid) for c in (f"a photo of a {h}.", f"a photo of a {name}, a kind of {h}.")]


def default_model_captions(data: str | Path, *, with_hypernyms: bool = False, flickr_repeats: int = 1,
                           digits_per_class: int = 0, digit_seed: int = 0) -> DefaultCorpus:
    """The default model's training corpus from the shared data folder (reads the shards' ``.cls`` labels, ~10 s,
    never an image). ``with_hypernyms`` adds :func:`hypernym_captions` to every Tiny ImageNet class;
    ``flickr_repeats`` visits each Flickr photo that often per epoch; ``digits_per_class`` adds that many digit
    images of each digit (labels ``DIGIT_LABEL + d``, each shown by the WordNet synset of its numeral)."""
    from ..concepts.wordnet import concept_synset, wnid

    data = Path(data)
    tiny = TarShards(data / "tinyimagenet" / "train-{000000..000009}.tar.gz")
    detail = json.loads((data / "tinyimagenet" / "classes_detail.json").read_text())
    flickr_paths, flickr_captions, _, _ = flickr_split(data)
    class_prompts = [[t.format(s.strip()) for s in d["synonyms"].split(",") if s.strip() for t in TEMPLATES]
                     + (hypernym_captions(d["name"], d["wnid"]) if with_hypernyms else []) for d in detail]
    digits = [digit_captions(d) for d in range(len(DIGIT_WORDS))] if digits_per_class else []
    groups = class_prompts + flickr_captions + digits
    texts = [text for group in groups for text in group]
    bounds = np.cumsum([0] + [len(g) for g in groups])
    tiny_labels = np.asarray(tiny.labels)
    photos = np.tile(np.arange(len(flickr_captions)), flickr_repeats)
    digit_labels = np.repeat(np.arange(len(digits)), digits_per_class)
    owner = np.concatenate([tiny_labels, len(class_prompts) + photos,
                            len(class_prompts) + len(flickr_captions) + digit_labels])
    labels = np.concatenate([tiny_labels, np.full(len(photos), -1), DIGIT_LABEL + digit_labels])
    return DefaultCorpus(texts, bounds[owner], bounds[owner + 1], labels,
                         [d["wnid"] for d in detail] + [wnid(concept_synset(str(d))) for d in range(len(digits))],
                         tiny, flickr_paths, flickr_repeats, digits_per_class, digit_seed)


def shipped_corpus(data: str | Path) -> tuple[DefaultCorpus, dict]:
    """The shipped default model's corpus, built with the recipe in its ``training.json``, and that recipe."""
    from ..backbone import DEFAULT_MODEL_DIR

    training = json.loads((DEFAULT_MODEL_DIR / "training.json").read_text())
    recipe = training["recipe"]
    return default_model_captions(data, with_hypernyms=recipe["hypernyms"], flickr_repeats=recipe["flickr_repeats"],
                                  digits_per_class=recipe["digits"], digit_seed=training["config"]["seed"]), recipe
