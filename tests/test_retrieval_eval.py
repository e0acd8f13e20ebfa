"""``zeroshot_retrieval``: CLIP_benchmark's image<->text recall@k, checked on cases with known answers, against a
per-query loop, and end to end on a slice of Flickr8k-1k with the default model."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import flickr_slice

from zeroshot.cli import main
from zeroshot.evaluation.retrieval import retrieval_recall

KEYS = [f"{kind}_retrieval_recall@{k}" for k in (1, 5, 10) for kind in ("image", "text")]


def test_identical_features_recall_everything():
    images = np.eye(12, dtype=np.float32)
    metrics = retrieval_recall(images, images, np.arange(12))
    assert sorted(metrics) == sorted(KEYS) and all(v == 1.0 for v in metrics.values())


def test_a_shifted_pairing_has_known_ranks():
    """Caption t describes image (t + 1) % n but looks exactly like image t (which it scores highest). Every
    other image scores 0, so the true image ranks second, tied with n - 2 others: ties count for the query, so
    recall@1 is 0 and recall@k>=2 is 1, both ways."""
    n = 12
    features = np.eye(n, dtype=np.float32)
    metrics = retrieval_recall(features, features, (np.arange(n) + 1) % n, ks=(1, 2))
    assert metrics == {"image_retrieval_recall@1": 0.0, "text_retrieval_recall@1": 0.0,
                       "image_retrieval_recall@2": 1.0, "text_retrieval_recall@2": 1.0}


def test_a_graded_case():
    """Two images, 3 captions: caption 0 (image 0) matches image 0, caption 1 (image 0) matches image 1, caption 2
    (image 1) matches image 1. Text->image: 2 of 3 captions rank their image first; image->text: image 0's best
    caption (0) is first, image 1's (2) ties with caption 1 for first."""
    images = np.array([[1, 0], [0, 1]], dtype=np.float32)
    texts = np.array([[1, 0], [0, 1], [0, 1]], dtype=np.float32)
    metrics = retrieval_recall(images, texts, np.array([0, 0, 1]), ks=(1,))
    assert metrics == {"image_retrieval_recall@1": pytest.approx(2 / 3), "text_retrieval_recall@1": 1.0}


def brute_force(images, texts, text_image, k):
    """CLIP_benchmark's definition, one query at a time, with a full sort."""
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    scores = texts @ images.T
    t2i = np.mean([text_image[t] in np.argsort(-scores[t])[:k] for t in range(len(texts))])
    i2t = np.mean([any(text_image[t] == i for t in np.argsort(-scores[:, i])[:k]) for i in range(len(images))])
    return {f"image_retrieval_recall@{k}": t2i, f"text_retrieval_recall@{k}": i2t}


@pytest.mark.parametrize("chunk", [7, 4096])
def test_matches_a_per_query_loop_on_random_features(chunk):
    rng = np.random.default_rng(0)
    n_images, dim = 40, 8
    text_image = np.concatenate([np.arange(n_images), rng.integers(0, n_images, 110)])  # 1 to ~8 captions each
    images = rng.normal(size=(n_images, dim))
    texts = images[text_image] + rng.normal(scale=1.5, size=(len(text_image), dim))  # noisy: recall well below 1
    metrics = retrieval_recall(images, texts, text_image, ks=(1, 5, 10), chunk=chunk)
    expected = {}
    for k in (1, 5, 10):
        expected.update(brute_force(images, texts, text_image, k))
    assert metrics == pytest.approx(expected)
    assert 0 < metrics["image_retrieval_recall@1"] < 1


def test_every_image_needs_a_caption():
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_recall(np.eye(3), np.eye(3)[:2], np.array([0, 1]))


def test_eval_command_on_a_flickr8k_slice(tmp_path, capsys):
    data = flickr_slice(tmp_path / "flickr", 50)
    main(["eval", "--task", "zeroshot_retrieval", "--dataset", str(data), "--output", str(tmp_path / "out"),
          "--model", "default", "--device", "cpu", "--quiet"])
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["task"] == "zeroshot_retrieval" and report["n_images"] == 50 and report["n_texts"] == 250
    for kind in ("image", "text"):
        recalls = [report[f"{kind}_retrieval_recall@{k}"] for k in (1, 5, 10)]
        # chance is about 0.02 at k=1 and 0.2 at k=10 both ways (50 images, 5 captions each); measured 0.13-0.14
        # and 0.48-0.65
        assert recalls == sorted(recalls) and recalls[0] > 0.06 and 0.35 < recalls[2] <= 1
    assert json.loads(capsys.readouterr().out)["n_texts"] == 250


def test_eval_without_captions_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--task", "zeroshot_retrieval", "--dataset", str(tmp_path), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "captions.csv does not exist" in err[0]


def test_eval_refuses_class_options_for_retrieval(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--task", "zeroshot_retrieval", "--dataset", str(tmp_path), "--card", "cifar10",
              "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--card name classes for zeroshot_classification" in capsys.readouterr().err


def test_text_to_image_recall_equals_zeroshot_search_over_the_same_features(tmp_path):
    """The evaluation's text->image recall@k equals what a search index of the same images answers to each caption
    (``zeroshot search``'s path: exact index, captions encoded as queries)."""
    from zeroshot import Index, extract, load_backbone
    from zeroshot.evaluation.retrieval import evaluate_retrieval
    from zeroshot.retrieval.search import match_captions, read_captions, text_to_image_recall

    data = flickr_slice(tmp_path / "flickr", 40)
    backbone = load_backbone("default", device="cpu")
    metrics = evaluate_retrieval(backbone, data, extract_options={"progress": False})
    fs = extract(backbone, data / "images", progress=False)
    owners, texts = match_captions(fs.ids.tolist(), *read_captions(data / "captions.csv"))
    found = text_to_image_recall(Index.build(fs, factory="Flat"), backbone, texts, owners)
    assert found == {f"recall@{k}": metrics[f"image_retrieval_recall@{k}"] for k in (1, 5, 10)}
    assert 0 < found["recall@1"] < found["recall@10"] < 1
