"""The default model's own training corpus rebuilt from the shared data with the shipped recipe (labels from the
shards' .cls members, no image decoded): its size, labels, per-caption draw weights, and its image-side counts."""
import json

import numpy as np
import pytest

from conftest import shared
from zeroshot.backbone import DEFAULT_MODEL_DIR
from zeroshot.concepts.image_side import image_counts, integrated_counts
from zeroshot.concepts.matching import Concept
from zeroshot.concepts.wordnet import label_to_concepts
from zeroshot.train.default_captions import DIGIT_LABEL, TEMPLATES, hypernym_captions, shipped_corpus

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def shipped():
    return shipped_corpus(shared("tinyimagenet").parent)  # ~5-10 s: indexes the 10 gzip shards


@pytest.fixture(scope="module")
def corpus(shipped):
    return shipped[0]


def test_the_corpus_follows_the_shipped_recipe(shipped):
    """Hypernym captions, Flickr photos visited ``flickr_repeats`` times, digits last, sorted, with their captions."""
    corpus, recipe = shipped
    training = json.loads((DEFAULT_MODEL_DIR / "training.json").read_text())
    assert recipe == training["recipe"] and recipe["hypernyms"]
    n_tiny, n_flickr = len(corpus.tiny_imagenet), 800 * recipe["flickr_repeats"]
    assert len(corpus) == n_tiny + n_flickr + 10 * recipe["digits"] == sum(recipe[k] for k in ("Tiny ImageNet", "Flickr8k", "rendered digits"))
    assert any(", a kind of " in t for t in corpus.captions(0))
    flickr = np.arange(n_tiny, n_tiny + n_flickr)
    assert [corpus.captions(i) for i in flickr[::800]] == [corpus.captions(n_tiny)] * recipe["flickr_repeats"]
    digits = corpus.labels[n_tiny + n_flickr:]
    assert np.array_equal(digits, DIGIT_LABEL + np.repeat(np.arange(10), recipe["digits"]))
    assert corpus.captions(len(corpus) - 1)[-1] == "9" and corpus.texts[-1] == "9"
    np.testing.assert_array_equal(corpus.first_image_of(np.array([DIGIT_LABEL + 9, DIGIT_LABEL])),
                                  [len(corpus) - recipe["digits"], n_tiny + n_flickr])


def test_digit_images_show_the_mnist_classes(corpus):
    mnist = [str(d) for d in range(10)]
    counts = image_counts(corpus.labels, label_to_concepts(corpus.class_wnids, mnist), mnist)
    n = (corpus.labels >= DIGIT_LABEL).sum() // 10
    assert counts == dict.fromkeys(mnist, n)


def test_sizes_and_labels(corpus):
    n_tiny = len(corpus.tiny_imagenet)
    n_labelled = n_tiny + (corpus.labels >= DIGIT_LABEL).sum()
    assert (n_tiny, len(corpus.flickr_paths)) == (50_000, 800) and len(corpus.class_wnids) == 210
    assert np.array_equal(np.bincount(corpus.labels[:n_tiny]), np.full(200, 250))
    assert (corpus.labels[n_tiny:] < 0).sum() == len(corpus) - n_labelled
    detail = json.loads((shared("tinyimagenet") / "classes_detail.json").read_text())
    assert [d["label"] for d in detail] == list(range(200))
    wnids = corpus.image_wnids()
    assert wnids[n_tiny] is None and wnids[0] == detail[corpus.labels[0]]["wnid"]
    first = detail[corpus.labels[0]]
    assert len(corpus.captions(0)) == (len(TEMPLATES) * len(first["synonyms"].split(","))
                                       + len(hypernym_captions(first["name"], first["wnid"])))
    first_flickr = corpus.texts.index(corpus.captions(n_tiny)[0])  # Flickr captions come after the class prompts
    assert first_flickr == corpus.stops[corpus.labels == 199][0]


def test_draw_weights_sum_to_one_visit_per_image(corpus):
    rows = list(corpus.rows())
    assert len(rows) == len(corpus.texts) and rows[0][0] == corpus.texts[0]
    draws = np.array([r[1] for r in rows])
    assert draws.sum() == pytest.approx(len(corpus)) and (draws > 0).all()
    text_labels = np.array([r[2] for r in rows])
    flickr = np.isin(np.arange(len(rows)), corpus.layout(np.arange(50_000, 50_800))[1])
    assert (text_labels[flickr] == -1).all() and (text_labels[~flickr] >= 0).all()
    offsets, indices = corpus.layout(np.array([0, len(corpus) - 1]))
    assert offsets[-1] == len(indices) == len(corpus.captions(0)) + len(corpus.captions(len(corpus) - 1))


def test_image_side_counts_for_cifar10(corpus):
    shows = label_to_concepts(corpus.class_wnids, CIFAR10)
    counts = image_counts(corpus.labels, shows, CIFAR10)
    assert counts["truck"] == 500  # moving van + police van, 250 images each
    assert counts["cat"] >= 750 and counts["airplane"] == 0
    # moving van prompts are drawn by moving van images only: integrated = their draws, all 250 images'
    van = corpus.layout(corpus.first_image_of(np.array([corpus.class_wnids.index("n03796401")])))[1]
    both = integrated_counts({"truck": van}, corpus.text_labels(), shows, corpus.draws_per_epoch())
    assert both["truck"] == pytest.approx(250)


def test_default_model_counts_join_the_three_sides(corpus, monkeypatch):
    """``--corpus default-model`` rows: per-epoch text, image and integrated counts; integrated never exceeds either."""
    import zeroshot.concepts.default_model as default_model

    monkeypatch.setattr(default_model, "shipped_corpus", lambda data: (corpus, {}))  # built once per module
    rows, meta = default_model.default_model_counts([Concept(n) for n in CIFAR10], data="unused")
    by = {r["concept"]: r for r in rows}
    assert by["truck"]["image_count"] == 500 and by["airplane"]["image_count"] == 0
    assert all(r["integrated_count"] <= min(r["text_count"], r["image_count"]) + 1e-6 for r in rows)
    assert by["cat"]["integrated_count"] > 0 and meta["corpus"]["texts"] == len(corpus.texts)
    assert meta["image_labels_per_concept"]["truck"] == sorted(meta["image_labels_per_concept"]["truck"])


def test_tagged_integrated_agrees_with_labels_when_the_tags_are_the_labels(corpus):
    """A tagger that tags exactly what the labels show gives the label-based integrated counts (per-image share of
    mentioning captions, summed, equals the draws of mentioning captions of showing labels)."""
    from zeroshot.concepts.default_model import tagged_integrated

    shows = label_to_concepts(corpus.class_wnids, CIFAR10)
    tags = np.array([[k in shows and name in shows[k] for name in CIFAR10] for k in corpus.labels.tolist()])
    texts = np.array(corpus.texts)
    mentions = [np.flatnonzero(np.char.find(np.char.lower(texts), name) >= 0) for name in CIFAR10]
    ours = tagged_integrated(corpus, mentions, tags)
    labels = integrated_counts(dict(zip(CIFAR10, mentions)), corpus.text_labels(), shows, corpus.draws_per_epoch())
    np.testing.assert_allclose(ours, [labels[n] for n in CIFAR10], rtol=1e-9)
    assert ours[CIFAR10.index("cat")] > 0


def test_tag_images_thresholds_cosines():
    from zeroshot.concepts.image_side import tag_images

    W = np.eye(3, 4, dtype=np.float32)
    X = np.array([[0.9, 0.1, 0, 0], [0.2, 0.2, 0.5, 0]], dtype=np.float32)
    np.testing.assert_array_equal(tag_images(X, W, 0.4), [[True, False, False], [False, False, True]])
