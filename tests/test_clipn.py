"""CLIPN-style negation: the losses' values at initialisation, the head's inference formulas, training on a tiny
synthetic problem (fast, seeded), the training-data builders and the Flickr8k split the default model holds out."""
import csv

import numpy as np
import pytest
import torch
from scipy.special import expit

from conftest import shared, unit_rows
from zeroshot.train.align import Targets
from zeroshot.train.default_captions import flickr_split
from zeroshot.train.negation import (NegationConfig, NegationMap, caption_targets, class_prompt_targets, clipn_losses,
                                  join_targets, negate, train_negation)
from zeroshot.features import FeatureSet
from zeroshot.heads import CLIPN
from zeroshot.ood_metrics import auroc

D = 16
SCALE = 30.0


def test_losses_at_initialisation_match_the_spec(rng):
    f = torch.as_tensor(unit_rows(rng.standard_normal((8, D))))
    t = torch.as_tensor(unit_rows(rng.standard_normal((8, D))))
    losses = clipn_losses(f, t, t, 100.0, torch.eye(8, dtype=torch.bool))  # t_no = t: every p_yes = 1/2
    assert float(losses["yes"]) == pytest.approx(np.log(2), abs=1e-6)
    assert float(losses["no"]) == pytest.approx(np.log(2), abs=1e-6)
    assert float(losses["tso"]) == pytest.approx(1.99, abs=1e-4)
    assert float(losses["total"]) == pytest.approx(0.5 * (2 * np.log(2) + 1.99), abs=1e-4)


def test_losses_leave_same_group_pairs_out_of_the_no_term(rng):
    f = torch.as_tensor(unit_rows(rng.standard_normal((4, D))))
    t = torch.as_tensor(unit_rows(rng.standard_normal((4, D))))
    t_no = torch.as_tensor(unit_rows(rng.standard_normal((4, D))))
    everyone = clipn_losses(f, t, t_no, SCALE, torch.eye(4, dtype=torch.bool))["no"]
    grouped = torch.eye(4, dtype=torch.bool)
    grouped[0, 1] = grouped[1, 0] = True
    z = SCALE * (f @ t.T - f @ t_no.T)
    keep = ~grouped
    expected = -torch.nn.functional.logsigmoid(-z[keep]).mean()
    assert float(clipn_losses(f, t, t_no, SCALE, grouped)["no"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(everyone) != pytest.approx(float(expected))


@pytest.fixture
def head_problem(rng):
    W = unit_rows(rng.standard_normal((5, D)))
    W_no = unit_rows(rng.standard_normal((5, D)))
    X = unit_rows(rng.standard_normal((40, D)))
    return W, W_no, X


def _direct(W, W_no, X):
    yes, no = SCALE * X.astype(np.float64) @ W.T, SCALE * X.astype(np.float64) @ W_no.T
    p = np.exp(yes - yes.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p_yes = 1 / (1 + np.exp(-(yes - no)))
    return p, p_yes


def test_ctw_and_atd_scores_follow_the_formulas(head_problem):
    W, W_no, X = head_problem
    p, p_yes = _direct(W, W_no, X)
    ctw = CLIPN("ctw", SCALE).fit(class_embeddings=W, no_class_embeddings=W_no)
    atd = CLIPN("atd", SCALE).fit(class_embeddings=W, no_class_embeddings=W_no)
    p_yes_predicted = p_yes[np.arange(len(X)), p.argmax(1)]
    np.testing.assert_allclose(expit(ctw.score_samples(X).astype(np.float64)), p_yes_predicted, rtol=1e-4)
    s_atd = (p_yes * p).sum(1)
    np.testing.assert_allclose(expit(atd.score_samples(X).astype(np.float64)), s_atd, rtol=1e-4)
    assert (s_atd <= 1).all() and (s_atd > 0).all()
    np.testing.assert_array_equal(ctw.predict(X) == -1, p_yes_predicted < 0.5)
    np.testing.assert_array_equal(atd.predict(X) == -1, 1 - s_atd > p.max(1))
    assert set(atd.predict(X)) <= {-1, 1}


def test_log_odds_keep_ranking_where_sigmoids_saturate(rng):
    W = unit_rows(rng.standard_normal((3, D)))
    X = unit_rows(W[[0, 0, 1]] + 0.01 * rng.standard_normal((3, D)))
    for inference in ("ctw", "atd"):
        s = CLIPN(inference, 100.0).fit(class_embeddings=W, no_class_embeddings=-W).score_samples(X)
        assert (s > 100).all() and len(np.unique(s)) == 3  # p_yes = 1 - e^-200: 1.0 in any float, not its log-odds


def test_opposite_no_embeddings_are_the_degenerate_head(rng):
    """W_no = -W_yes with positive cosines: p_no ~ 0 everywhere, so every score ties at S = 1 (AUROC 0.5)."""
    W = unit_rows(rng.standard_normal((4, D)) + 3.0)
    X_id, X_ood = unit_rows(W[[0, 1, 2]] + 0.2), unit_rows(rng.standard_normal((5, D)) + 3.0)
    head = CLIPN("atd", 100.0).fit(class_embeddings=W, no_class_embeddings=-W)
    assert np.allclose(expit(head.score_samples(np.r_[X_id, X_ood]).astype(np.float64)), 1.0)


def test_fit_checks(head_problem):
    W, W_no, _ = head_problem
    with pytest.raises(ValueError, match="inference"):
        CLIPN("vote").fit(class_embeddings=W, no_class_embeddings=W_no)
    with pytest.raises(ValueError, match="one 'no' embedding per class"):
        CLIPN().fit(class_embeddings=W, no_class_embeddings=W_no[:3])


def _synthetic_pairs(rng, n_concepts=12, per_concept=40):
    """Images and captions sharing a concept direction, each modality with its own common offset (CLIP's gap)."""
    concepts = unit_rows(rng.standard_normal((n_concepts, D)))
    img_offset, txt_offset = unit_rows(rng.standard_normal((2, D)))
    c = np.repeat(np.arange(n_concepts), per_concept)
    images = unit_rows(1.5 * img_offset + concepts[c] + 0.3 * rng.standard_normal((len(c), D)))
    texts = unit_rows(1.5 * txt_offset + concepts[c] + 0.3 * rng.standard_normal((len(c), D)))
    targets = Targets(torch.as_tensor(texts), np.arange(len(c) + 1), np.arange(len(c)), c.copy())
    return images, targets, concepts, txt_offset, img_offset


def test_training_learns_to_say_no_and_does_not_collapse(rng):
    images, targets, concepts, txt_offset, img_offset = _synthetic_pairs(rng)
    config = NegationConfig(rank=8, epochs=25, batch_size=64, lr=1e-2, seed=0)
    negation = train_negation(images, targets, logit_scale=SCALE, config=config)
    first, best = negation.info["history"][0], min(negation.info["history"], key=lambda r: r["val_total"])
    assert best["val_total"] < first["val_total"] < 1.688  # 1.688: the loss at t_no = t
    assert best["val_yes_acc"] > 0.5 and best["val_no_acc"] > 0.5  # held-out pairs: most say yes / no rightly
    W = unit_rows(1.5 * txt_offset + concepts[:6])  # "class prompts" of half the concepts
    W_no = negation(W)
    assert np.abs(W_no + W).max() > 0.1 and np.abs(W_no - W).max() > 0.1  # neither t nor its opposite
    head = CLIPN("atd", SCALE).fit(class_embeddings=W, no_class_embeddings=W_no)
    ids = unit_rows(1.5 * img_offset + concepts[np.arange(60) % 6] + 0.3 * rng.standard_normal((60, D)))
    oods = unit_rows(1.5 * img_offset + concepts[6 + np.arange(60) % 6] + 0.3 * rng.standard_normal((60, D)))
    assert auroc(head.score_samples(ids), head.score_samples(oods)) > 0.8


def test_training_is_seeded(rng):
    images, targets, *_ = _synthetic_pairs(rng, 4, 20)
    config = NegationConfig(rank=4, epochs=3, batch_size=16)
    first, again = (train_negation(images, targets, logit_scale=SCALE, config=config) for _ in range(2))
    np.testing.assert_array_equal(again.U, first.U)
    assert np.abs(first.U).max() > 0  # it moved from its zero start
    other = train_negation(images, targets, logit_scale=SCALE, config=NegationConfig(rank=4, epochs=3, batch_size=16,
                                                                                      seed=1))
    assert not np.array_equal(other.U, first.U)


def test_training_input_checks(rng):
    images, targets, *_ = _synthetic_pairs(rng, 2, 5)
    with pytest.raises(ValueError, match="rank"):
        train_negation(images, targets, logit_scale=SCALE, config=NegationConfig(rank=D + 1))
    with pytest.raises(ValueError, match="targets describe"):
        train_negation(images[:-1], targets, logit_scale=SCALE)


def test_negation_map_save_load_and_fingerprint(rng, tmp_path):
    U, V = rng.standard_normal((D, 4)).astype(np.float32), rng.standard_normal((D, 4)).astype(np.float32)
    m = NegationMap(U, V, {"fingerprint": "aaaa"})
    W = unit_rows(rng.standard_normal((3, D)))
    expected = torch.nn.functional.normalize(negate(torch.as_tensor(W), torch.as_tensor(U), torch.as_tensor(V)))
    np.testing.assert_allclose(m(W), expected.numpy(), atol=1e-5)
    m.save(tmp_path / "neg")
    np.testing.assert_array_equal(NegationMap.load(tmp_path / "neg", fingerprint="aaaa")(W), m(W))
    with pytest.raises(ValueError, match="fingerprint aaaa, not bbbb"):
        NegationMap.load(tmp_path / "neg", fingerprint="bbbb")


class FakeTextTower:
    """Stands in for a backbone: deterministic unit text embeddings, one per distinct text."""

    fingerprint = "fake"

    def __init__(self):
        self.seen = {}

    def encode_texts(self, texts):
        rows = [self.seen.setdefault(t, len(self.seen)) for t in texts]
        return unit_rows(np.random.default_rng(7).standard_normal((5000, D)))[rows]


def test_class_prompt_targets_pair_each_image_with_its_class_prompts(rng):
    labels = np.array([2, 0, 1, 2])
    images = FeatureSet(unit_rows(rng.standard_normal((4, D))), labels, np.arange(4).astype(str))
    tower = FakeTextTower()
    feats, targets = class_prompt_targets(images, ["cat", "dog", "car"], ["a {}.", "the {}."], tower)
    texts = {v: k for k, v in tower.seen.items()}
    for i, label in enumerate(labels):
        rows = targets.indices[targets.offsets[i]:targets.offsets[i + 1]]
        assert [texts[r] for r in rows] == [t.format(["cat", "dog", "car"][label]) for t in ("a {}.", "the {}.")]
    np.testing.assert_array_equal(targets.groups, labels)
    with pytest.raises(ValueError, match="labelled"):
        class_prompt_targets(FeatureSet(feats, -np.ones(4, int), images.ids), ["a", "b", "c"], ["{}"], tower)


def test_join_targets_keeps_groups_apart(rng):
    tower = FakeTextTower()
    a = class_prompt_targets(FeatureSet(unit_rows(rng.standard_normal((3, D))), np.array([0, 1, 0]),
                                        np.array(["a", "b", "c"])), ["x", "y"], ["{}"], tower)
    b = class_prompt_targets(FeatureSet(unit_rows(rng.standard_normal((2, D))), np.array([0, 1]),
                                        np.array(["d", "e"])), ["z", "w"], ["{}"], tower)
    feats, joined = join_targets(a, b)
    assert len(feats) == 5 and joined.groups.tolist() == [0, 1, 0, 2, 3]
    drawn = joined.draw(np.arange(5), np.random.default_rng(0))
    np.testing.assert_array_equal(joined.embeddings[drawn][3:], b[1].embeddings[b[1].draw(np.arange(2), rng)])


def test_caption_targets_use_only_the_default_models_training_images(tmp_path):
    """The first 800 Flickr8k-1k images by sorted name, exactly scripts/train_default_model.py's training split."""
    data = shared("flickr8k_1k").parent
    with open(data / "flickr8k_1k" / "captions.csv", newline="") as f:
        names = sorted({row["image"] for row in csv.DictReader(f)})
    rng = np.random.default_rng(0)
    images = FeatureSet(unit_rows(rng.standard_normal((len(names), D))), -np.ones(len(names), int),
                        np.array(names[::-1]))  # any order: rows are matched by file name
    feats, targets = caption_targets(images, data / "flickr8k_1k" / "captions.csv", FakeTextTower(), first=800)
    train_paths = flickr_split(data)[0]
    expected_rows = [names[::-1].index(p.name) for p in train_paths]
    np.testing.assert_array_equal(feats, images.features[expected_rows])
    assert len(targets.offsets) == 801 and len(targets.embeddings) >= 4000

