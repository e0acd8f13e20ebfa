"""The default model's own training corpus rebuilt from the shared data (labels from the shards' .cls members, no
image decoded): its size, labels, per-caption draw weights, and its image-side counts for CIFAR-10."""
import json

import numpy as np
import pytest

from conftest import shared
from zeroshot.concepts.image_side import image_counts, integrated_counts
from zeroshot.concepts.matching import Concept
from zeroshot.concepts.wordnet import label_to_concepts
from zeroshot.train.default_captions import TEMPLATES, default_model_captions

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def corpus():
    return default_model_captions(shared("tinyimagenet").parent)  # ~5-10 s: indexes the 10 gzip shards


def test_sizes_and_labels(corpus):
    n_tiny = len(corpus.tiny_imagenet)
    assert (n_tiny, len(corpus.flickr_paths), len(corpus)) == (50_000, 800, 50_800)
    assert len(corpus.texts) == 14_010 and len(corpus.class_wnids) == 200
    assert np.array_equal(np.bincount(corpus.labels[:n_tiny]), np.full(200, 250))
    assert (corpus.labels[n_tiny:] == -1).all()
    detail = json.loads((shared("tinyimagenet") / "classes_detail.json").read_text())
    assert [d["label"] for d in detail] == list(range(200))
    wnids = corpus.image_wnids()
    assert wnids[n_tiny] is None and wnids[0] == detail[corpus.labels[0]]["wnid"]
    first = corpus.captions(0)
    assert len(first) == len(TEMPLATES) * len(detail[corpus.labels[0]]["synonyms"].split(","))
    assert corpus.captions(n_tiny)[0] in corpus.texts[10_010:]  # Flickr captions come after the class prompts


def test_draw_weights_sum_to_one_visit_per_image(corpus):
    rows = list(corpus.rows())
    assert len(rows) == len(corpus.texts) and rows[0][0] == corpus.texts[0]
    draws = np.array([r[1] for r in rows])
    assert draws.sum() == pytest.approx(len(corpus)) and (draws > 0).all()
    text_labels = np.array([r[2] for r in rows])
    assert (text_labels[:10_010] >= 0).all() and (text_labels[10_010:] == -1).all()
    offsets, indices = corpus.layout(np.array([0, len(corpus) - 1]))
    assert offsets[-1] == len(indices) == len(corpus.captions(0)) + len(corpus.captions(len(corpus) - 1))


def test_image_side_counts_for_cifar10(corpus):
    shows = label_to_concepts(corpus.class_wnids, CIFAR10)
    counts = image_counts(corpus.labels, shows, CIFAR10)
    assert counts["truck"] == 500  # moving van + police van, 250 images each
    assert counts["cat"] >= 750 and counts["airplane"] == 0
    # a truck prompt is drawn by truck images only: integrated = text side for labelled prompts, 0 for Flickr
    texts = np.array(corpus.texts)
    van = np.flatnonzero(np.char.find(texts, "moving van") >= 0)
    both = integrated_counts({"truck": van}, corpus.text_labels(), shows, corpus.draws_per_epoch())
    assert both["truck"] == pytest.approx(250)


def test_default_model_counts_join_the_three_sides(corpus, monkeypatch):
    """``--corpus default-model`` rows: per-epoch text, image and integrated counts; integrated never exceeds either."""
    import zeroshot.concepts.default_model as default_model

    monkeypatch.setattr(default_model, "default_model_captions", lambda data: corpus)  # built once per module
    rows, meta = default_model.default_model_counts([Concept(n) for n in CIFAR10], data="unused")
    by = {r["concept"]: r for r in rows}
    assert by["truck"]["image_count"] == 500 and by["airplane"]["image_count"] == 0
    assert all(r["integrated_count"] <= min(r["text_count"], r["image_count"]) + 1e-6 for r in rows)
    assert by["cat"]["integrated_count"] > 0 and meta["corpus"]["texts"] == 14_010
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
