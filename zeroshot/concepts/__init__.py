"""Concept frequency in caption corpora (spec: methods/concept_frequency.md): lemmas, corpora, counting."""

from .corpus import describe_corpus, iter_captions
from .lemmas import Lemmatiser, get_lemmatiser, tokens
from .matching import MODES, CaptionIndex, Concept, ConceptCount, count_concepts, count_corpus

__all__ = ["MODES", "CaptionIndex", "Concept", "ConceptCount", "Lemmatiser", "count_concepts", "count_corpus",
           "describe_corpus", "get_lemmatiser", "iter_captions", "tokens"]
