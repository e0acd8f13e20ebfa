"""The concept counting engine: tokens, lemmatisers, corpus readers and the matcher (spec §2 and sanity targets)."""
from __future__ import annotations

import csv
import io
import json
import re
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from zeroshot.concepts import (
    CaptionIndex,
    Concept,
    count_concepts,
    count_corpus,
    describe_corpus,
    get_lemmatiser,
    iter_captions,
    tokens,
)

TOY = ["Two dogs playing", "a hot dog stand", "a dog that is hot", "a cat chasing another cat",
       "an airplane, or an aeroplane?", "Dog on the beach", "a banded snake", "a sea lion", "a lion by the sea"]
FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k_1k" / "captions.csv"


def _counts(concepts, mode="all_unigrams", captions=TOY, **kw):
    _, results = count_corpus(lambda: list(captions), concepts, mode=mode, **kw)
    return {r.name: r for r in results}


def test_tokens_lower_case_and_split_on_non_letters():
    assert tokens("A hot-dog's stand, 2x!") == ["a", "hot", "dog", "s", "stand", "x"]


def test_lemminflect_lemmatises_nouns_and_keeps_adjectives():
    lemma = get_lemmatiser()
    assert (lemma("dogs"), lemma("Dogs"), lemma("banded"), lemma("aeroplanes")) == ("dog", "dog", "banded", "aeroplane")
    assert lemma.name == "lemminflect" and lemma.version


def test_other_lemmatisers_and_clear_errors():
    assert get_lemmatiser("simplemma")("dogs") == "dog"
    assert get_lemmatiser("none")("Dogs") == "dogs"
    with pytest.raises(ValueError, match="lemminflect"):
        get_lemmatiser("wordnet")
    with pytest.raises((ValueError, ImportError), match="spacy|spaCy"):
        get_lemmatiser("spacy:no_such_model")


def test_plural_capitalised_and_substring_free_matching():
    counts = _counts(["dog", "band", "lion"])
    assert counts["dog"].caption_ids.tolist() == [0, 1, 2, 5]          # "dogs", "Dog" match; no substring tricks
    assert counts["band"].count == 0 and counts["band"].missing == ["band"]  # "banded" stays an adjective


def test_hot_dog_in_both_modes():
    unigrams, phrase = _counts(["hot dog", "sea lion"]), _counts(["hot dog", "sea lion"], mode="phrase")
    assert unigrams["hot dog"].caption_ids.tolist() == [1, 2] and phrase["hot dog"].caption_ids.tolist() == [1]
    assert unigrams["sea lion"].count == 2 and phrase["sea lion"].count == 1
    assert phrase["hot dog"].examples == ["a hot dog stand"]


def test_each_caption_counts_once_per_concept():
    counts = _counts(["cat", Concept("airplane", ("aeroplane", "airplane"))])
    assert counts["cat"].count == 1
    airplane = counts["airplane"]
    assert airplane.count == 1 and airplane.variants == {"airplane": 1, "aeroplane": 1}
    assert Concept("airplane", ("aeroplane", "airplane")).variants == ("airplane", "aeroplane")


def test_result_fields():
    dog = _counts(["dog"], examples=2)["dog"]
    assert isinstance(dog.count, int) and dog.n_captions == 4 and dog.frequency == pytest.approx(4 / len(TOY))
    assert dog.caption_ids.dtype == np.uint32 and dog.examples == TOY[:2]
    index = CaptionIndex.build(TOY)
    assert count_concepts(index, ["dog"])[0].examples == []          # no captions given: no second pass


def test_weights_sum():
    weighted = [("a dog", 2.5), ("two dogs", 0.5), ("a cat", 1.0)]
    index, (dog, _) = count_corpus(lambda: weighted, ["dog", "cat"])
    assert index.total_weight == pytest.approx(4.0) and index.weights.dtype == np.float32
    assert dog.count == pytest.approx(3.0) and dog.n_captions == 2 and dog.frequency == pytest.approx(0.75)
    assert CaptionIndex.build(TOY).weights is None


def test_misuse_is_a_clear_error():
    index = CaptionIndex.build(TOY)
    with pytest.raises(ValueError, match="captions="):
        count_concepts(index, ["hot dog"], mode="phrase")
    with pytest.raises(ValueError, match="mode"):
        count_concepts(index, ["dog"], mode="regex")
    with pytest.raises(ValueError, match="same one"):
        count_concepts(index, ["dog"], lemmatiser="none")


def _write_corpora(tmp_path: Path, captions: list[str]) -> dict[str, object]:
    """The same captions in every supported format."""
    (tmp_path / "c.txt").write_text("\n".join(captions) + "\n")
    for name, delimiter in (("c.csv", ","), ("c.tsv", "\t")):
        with open(tmp_path / name, "w", newline="") as f:
            writer = csv.writer(f, delimiter=delimiter)
            writer.writerow(["image", "caption"])
            writer.writerows([f"{i}.jpg", c] for i, c in enumerate(captions))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"caption": c, "id": i}) + "\n"
                                              for i, c in enumerate(captions)))
    for shard, part in enumerate((captions[:2], captions[2:])):
        with tarfile.open(tmp_path / f"shard-{shard:02d}.tar.gz", "w:gz") as tar:
            for i, caption in enumerate(part):
                for ext, data in (("jpg", b"\xff\xd8"), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{shard}{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (tmp_path / "flickr").mkdir()
    (tmp_path / "flickr" / "captions.csv").write_text((tmp_path / "c.csv").read_text())
    return {"txt": tmp_path / "c.txt", "csv": tmp_path / "c.csv", "tsv": tmp_path / "c.tsv",
            "jsonl": tmp_path / "c.jsonl", "webdataset": str(tmp_path / "shard-{00..01}.tar.gz"),
            "folder": tmp_path / "flickr"}


def test_every_corpus_format_reads_back(tmp_path):
    captions = TOY[:5]
    for kind, source in _write_corpora(tmp_path, captions).items():
        assert list(iter_captions(source)) == captions, kind
        described = describe_corpus(source)
        assert described["format"] == ("csv" if kind == "folder" else kind) and len(described["sha256"]) == 64
    assert describe_corpus(tmp_path / "c.txt")["sha256"] != describe_corpus(tmp_path / "c.csv")["sha256"]
    assert next(iter_captions(tmp_path / "c.csv", column="image")) == "0.jpg"
    with pytest.raises(ValueError, match="no column"):
        list(iter_captions(tmp_path / "c.csv", column="text"))
    with pytest.raises(ValueError, match="unknown caption corpus"):
        list(iter_captions(tmp_path / "c.docx"))


def test_parquet_reads_back(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"caption": TOY, "n": list(range(len(TOY)))}), tmp_path / "c.parquet")
    assert list(iter_captions(tmp_path / "c.parquet")) == TOY


@pytest.mark.slow
@pytest.mark.skipif(not FLICKR.is_file(), reason="shared Flickr8k captions absent")
def test_flickr8k_counts_match_an_independent_count():
    from lemminflect import getLemma

    from zeroshot.prompts import load_card

    started = time.perf_counter()
    index, results = count_corpus(lambda: iter_captions(FLICKR), load_card("cifar10").classes)
    elapsed = time.perf_counter() - started
    with open(FLICKR, newline="") as f:
        captions = [row["caption"] for row in csv.DictReader(f)]
    counts = {r.name: r.count for r in results}
    assert index.n_captions == len(captions) == 5000 and elapsed < 10
    for name in ("dog", "horse", "cat"):
        grep = sum(1 for c in captions if re.search(rf"\b{name}s?\b", c, re.IGNORECASE))
        lemmas = sum(1 for c in captions
                     if any(getLemma(w, upos="NOUN")[0] == name for w in re.findall("[a-z]+", c.lower())))
        assert counts[name] == grep == lemmas, name
    assert counts["dog"] > 1000 and counts["airplane"] == counts["deer"] == 0   # a people-/dog-heavy corpus
