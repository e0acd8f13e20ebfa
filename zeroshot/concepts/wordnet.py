"""WordNet 3.0 nouns from the packaged extract (``data/wordnet_nouns.json.gz``): synonyms, hyponym subtrees, and
labelled images mapped to downstream concepts (a "moving van" image shows a "truck").

The extract is written at development time by ``scripts/make_wordnet_json.py`` (licence: ``data/WORDNET_LICENSE``);
nothing here needs NLTK, a download or the network.

Sense choice: a concept name means its **first noun sense** in WordNet (the most frequent one, ``index.noun``
order: "cat" -> the feline, not "guy"; "truck" -> the motor vehicle, not the handcart), unless a wnid is given
for it (e.g. from a dataset card), which then wins.
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class _Nouns:
    """The loaded extract: synsets by position (offset order), hyponym lists in CSR form, lemma -> positions."""

    offsets: np.ndarray
    words: list[list[str]]
    child_ptr: np.ndarray
    children: np.ndarray
    parent_ptr: np.ndarray
    parents: np.ndarray
    senses: dict[str, list[int]]


@lru_cache(maxsize=1)
def _nouns() -> _Nouns:
    """Read and index the packaged extract once per process (~0.5 s)."""
    raw = resources.files("zeroshot.data").joinpath("wordnet_nouns.json.gz").read_bytes()
    data = json.loads(gzip.decompress(raw))
    offsets = np.cumsum(data["offset_deltas"])
    child = np.cumsum(data["hypernym_child_deltas"])
    parent = np.asarray(data["hypernym_parent"])
    order = np.argsort(parent, kind="stable")
    child_ptr = np.concatenate([[0], np.cumsum(np.bincount(parent, minlength=len(offsets)))])
    by_child = np.argsort(child, kind="stable")
    parent_ptr = np.concatenate([[0], np.cumsum(np.bincount(child, minlength=len(offsets)))])
    senses: dict[str, list[int]] = {}
    for position, words in enumerate(data["synsets"]):
        for word in words:
            senses.setdefault(word.lower(), []).append(position)
    senses.update(data["senses"])  # lemmas with several senses: index.noun's order
    return _Nouns(offsets, data["synsets"], child_ptr, child[order], parent_ptr, parent[by_child], senses)


def _key(name: str) -> str:
    """WordNet's spelling of a lemma: lower case, underscores for spaces."""
    return "_".join(name.lower().replace("_", " ").split())


def _is_wnid(text: str) -> bool:
    return len(text) == 9 and text[0] == "n" and text[1:].isdigit()


def _position(offset: int) -> int:
    """Index of a synset offset in the extract's offset-ordered arrays."""
    nouns = _nouns()
    i = int(np.searchsorted(nouns.offsets, offset))
    if i == len(nouns.offsets) or nouns.offsets[i] != offset:
        raise KeyError(f"no WordNet 3.0 noun synset with offset {offset}")
    return i


def senses(name: str) -> list[int]:
    """Offsets of the noun synsets of ``name`` (spaces or underscores), first sense first; [] if not a noun."""
    nouns = _nouns()
    return [int(nouns.offsets[i]) for i in nouns.senses.get(_key(name), [])]


def wnid(offset: int) -> str:
    """ImageNet-style id of a noun synset: 2084071 -> "n02084071"."""
    return f"n{offset:08d}"


def offset_of(wnid_: str) -> int:
    """Inverse of :func:`wnid`: "n02084071" -> 2084071 (checked against the extract)."""
    if not _is_wnid(wnid_):
        raise ValueError(f"not a noun wnid: {wnid_!r} (expected 'n' + 8 digits)")
    offset = int(wnid_[1:])
    _position(offset)
    return offset


def synonyms(name: str, *, first_sense_only: bool = True) -> list[str]:
    """Lemma names (underscores as spaces, no duplicates) of the noun synsets of ``name``, first sense first.

    ``first_sense_only`` (default) keeps the first sense alone, as counting needs: all senses of "cat" include
    "guy" and "Caterpillar".
    """
    found = senses(name)[:1] if first_sense_only else senses(name)
    words = (w.replace("_", " ") for offset in found for w in _nouns().words[_position(offset)])
    return list(dict.fromkeys(words))


def hypernyms(wnid_: str, levels: int = 2) -> list[str]:
    """Names of a synset's hypernyms up to ``levels`` steps up, nearest first, each by its first lemma
    ("n02099601" golden retriever -> ["retriever", "sporting dog"]); several parents at one level all count."""
    nouns = _nouns()
    found, level = [], [_position(offset_of(wnid_))]
    for _ in range(levels):
        level = [int(p) for i in level for p in nouns.parents[nouns.parent_ptr[i] : nouns.parent_ptr[i + 1]]]
        found += [nouns.words[p][0].replace("_", " ") for p in level]
    return list(dict.fromkeys(found))


def concept_synset(name: str, wnid_: str | None = None) -> int | None:
    """The synset offset a concept stands for: ``wnid_`` if given, else the first noun sense of ``name``; None if
    ``name`` is not a WordNet noun."""
    if wnid_:
        return offset_of(wnid_)
    found = senses(name)
    return found[0] if found else None


def _subtree(position: int) -> set[int]:
    """Positions of a synset and all its hyponyms and instance hyponyms, transitively."""
    nouns = _nouns()
    seen, stack = {position}, [position]
    while stack:
        i = stack.pop()
        for child in nouns.children[nouns.child_ptr[i] : nouns.child_ptr[i + 1]].tolist():
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def descendants(name_or_wnid: str) -> set[int]:
    """Offsets of all hyponyms (and instance hyponyms), transitively, of a wnid ("n04490091") or of a noun's first
    sense ("truck"); the synset itself is not included."""
    root = concept_synset(name_or_wnid, name_or_wnid if _is_wnid(name_or_wnid) else None)
    if root is None:
        raise KeyError(f"{name_or_wnid!r} is not a WordNet noun")
    position = _position(root)
    offsets = _nouns().offsets
    return {int(offsets[i]) for i in _subtree(position) if i != position}


def label_to_concepts(label_wnids: Sequence[str | None], concepts: Iterable[str],
                      concept_wnids: Mapping[str, str] | None = None) -> dict[int, list[str]]:
    """Which downstream concepts each image label shows: label index -> concept names (labels showing none are left
    out). A label shows a concept when its synset is the concept's synset or one of its descendants (Tiny ImageNet
    "moving van" n03796401 -> CIFAR-10 "truck", "tabby" -> "cat").

    ``label_wnids``: one wnid per label (None: unknown). ``concept_wnids``: optional sense per concept name (e.g.
    from a dataset card); other concepts use their first noun sense, and concepts unknown to WordNet show in no label.
    """
    given = concept_wnids or {}
    trees: dict[str, set[int]] = {}
    for name in concepts:
        root = concept_synset(name, given.get(name))
        if root is not None:
            trees[name] = _subtree(_position(root))
    shows: dict[int, list[str]] = {}
    for label, code in enumerate(label_wnids):
        if not code:
            continue
        position = _position(offset_of(code))
        found = [name for name, tree in trees.items() if position in tree]
        if found:
            shows[label] = found
    return shows
