"""Concept counts over a caption corpus: a one-pass inverted index (lemma -> caption ids), then set intersections.

Matching rule (spec §2.3, the paper's ``lemmatized`` text search with the §1b fixes): captions and concept names are
lower-cased, split on non-letters and lemmatised as nouns with one lemmatiser; ``all_unigrams`` counts captions that
hold every lemma of a variant, ``phrase`` those that hold the lemma sequence contiguously. Synonym variants are OR-ed.
Unlike the official code, a variant unigram absent from the corpus vocabulary makes that variant count 0 (strict AND;
the official code drops it, turning "sea slug" into "sea"); such lemmas are listed in ``ConceptCount.missing``.
"""

from __future__ import annotations

import os
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice

import numpy as np
from tqdm import tqdm

from ..engines.session import check_engine
from .corpus import PARTITION_BYTES, iter_captions
from .lemmas import Lemmatiser, get_lemmatiser, tokens

MODES = ("all_unigrams", "phrase")
Captions = Iterable["str | tuple[str, float]"]


@dataclass(frozen=True)
class Concept:
    """A concept to count: its name, then synonyms (``variants`` always starts with the name; duplicates removed)."""

    name: str
    variants: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "variants", tuple(dict.fromkeys((self.name, *self.variants))))


@dataclass
class ConceptCount:
    """How often one concept occurs: weighted ``count``, matched captions, per-variant captions, ids and examples."""

    name: str
    count: float | int
    n_captions: int
    frequency: float
    variants: dict[str, int]
    caption_ids: np.ndarray
    examples: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class CaptionIndex:
    """Inverted index lemma -> sorted uint32 caption ids; memory is vocabulary + postings, never caption texts."""

    def __init__(self, postings: dict[str, np.ndarray], n_captions: int, weights: np.ndarray | None,
                 lemmatiser: Lemmatiser):
        self._postings = postings
        self.n_captions = n_captions
        self.weights = weights
        self.total_weight = n_captions if weights is None else float(weights.sum(dtype=np.float64))
        self.lemmatiser = lemmatiser

    @classmethod
    def build(cls, captions: Captions, lemmatiser: Lemmatiser | str = "lemminflect", *,
              progress: bool = False) -> CaptionIndex:
        """Index ``captions`` (strings or ``(caption, weight)`` pairs, weight = expected draws) in one pass."""
        lemmatiser = _as_lemmatiser(lemmatiser)
        word_ids: dict[str, int] = {}   # word type -> lemma id, so each distinct word is lemmatised once
        lemma_ids: dict[str, int] = {}
        postings: list[array] = []
        weights = array("f")
        n = 0
        for n, item in enumerate(tqdm(captions, unit=" captions", disable=not progress), 1):
            text, weight = (item, 1.0) if isinstance(item, str) else item
            weights.append(weight)
            words = tokens(text)
            try:
                ids = {word_ids[w] for w in words}
            except KeyError:
                for w in words:
                    if w not in word_ids:
                        word_ids[w] = lemma_ids.setdefault(lemmatiser(w), len(lemma_ids))
                        if len(postings) < len(lemma_ids):
                            postings.append(array("I"))
                ids = {word_ids[w] for w in words}
            for lemma_id in ids:
                postings[lemma_id].append(n - 1)
        frozen = {lemma: np.asarray(postings[i], dtype=np.uint32) for lemma, i in lemma_ids.items()}
        weights_np = np.asarray(weights, dtype=np.float32)
        return cls(frozen, n, None if np.all(weights_np == 1.0) else weights_np, lemmatiser)

    def __contains__(self, lemma: str) -> bool:
        return lemma in self._postings

    @property
    def vocabulary_size(self) -> int:
        return len(self._postings)

    def postings(self, lemma: str) -> np.ndarray:
        """Sorted ids of the captions holding ``lemma`` (empty if the corpus never uses it)."""
        return self._postings.get(lemma, np.empty(0, np.uint32))

    def all_of(self, lemmas: Iterable[str]) -> np.ndarray:
        """Sorted ids of the captions holding every lemma (none for an empty query), rarest postings first."""
        lists = sorted((self.postings(lemma) for lemma in set(lemmas)), key=len)
        if not lists:
            return np.empty(0, np.uint32)
        ids = lists[0]
        for other in lists[1:]:
            ids = np.intersect1d(ids, other, assume_unique=True)
        return ids

    def weight_of(self, ids: np.ndarray) -> float | int:
        """Total weight of the captions ``ids`` (their number when the corpus is unweighted)."""
        return len(ids) if self.weights is None else float(self.weights[ids].sum(dtype=np.float64))


def count_concepts(index: CaptionIndex, concepts: Sequence[Concept | str], *, mode: str = "all_unigrams",
                   lemmatiser: Lemmatiser | str | None = None,
                   captions: Captions | Callable[[], Captions] | None = None, examples: int = 3) -> list[ConceptCount]:
    """Count each concept in ``index``; ``captions`` (the same corpus, or a factory) serves phrase checks and examples.

    ``lemmatiser`` defaults to the index's own and must have its name. Phrase mode and examples need one more
    streaming pass over ``captions``, restricted to candidate ids and stopped after the last one.
    """
    check_mode(mode)
    lemmatiser = index.lemmatiser if lemmatiser is None else _as_lemmatiser(lemmatiser)
    if lemmatiser.name != index.lemmatiser.name:
        raise ValueError(f"the index was built with the {index.lemmatiser.name!r} lemmatiser, "
                         f"not {lemmatiser.name!r}: query with the same one")
    concepts = [c if isinstance(c, Concept) else Concept(c) for c in concepts]
    queries = [[tuple(lemmatiser(w) for w in tokens(v)) for v in c.variants] for c in concepts]
    matched = [[index.all_of(seq) for seq in qs] for qs in queries]
    pending = {(i, j): ids for i, qs in enumerate(queries) for j, seq in enumerate(qs)
               if mode == "phrase" and len(seq) > 1 and len(ids := matched[i][j])}
    if pending and captions is None:
        raise ValueError("phrase mode needs captions= for its verification pass over the candidate captions")
    for key in pending:
        matched[key[0]][key[1]] = np.empty(0, np.uint32)
    texts: list[list[str]] = [[] for _ in concepts]
    if captions is not None and (pending or examples > 0):
        source = captions() if callable(captions) else captions
        _second_pass(source, lemmatiser, queries, matched, pending, examples, texts)
    results = []
    for concept, qs, per_variant, shown in zip(concepts, queries, matched, texts):
        ids = np.unique(np.concatenate(per_variant)).astype(np.uint32) if per_variant else np.empty(0, np.uint32)
        count = index.weight_of(ids)
        missing = sorted({lemma for seq in qs for lemma in seq if lemma not in index})
        frequency = count / index.total_weight if index.n_captions else 0.0
        results.append(ConceptCount(concept.name, count, len(ids), frequency,
                                    {v: len(m) for v, m in zip(concept.variants, per_variant)}, ids, shown, missing))
    return results


def count_corpus(corpus: str | os.PathLike | Callable[[], Captions], concepts: Sequence[Concept | str], *,
                 mode: str = "all_unigrams", lemmatiser: Lemmatiser | str = "lemminflect", examples: int = 3,
                 column: str | None = None, engine: str = "local", address: str | None = None,
                 num_workers: int | None = None, partition_bytes: int = PARTITION_BYTES,
                 ) -> tuple[CaptionIndex | CorpusSummary, list[ConceptCount]]:
    """Count ``concepts`` in a corpus: a path (read with :func:`iter_captions`, ``column`` as there) or a factory of
    caption streams. Returns the corpus's index (local engine) or its :class:`CorpusSummary` (Ray), and the counts.

    ``engine="local"`` counts the corpus as one partition in this process; ``engine="ray"`` (a path only) counts the
    partitions of :func:`plan_partitions` (``partition_bytes``) on Ray (:mod:`zeroshot.engines.concepts`: ``address``
    and ``num_workers`` as in :func:`zeroshot.engines.session.ray_session`) and merges them into the same counts.
    """
    check_mode(mode)
    if check_engine(engine) == "local":
        captions = corpus if callable(corpus) else (lambda: iter_captions(corpus, column=column))
        return count_partition(captions, concepts, mode=mode, lemmatiser=lemmatiser, examples=examples)
    if callable(corpus):
        raise TypeError("the Ray engine reads a corpus by partitions: give the corpus path, not a captions factory")
    from ..engines.concepts import count_on_ray

    return count_on_ray(corpus, concepts, mode=mode, lemmatiser=_as_lemmatiser(lemmatiser), examples=examples,
                        column=column, address=address, num_workers=num_workers, partition_bytes=partition_bytes)


def count_partition(captions: Callable[[], Captions], concepts: Sequence[Concept | str], *, mode: str,
                    lemmatiser: Lemmatiser | str, examples: int) -> tuple[CaptionIndex, list[ConceptCount]]:
    """Index one stream of captions (one pass over ``captions()``) and count ``concepts`` (a second pass if needed):
    the whole corpus for the local engine, one partition on a Ray task, so both engines count with this code."""
    index = CaptionIndex.build(captions(), lemmatiser)
    return index, count_concepts(index, concepts, mode=mode, captions=captions, examples=examples)


@dataclass
class CorpusSummary:
    """What a corpus counted in partitions is: the fields of :class:`CaptionIndex` that describe the whole corpus."""

    n_captions: int
    total_weight: float | int
    lemmatiser: Lemmatiser


@dataclass
class PartitionCounts:
    """One partition's counts, as a worker sends them back: its size and its :class:`ConceptCount` list, whose caption
    ids, examples and missing lemmas are the partition's own (:func:`merge_partitions` makes them the corpus's)."""

    n_captions: int
    total_weight: float | int
    counts: list[ConceptCount]

    @classmethod
    def of(cls, index: CaptionIndex, counts: list[ConceptCount]) -> PartitionCounts:
        """The counts of :func:`count_partition`, without its index (which stays on the worker)."""
        return cls(index.n_captions, index.total_weight, counts)


def merge_partitions(parts: Sequence[PartitionCounts], lemmatiser: Lemmatiser,
                     examples: int) -> tuple[CorpusSummary, list[ConceptCount]]:
    """The counts of the corpus whose partitions, in caption order, are ``parts``: exactly what counting it as one
    partition gives. Partitions are disjoint runs of caption ids, so ids are shifted by the captions before them and
    concatenated (still sorted), counts add up, the first ``examples`` matches are the first among the partitions'
    first ones, and a lemma is missing from the corpus when it is missing from every partition. Counts are exact
    sums for unweighted corpora (every file format); summed weights may differ from one pass in the last bits."""
    if not parts:
        raise ValueError("a corpus has at least one partition (an empty file is one empty partition)")
    offsets = np.cumsum([0, *(p.n_captions for p in parts[:-1])])
    n_captions = sum(p.n_captions for p in parts)
    total_weight = sum(p.total_weight for p in parts)
    merged = [_merge_concept(per_part, offsets, total_weight if n_captions else None, examples)
              for per_part in zip(*(p.counts for p in parts))]
    return CorpusSummary(n_captions, total_weight, lemmatiser), merged


def _merge_concept(per_part: Sequence[ConceptCount], offsets: np.ndarray, total_weight: float | None,
                   examples: int) -> ConceptCount:
    """One concept's :class:`ConceptCount` over the corpus from its counts in each partition (see merge_partitions;
    ``total_weight`` None: the corpus has no captions, frequency 0 as in :func:`count_concepts`)."""
    first = per_part[0]
    ids = np.concatenate([c.caption_ids + np.uint32(offset) for c, offset in zip(per_part, offsets.tolist())])
    count = sum(c.count for c in per_part)
    return ConceptCount(first.name, count, len(ids), 0.0 if total_weight is None else count / total_weight,
                        {v: sum(c.variants[v] for c in per_part) for v in first.variants}, ids,
                        list(islice(chain.from_iterable(c.examples for c in per_part), examples)),
                        sorted(set(first.missing).intersection(*(c.missing for c in per_part[1:]))))


def check_mode(mode: str) -> str:
    """``mode`` if it is a matching mode, else a ValueError naming them (before any pass over a corpus)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    return mode


def _second_pass(captions: Captions, lemmatiser: Lemmatiser, queries: list[list[tuple[str, ...]]],
                 matched: list[list[np.ndarray]], pending: dict[tuple[int, int], np.ndarray], examples: int,
                 texts: list[list[str]]) -> None:
    """Verify phrase candidates (filling ``matched``) and collect the first ``examples`` matches per concept.

    Ids are visited in ascending order, so a concept's first matches lie among its first ``examples`` sure ids
    and its phrase candidates; the pass stops after the last id either needs.
    """
    verify: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for key, ids in pending.items():
        for cid in ids.tolist():
            verify[cid].append(key)
    show: dict[int, list[int]] = defaultdict(list)
    if examples > 0:
        for i, per_variant in enumerate(matched):
            if per_variant:
                for cid in np.unique(np.concatenate(per_variant))[:examples].tolist():
                    show[cid].append(i)
    last = max(max(verify, default=-1), max(show, default=-1))
    hits: dict[tuple[int, int], list[int]] = defaultdict(list)
    for cid, item in enumerate(captions):
        if cid > last:
            break
        checks, found = verify.get(cid), set(show.get(cid, ()))
        if checks is None and not found:
            continue
        text = item if isinstance(item, str) else item[0]
        if checks:
            seq = [lemmatiser(w) for w in tokens(text)]
            for i, j in checks:
                if _contains(seq, queries[i][j]):
                    hits[i, j].append(cid)
                    found.add(i)
        for i in found:
            if len(texts[i]) < examples:
                texts[i].append(text)
    for (i, j) in pending:
        matched[i][j] = np.asarray(hits.get((i, j), []), dtype=np.uint32)


def _contains(seq: list[str], phrase: tuple[str, ...]) -> bool:
    """Whether ``phrase`` occurs contiguously in ``seq``."""
    n = len(phrase)
    return any(tuple(seq[s:s + n]) == phrase for s in range(len(seq) - n + 1))


def _as_lemmatiser(lemmatiser: Lemmatiser | str) -> Lemmatiser:
    return get_lemmatiser(lemmatiser) if isinstance(lemmatiser, str) else lemmatiser
