"""WordNet extract (packaged, offline): synonyms, sense choice, hyponym subtrees, labels -> downstream concepts, and
the image-side / integrated counts built on them."""
import json
from importlib import resources

import numpy as np
import pytest

from conftest import shared
from zeroshot.concepts.image_side import image_counts, integrated_counts
from zeroshot.concepts.wordnet import (concept_synset, descendants, label_to_concepts, offset_of, senses, synonyms,
                                       wnid)

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_packaged_file_is_small_and_licensed():
    data = resources.files("zeroshot.data")
    assert len(data.joinpath("wordnet_nouns.json.gz").read_bytes()) < 1.5e6  # 1.13 MB when written
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in data.joinpath("WORDNET_LICENSE").read_text()


def test_synonyms_first_sense_by_default():
    assert {"airplane", "aeroplane", "plane"} <= set(synonyms("airplane"))
    assert synonyms("cat") == ["cat", "true cat"]
    everything = synonyms("cat", first_sense_only=False)
    assert everything[:2] == ["cat", "true cat"] and "guy" in everything
    assert "motorcar" in synonyms("automobile") and synonyms("Moving_Van") == ["moving van"]
    assert synonyms("no such noun xyz") == []


def test_wnids_and_sense_order():
    assert wnid(4490091) == "n04490091" and offset_of("n04490091") == 4490091
    assert senses("truck")[0] == 4490091  # the motor vehicle before the handcart
    assert concept_synset("van") != concept_synset("van", "n04520170") == 4520170  # a card's wnid wins
    with pytest.raises(ValueError):
        offset_of("04490091")
    with pytest.raises(KeyError):
        offset_of("n00000001")


def test_descendants_are_transitive_and_include_instances():
    trucks = descendants("truck")
    assert offset_of("n03796401") in trucks and offset_of("n03977966") in trucks  # moving van, police van (via van)
    assert 4490091 not in trucks and descendants("n04490091") == trucks
    assert offset_of("n02123045") in descendants("cat")  # tabby
    assert senses("Einstein")[0] in descendants("physicist")  # instance hyponym


def test_tiny_imagenet_labels_map_to_cifar10_concepts():
    detail = json.loads((shared("tinyimagenet") / "classes_detail.json").read_text())
    shows = label_to_concepts([d["wnid"] for d in detail], CIFAR10)
    by_name = {detail[k]["name"]: v for k, v in shows.items()}
    assert by_name["moving van"] == ["truck"] and by_name["police van"] == ["truck"]
    assert by_name["tabby"] == ["cat"] and by_name["sports car"] == ["automobile"]
    assert "schooner" not in by_name  # a sailing vessel, not a ship in WordNet
    assert label_to_concepts(["n03796401", None], ["truck", "not a noun xyz"]) == {0: ["truck"]}
    assert label_to_concepts(["n03796401"], ["van"]) == {}  # first sense of "van": the vanguard
    assert label_to_concepts(["n03796401"], ["van"], {"van": "n04520170"}) == {0: ["van"]}


def test_image_and_integrated_counts_on_a_toy_corpus():
    # 4 images: tabby, moving van, unlabelled, tabby; label 0 = tabby -> cat, label 1 = moving van -> truck
    shows = label_to_concepts(["n02123045", "n03796401"], ["cat", "truck", "dog"])
    labels = np.array([0, 1, -1, 0])
    assert image_counts(labels, shows, ["cat", "truck", "dog"]) == {"cat": 2, "truck": 1, "dog": 0}
    assert image_counts(labels, shows, ["cat"], weights=[0.5, 1, 1, 0.25]) == {"cat": 0.75}
    # captions 0..4 belong to images 0, 1, 2, 3, 3; the text side says which captions mention what
    caption_image = labels[[0, 1, 2, 3, 3]]  # keyed by label: every image of a label shows the same concepts
    mentions = {"cat": [0, 2, 4], "truck": np.array([0, 1], np.uint32), "dog": [2]}
    assert integrated_counts(mentions, caption_image, shows) == {"cat": 2, "truck": 1, "dog": 0}
    weighted = integrated_counts(mentions, caption_image, shows, weights=[1, 1, 1, 0.5, 0.5])
    assert weighted == {"cat": 1.5, "truck": 1.0, "dog": 0.0}


def test_hypernyms_walk_up_nearest_first():
    from zeroshot.concepts.wordnet import hypernyms

    assert hypernyms("n02099712") == ["retriever", "sporting dog"]  # Labrador retriever
    assert hypernyms("n02099712", levels=1) == ["retriever"]
    assert hypernyms("n02504458", levels=1) == ["elephant"]  # African elephant
    assert hypernyms("n00001740") == []  # entity, the root
