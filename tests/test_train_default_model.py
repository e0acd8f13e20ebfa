"""``scripts/train_default_model.py`` is reproducible bit for bit from its command and seed (a tiny run, twice), and
its training set holds what the recipe names."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_default_model.py"


def test_a_tiny_run_is_reproducible_bit_for_bit(tmp_path, monkeypatch):
    data = shared().resolve()
    monkeypatch.setenv("ZEROSHOT_CACHE", str(tmp_path / "cache"))  # both runs share the captions' embeddings
    weights = []
    for run in ("a", "b"):
        command = [sys.executable, str(SCRIPT), "--data", str(data), "--out", str(tmp_path / run), "--limit", "64",
                   "--steps", "2", "--hypernyms", "--digits", "3", "--seed", "3"]
        subprocess.run(command, check=True, capture_output=True, timeout=600)
        weights.append(hashlib.sha256((tmp_path / run / "model" / "open_clip_model.safetensors").read_bytes()))
        summary = json.loads((tmp_path / run / "model" / "training.json").read_text())
        assert summary["steps"] == 2 and summary["kept"] == "final"
        assert summary["recipe"] == {"steps": 2, "hypernyms": True, "digits": 3, "loss": "contrastive",
                                     "soft_targets": None, "flickr_repeats": 1, "Tiny ImageNet": 64,
                                     "Flickr8k": 800, "rendered digits": 30}
    assert weights[0].hexdigest() == weights[1].hexdigest()


def test_the_training_set_pairs_each_source_with_its_captions():
    from zeroshot.images import ImageTransform
    from zeroshot.train.default_captions import DIGIT_LABEL
    from zeroshot.train.default_data import training_set

    texts_seen = []

    def encode(texts):
        texts_seen.extend(texts)
        return np.eye(len(texts), 4, dtype=np.float32)

    train = training_set(shared(), ImageTransform(size=32), encode, hypernyms=True, digits_per_class=2, limit=20)
    assert train.sources == {"Tiny ImageNet": 20, "Flickr8k": 800, "rendered digits": 20}
    assert len(train.images) == 840 and train.images.dtype.is_floating_point is False
    targets = train.targets
    digit_rows = np.arange(820, 840)
    assert set(targets.groups[digit_rows] - DIGIT_LABEL) == set(range(10))
    drawn = [train.texts[i] for i in targets.draw(digit_rows, np.random.default_rng(0))]
    digits = targets.groups[digit_rows] - DIGIT_LABEL
    assert all(str(d) in t or t.endswith(w) for d, t, w in zip(digits, drawn, [
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][d] for d in digits]))
    tiny_texts = [train.texts[i] for i in targets.indices[targets.offsets[0]:targets.offsets[1]]]
    assert any(", a kind of " in t for t in tiny_texts)  # the class's hypernym captions
    assert texts_seen == train.texts


def test_repeated_flickr_photos_keep_their_captions_and_are_positives_of_their_copies():
    from zeroshot.images import ImageTransform
    from zeroshot.train.default_data import FLICKR_GROUP, training_set

    train = training_set(shared(), ImageTransform(size=32), lambda t: np.zeros((len(t), 4), np.float32),
                         flickr_repeats=3, limit=10)
    assert train.sources == {"Tiny ImageNet": 10, "Flickr8k": 2400} and len(train.images) == 2410
    targets, first, third = train.targets, 10, 10 + 2 * 800
    assert torch.equal(train.images[first + 5], train.images[third + 5])
    span = [targets.indices[targets.offsets[r]:targets.offsets[r + 1]].tolist() for r in (first + 5, third + 5)]
    assert span[0] == span[1] and len(span[0]) == 5  # the photo's five captions, in every copy
    assert targets.groups[first + 5] == targets.groups[third + 5] == FLICKR_GROUP + 5
    assert len(np.unique(targets.groups[first:first + 800])) == 800
    with pytest.raises(ValueError, match="flickr_repeats"):
        training_set(shared(), ImageTransform(size=32), lambda t: np.zeros((len(t), 4), np.float32), flickr_repeats=0)
