"""Caption tokens and noun lemmatisers that ship their data offline (lemminflect, simplemma, spaCy lookups)."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

_WORD = re.compile(r"[^\W\d_]+")
_CHOICES = "'lemminflect' (default), 'simplemma', 'spacy-lookups', 'spacy:MODEL' (an installed spaCy model) or 'none'"


def tokens(caption: str) -> list[str]:
    """Lower-cased runs of letters: every non-letter is a separator (the spec's normalisation)."""
    return _WORD.findall(caption.lower())


class Lemmatiser:
    """A word -> noun-lemma function with a per-word-type cache, because corpora repeat words."""

    def __init__(self, name: str, version: str, lemma: Callable[[str], str]):
        self.name = name
        self.version = version
        self._lemma = lemma
        self._cache: dict[str, str] = {}

    def __call__(self, word: str) -> str:
        cached = self._cache.get(word)
        if cached is None:
            cached = self._cache[word] = self._lemma(word.lower()).lower()
        return cached

    def __repr__(self) -> str:
        return f"Lemmatiser({self.name!r}, version={self.version!r})"


def get_lemmatiser(name: str = "lemminflect") -> Lemmatiser:
    """The named lemmatiser; nouns for lemminflect (keeps adjectives such as "banded"), no POS for the others."""
    if name == "lemminflect":
        getLemma = _require("lemminflect", "lemminflect").getLemma
        return Lemmatiser(name, _version("lemminflect"), lambda w: (getLemma(w, upos="NOUN") or (w,))[0])
    if name == "simplemma":
        lemmatize = _require("simplemma", "simplemma").lemmatize
        return Lemmatiser(name, _version("simplemma"), lambda w: lemmatize(w, lang="en"))
    if name == "spacy-lookups":
        table = _spacy_lookup_table()
        return Lemmatiser(name, _version("spacy-lookups-data"), lambda w: table.get(w, w))
    if name.startswith("spacy:"):
        return _spacy_model(name[len("spacy:"):])
    if name == "none":
        return Lemmatiser(name, "", str.lower)
    raise ValueError(f"unknown lemmatiser {name!r}; choose {_CHOICES}")


def _require(module: str, package: str):
    """Import an optional dependency, or one clear error saying what to install."""
    try:
        return __import__(module)
    except ImportError as exc:
        extra = "zeroshot[concepts]" if package in ("lemminflect", "simplemma") else package
        raise ImportError(f"the {package!r} lemmatiser needs the package {package}; pip install '{extra}'") from exc


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _spacy_lookup_table() -> dict[str, str]:
    """spaCy's English lemma lookup table (word -> lemma, no POS) from ``spacy-lookups-data``."""
    data = _require("spacy_lookups_data", "spacy-lookups-data")
    path = Path(data.en["lemma_lookup"])
    if not path.exists() and Path(f"{path}.gz").exists():
        path = Path(f"{path}.gz")
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as f:
        return json.load(f)


def _spacy_model(model: str) -> Lemmatiser:
    """An installed spaCy pipeline; each word is tagged in isolation (unstable, see the spec's §1b)."""
    spacy = _require("spacy", "spacy")
    if not spacy.util.is_package(model):
        raise ValueError(f"spaCy model {model!r} is not installed; install it or choose {_CHOICES}")
    nlp = spacy.load(model, exclude=["parser", "ner"])
    return Lemmatiser(f"spacy:{model}", _version(model), lambda w: nlp(w)[0].lemma_)
