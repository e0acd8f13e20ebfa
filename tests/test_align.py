"""Alignment trainer: losses against direct computations, augmentation, a tiny problem that learns, exact resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zeroshot.train.align import (
    AlignConfig, Aligner, Targets, ViewPlan, apply_view, augment, contrastive_loss, sigmoid_loss, teacher_loss,
)
from zeroshot.images import ImageTransform


def unit(x):
    return F.normalize(x, dim=-1)


def test_contrastive_loss_matches_a_direct_multi_positive_computation():
    g = torch.Generator().manual_seed(0)
    img, txt = unit(torch.randn(6, 8, generator=g)), unit(torch.randn(6, 8, generator=g))
    groups = torch.tensor([0, 0, 1, -1, 1, -1])
    loss = contrastive_loss(img, txt, groups, torch.tensor(10.0))
    logits = (10 * img @ txt.T).double().numpy()
    pos = [[j for j in range(6) if j == i or (groups[i] >= 0 and groups[i] == groups[j])] for i in range(6)]

    def side(m):
        p = np.exp(m - m.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return -np.mean([np.log(p[i, pos[i]].sum()) for i in range(6)])

    assert loss.item() == pytest.approx((side(logits) + side(logits.T)) / 2, rel=1e-5)


def test_contrastive_loss_is_small_when_aligned_and_large_when_shuffled():
    x = unit(torch.randn(32, 16, generator=torch.Generator().manual_seed(1)))
    groups = torch.full((32,), -1)
    assert contrastive_loss(x, x, groups, torch.tensor(100.0)) < 0.05
    assert contrastive_loss(x, x.roll(1, 0), groups, torch.tensor(100.0)) > 5


def test_soft_targets_follow_text_similarity_and_reduce_to_hard_targets_when_cold():
    g = torch.Generator().manual_seed(2)
    img, txt = unit(torch.randn(6, 8, generator=g)), unit(torch.randn(6, 8, generator=g))
    groups = torch.tensor([0, 0, 1, -1, 2, -1])
    logits = 10 * img @ txt.T
    sim = (txt @ txt.T).masked_fill(torch.tensor([[a == b and a >= 0 or i == j for j, b in enumerate(groups)]
                                                  for i, a in enumerate(groups)]), 1.0)
    q = torch.softmax(sim / 0.1, 1)
    expected = -((q * logits.log_softmax(1)).sum(1).mean() + (q * logits.T.log_softmax(1)).sum(1).mean()) / 2
    assert contrastive_loss(img, txt, groups, torch.tensor(10.0), 0.1).item() == pytest.approx(expected.item(), rel=1e-5)
    # with no shared groups, a cold temperature puts the whole target on the image's own caption: the hard loss
    singles = torch.full((6,), -1)
    assert contrastive_loss(img, txt, singles, torch.tensor(10.0), 1e-4).item() == pytest.approx(
        contrastive_loss(img, txt, singles, torch.tensor(10.0)).item(), rel=1e-5)


def test_sigmoid_loss_is_a_sum_of_pairwise_binary_log_losses():
    g = torch.Generator().manual_seed(3)
    img, txt = unit(torch.randn(5, 8, generator=g)), unit(torch.randn(5, 8, generator=g))
    groups = torch.tensor([0, 0, -1, 1, -1])
    z = (10 * img @ txt.T - 3).double().numpy()
    total = sum(np.log1p(np.exp(-z[i, j] if i == j or (groups[i] >= 0 and groups[i] == groups[j]) else z[i, j]))
                for i in range(5) for j in range(5))
    loss = sigmoid_loss(img, txt, groups, torch.tensor(10.0), torch.tensor(-3.0))
    assert loss.item() == pytest.approx(total / 5, rel=1e-5)
    aligned = sigmoid_loss(img, img, torch.full((5,), -1), torch.tensor(100.0), torch.tensor(-50.0))
    assert aligned < 0.01 < sigmoid_loss(img, img.roll(1, 0), torch.full((5,), -1), torch.tensor(100.0),
                                         torch.tensor(-50.0))


def test_sigmoid_loss_trains_the_tiny_problem_and_soft_targets_need_the_contrastive_loss(tmp_path):
    images, targets, centres = tiny_problem()
    config = AlignConfig(loss="sigmoid", epochs=6, batch_size=32, lr=3e-3, warmup_steps=5)
    aligner = Aligner(tiny_tower(), ImageTransform(size=32), config, tmp_path)
    aligner.fit(images, targets, progress=False)
    feats = unit(aligner.tower(ImageTransform(size=32).normalize(images)))
    assert ((feats @ centres.T).argmax(1).numpy() == targets.groups).mean() >= 0.9
    assert aligner.bias.item() != config.init_bias
    with pytest.raises(ValueError, match="contrastive"):
        AlignConfig(loss="sigmoid", soft_target_temperature=0.1)


def test_teacher_losses():
    s, t = unit(torch.randn(5, 8)), unit(torch.randn(5, 8))
    assert teacher_loss("cosine", t, t, None, 0.01).item() == pytest.approx(0, abs=1e-6)
    assert teacher_loss("cosine", s, t, None, 0.01).item() == pytest.approx((1 - (s * t).sum(1)).mean().item())
    assert teacher_loss("l1", s, t, None, 0.01).item() == pytest.approx((s - t).abs().sum(1).mean().item())
    anchors = unit(torch.randn(3, 8))
    p_t = F.softmax(t @ anchors.T / 0.05, 1)
    expected = -(p_t * F.log_softmax(s @ anchors.T / 0.05, 1)).sum(1).mean()
    assert teacher_loss("affinity", s, t, anchors, 0.05).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="anchor"):
        teacher_loss("affinity", s, t, None, 0.05)


def test_targets_draw_from_each_images_own_rows():
    targets = Targets(torch.zeros(6, 2), np.array([0, 2, 3, 6]), np.array([4, 5, 0, 1, 2, 3]), np.array([0, 1, 2]))
    rng = np.random.default_rng(0)
    drawn = np.stack([targets.draw(np.array([0, 1, 2]), rng) for _ in range(200)])
    assert set(drawn[:, 0]) == {4, 5} and set(drawn[:, 1]) == {0} and set(drawn[:, 2]) == {1, 2, 3}
    empty = Targets(torch.zeros(1, 2), np.array([0, 0]), np.array([], dtype=np.int64), np.array([0]))
    with pytest.raises(ValueError, match="at least one target"):
        empty.draw(np.array([0]), rng)


def test_augment_is_seeded_and_optional():
    transform = ImageTransform(size=32)
    batch = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    config = AlignConfig(low_res_prob=0.5)
    a = augment(batch, transform, config, torch.Generator().manual_seed(3))
    b = augment(batch, transform, config, torch.Generator().manual_seed(3))
    c = augment(batch, transform, config, torch.Generator().manual_seed(4))
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    plain = augment(batch, transform, AlignConfig(augment=False), torch.Generator())
    assert torch.equal(plain, transform.normalize(batch))


def tiny_problem(n_per_group: int = 32):
    """4 groups of images with a distinct colour each; each group has 3 caption vectors near a group centre."""
    g = torch.Generator().manual_seed(0)
    colours = torch.tensor([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]], dtype=torch.float32)
    groups = np.repeat(np.arange(4), n_per_group)
    noise = torch.randint(-25, 25, (len(groups), 3, 32, 32), generator=g)
    images = (colours[groups][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
    centres = unit(torch.randn(4, 16, generator=g))
    captions = unit(centres.repeat_interleave(3, 0) + 0.1 * torch.randn(12, 16, generator=g))
    offsets = np.arange(0, 3 * len(groups) + 1, 3)
    indices = np.concatenate([np.arange(3 * k, 3 * k + 3) for k in groups])
    return images, Targets(captions, offsets, indices, groups), centres


def tiny_tower():
    from open_clip.timm_model import TimmModel

    torch.manual_seed(0)
    return TimmModel("test_resnet", embed_dim=16, image_size=32, pool="avg", proj="linear")


def test_tiny_problem_learns_and_keeps_the_best_weights(tmp_path):
    images, targets, centres = tiny_problem()
    scores = []

    def validate(tower):
        feats = unit(tower(ImageTransform(size=32).normalize(images)))
        accuracy = ((feats @ centres.T).argmax(1).numpy() == targets.groups).mean()
        scores.append(accuracy)
        return accuracy

    config = AlignConfig(epochs=6, batch_size=32, lr=3e-3, warmup_steps=5, checkpoint_every=4)
    summary = Aligner(tiny_tower(), ImageTransform(size=32), config, tmp_path).fit(
        images, targets, validate=validate, progress=False)
    assert len(scores) == 6 and max(scores) >= 0.9
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert summary["best_score"] == max(scores) and (tmp_path / "best.safetensors").is_file()


def test_killed_training_resumes_to_identical_weights(tmp_path, monkeypatch):
    images, targets, _ = tiny_problem(16)
    config = AlignConfig(epochs=3, batch_size=16, warmup_steps=2, checkpoint_every=1)
    full = Aligner(tiny_tower(), ImageTransform(size=32), config, tmp_path / "full")
    full.fit(images, targets, progress=False)

    interrupted = Aligner(tiny_tower(), ImageTransform(size=32), config, tmp_path / "resumed")
    original_log = Aligner._log

    def crash_at_step_7(self, record):
        original_log(self, record)
        if record.get("step") == 7:
            raise KeyboardInterrupt  # as if killed before step 7's checkpoint

    monkeypatch.setattr(Aligner, "_log", crash_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(images, targets, progress=False)
    monkeypatch.setattr(Aligner, "_log", original_log)
    resumed = Aligner(tiny_tower(), ImageTransform(size=32), config, tmp_path / "resumed")
    summary = resumed.fit(images, targets, progress=False)
    assert summary["steps"] == 3 * (len(images) // 16)
    for (name, a), (_, b) in zip(full.tower.state_dict().items(), resumed.tower.state_dict().items()):
        assert torch.equal(a, b), name


def test_resume_with_other_settings_is_refused(tmp_path):
    images, targets, _ = tiny_problem(8)
    Aligner(tiny_tower(), ImageTransform(size=32), AlignConfig(epochs=1, batch_size=16, checkpoint_every=1),
            tmp_path).fit(images, targets, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        Aligner(tiny_tower(), ImageTransform(size=32), AlignConfig(epochs=1, batch_size=16, lr=1.0,
                                                                    checkpoint_every=1), tmp_path).fit(
            images, targets, progress=False)


def test_bad_inputs_are_explained(tmp_path):
    images, targets, _ = tiny_problem(8)
    aligner = Aligner(tiny_tower(), ImageTransform(size=32), AlignConfig(batch_size=16), tmp_path)
    with pytest.raises(ValueError, match="uint8"):
        aligner.fit(images.float(), targets, progress=False)
    with pytest.raises(ValueError, match="targets for"):
        aligner.fit(images[:10], targets, progress=False)
    with pytest.raises(ValueError, match="loss must be"):
        AlignConfig(loss="mse")


def test_max_steps_stops_there_and_a_later_run_continues_as_if_uninterrupted(tmp_path):
    images, targets, _ = tiny_problem(16)
    config = AlignConfig(epochs=2, batch_size=16, warmup_steps=2, checkpoint_every=100)
    full = Aligner(tiny_tower(), ImageTransform(size=32), config, tmp_path / "full")
    full.fit(images, targets, progress=False)
    capped = AlignConfig(**{**config.__dict__, "max_steps": 5})
    summary = Aligner(tiny_tower(), ImageTransform(size=32), capped, tmp_path / "two").fit(images, targets,
                                                                                          progress=False)
    assert summary["steps"] == 5 and summary["stopped_early"]
    rest = Aligner(tiny_tower(), ImageTransform(size=32), config, tmp_path / "two")
    assert rest.fit(images, targets, progress=False)["steps"] == 2 * (len(images) // 16)
    for (name, a), (_, b) in zip(full.tower.state_dict().items(), rest.tower.state_dict().items()):
        assert torch.equal(a, b), name


def test_view_plan_replays_the_same_view_for_each_image():
    transform, config = ImageTransform(size=32), AlignConfig(low_res_prob=0.5)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    plan = ViewPlan(6, 3, seed=1)
    rows = np.arange(6)
    clean = plan.render(images, rows, np.zeros(6, int), transform, config)
    assert torch.equal(clean, transform.normalize(images))
    mixed = plan.render(images, rows, np.array([0, 1, 2, 1, 0, 2]), transform, config)
    one = apply_view(transform.normalize(images[[1]]), plan.uniforms[1, [1]], config)
    assert torch.equal(mixed[[1]], one) and torch.equal(mixed[0], clean[0]) and not torch.equal(mixed[2], clean[2])
    again = ViewPlan(6, 3, seed=1).subset(np.array([3, 5]))
    assert torch.equal(again.render(images[[3, 5]], np.arange(2), np.array([1, 2]), transform, config),
                       mixed[[3, 5]])
    assert not torch.equal(ViewPlan(6, 3, seed=2).uniforms, plan.uniforms)


def test_targets_per_view_pair_each_image_with_its_views():
    features = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # 2 views x 3 images
    targets = Targets.per_view(features, ViewPlan(3, 2))
    drawn = targets.draw(np.array([0, 1, 2] * 50), np.random.default_rng(0))
    assert set(drawn[::3]) == {0, 3} and set(drawn[1::3]) == {1, 4}  # image i: rows v * 3 + i
    torch.testing.assert_close(targets.embeddings[4], torch.as_tensor(features[1, 1]))
    with pytest.raises(ValueError, match="views x"):
        Targets.per_view(features, ViewPlan(3, 5))


def test_schedule_steps_end_the_cosine_and_the_run_inside_an_epoch(tmp_path):
    images, targets, _ = tiny_problem(16)
    config = AlignConfig(epochs=3, batch_size=16, warmup_steps=1, schedule_steps=5)
    summary = Aligner(tiny_tower(), ImageTransform(size=32), config, tmp_path / "run").fit(images, targets,
                                                                                          progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 5 and not summary["stopped_early"] and 5 < 3 * (len(images) // 16)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5] and log[-1]["lr"] == 0.0 and log[-2]["lr"] > 0
