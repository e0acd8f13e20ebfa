"""Dataset cards (class names + prompt templates, shipped as JSON) and cached class text embeddings."""
from __future__ import annotations

import contextlib
import difflib
import json
import os
import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .cache import atomic_save_npy, resolve_cache_dir, text_path, touch_last_used
from .features import load_npy, normalise_rows


@dataclass(frozen=True)
class Card:
    """A dataset card: display ``classes``, the ``labels`` datasets use for them, ``templates`` and ``sources``."""

    name: str
    classes: list[str]
    templates: list[str]
    labels: list[str] = field(default_factory=list)
    sources: dict = field(default_factory=dict)

    def select(self, dataset_classes: list[str] | None) -> "Card":
        """The card restricted to (and ordered like) a dataset's own class list, matched by label or name."""
        if dataset_classes is None or list(dataset_classes) == self.labels or list(dataset_classes) == self.classes:
            return self
        index = {k: i for i, k in enumerate(self.labels)} | {k: i for i, k in enumerate(self.classes)}
        unknown = [c for c in dataset_classes if c not in index]
        if unknown:
            raise ValueError(f"card {self.name!r} has no class {unknown[:5]}: pass --classes, or use the card "
                             f"that matches this dataset")
        rows = [index[c] for c in dataset_classes]
        return Card(self.name, [self.classes[i] for i in rows], self.templates, [self.labels[i] for i in rows],
                    self.sources)


def available_cards() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("zeroshot.data").iterdir() if p.name.endswith(".json"))


def load_card(name_or_path: str | os.PathLike) -> Card:
    """A shipped card by name (``cifar10``, ``imagenet`` ...) or a JSON file with the same fields."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
    else:
        if str(name_or_path) not in available_cards():
            close = difflib.get_close_matches(str(name_or_path), available_cards(), n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown card {str(name_or_path)!r}{guess}; shipped cards: "
                             f"{', '.join(available_cards())}, or give a JSON file with 'classes' and 'templates'")
        data = json.loads(resources.files("zeroshot.data").joinpath(f"{name_or_path}.json").read_text())
    templates = data.get("templates", ["a photo of a {}."])
    if isinstance(templates, str):  # a reference to another card's template list
        templates = load_card(templates).templates
    classes = list(data.get("classes", []))
    return Card(data.get("name", path.stem), classes, list(templates), list(data.get("labels", classes)),
                data.get("sources", {}))


def _placeholders(template: str) -> list | None:
    """The (field, format spec, conversion) of each replacement field in ``template``; None when malformed."""
    try:
        return [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError:
        return None


def build_prompts(classes: list[str], templates: list[str] | dict[str, list[str]]) -> list[list[str]]:
    """Per class, its prompts: ``template.format(name)`` for a template list, or a class -> prompts dict (CuPL)."""
    if not classes:
        raise ValueError("no class names given")
    if any(not str(c).strip() for c in classes):
        raise ValueError("class names must not be empty")
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise ValueError(f"duplicate class names {duplicates[:5]} make predictions ambiguous")
    if isinstance(templates, dict):
        missing = [c for c in classes if not templates.get(c)]
        if missing:
            raise ValueError(f"no prompts for classes {missing[:5]}")
        return [list(templates[c]) for c in classes]
    if not templates:
        raise ValueError("no prompt templates given")
    for t in templates:
        if _placeholders(t) != [("", "", None)]:  # exactly one bare '{}'; '{{}}' is a literal, not a placeholder
            raise ValueError(f"template {t!r} must contain exactly one '{{}}' placeholder")
    return [[t.format(c) for t in templates] for c in classes]


def class_embeddings(backbone, classes: list[str], templates: list[str] | dict[str, list[str]] | None = None, *,
                     cache_dir: str | os.PathLike | None | bool = None, progress: bool = False) -> np.ndarray:
    """(C, D) unit rows: each template embedding normalised, averaged per class, renormalised (zero_shot.md 2-4).

    Cached per (backbone fingerprint, class names, templates); ``cache_dir``: None = the default cache, False = none.
    ``progress``: a bar on stderr while the prompts are encoded (a card of 200 classes x 80 templates is 16,000).
    """
    templates = templates if templates is not None else ["a photo of a {}."]
    prompts = build_prompts(list(classes), templates)
    return cached_text_array(backbone, [backbone.fingerprint, prompts],
                             lambda: _prompt_ensembles(backbone, prompts, progress), cache_dir)


def _prompt_ensembles(backbone, prompts: list[list[str]], progress: bool = False) -> np.ndarray:
    """(C, D) float32: per class, the renormalised mean of its normalised prompt embeddings."""
    flat = [p for group in prompts for p in group]
    # ``progress`` only when asked for: a stand-in backbone's encode_texts(texts) keeps working
    encoded = backbone.encode_texts(flat, progress=True) if progress else backbone.encode_texts(flat)
    encoded = normalise_rows(encoded.astype(np.float64))
    counts = np.array([len(g) for g in prompts])
    sums = np.add.reduceat(encoded, np.concatenate([[0], np.cumsum(counts)[:-1]]), axis=0)
    weights = sums / counts[:, None]
    return normalise_rows(weights).astype(np.float32)


def encode_texts_cached(backbone, texts: list[str], cache_dir: str | os.PathLike | None | bool = None) -> np.ndarray:
    """``backbone.encode_texts(texts)``, cached like :func:`class_embeddings` (None = the default cache)."""
    return cached_text_array(backbone, [backbone.fingerprint, "texts", texts], lambda: backbone.encode_texts(texts),
                             cache_dir)


def cached_text_array(backbone, key: list, compute, cache_dir: str | os.PathLike | None | bool) -> np.ndarray:
    """``compute()``, kept as ``<cache>/<fingerprint>/text/<digest of key>.npy`` (False: not cached)."""
    cache = resolve_cache_dir(cache_dir)
    if cache is None:
        return compute()
    path = text_path(cache, backbone.fingerprint, key)
    with contextlib.suppress(OSError, ValueError):  # not cached yet, or a damaged file: compute it again
        result = np.array(load_npy(path, mmap=False))
        touch_last_used(path)
        return result
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(path, result)
    return result
