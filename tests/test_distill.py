"""Distillation: ridge warm start, and a tiny student that loads as a Backbone sharing the teacher's text tower."""
from __future__ import annotations

import json

import numpy as np
import torch

from conftest import shared
from zeroshot.distill import distill, ridge_projection


def test_ridge_projection_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    features, true_map = torch.randn(500, 12, generator=g), torch.randn(12, 5, generator=g)
    weight = ridge_projection(features, features @ true_map, ridge=1e-8)
    assert weight.shape == (5, 12)
    torch.testing.assert_close(weight, true_map.T, atol=1e-4, rtol=1e-4)


def test_tiny_student_lives_in_the_teacher_space(tiny_backbone, tmp_path):
    folder = tmp_path / "data"
    with np.load(shared("cifar10", "train.npz"), allow_pickle=False) as z:
        np.savez(folder.with_suffix(".npz"), images=z["images"][:160], labels=z["labels"][:160])
    student = distill(tiny_backbone, folder.with_suffix(".npz"), tmp_path / "student", student="test_efficientnet",
                      epochs=2, batch_size=32, cache_dir=tmp_path / "cache", progress=False)
    assert student.embed_dim == tiny_backbone.embed_dim and student.fingerprint != tiny_backbone.fingerprint
    config = json.loads((tmp_path / "student" / "model" / "open_clip_config.json").read_text())
    assert config["teacher_fingerprint"] == tiny_backbone.fingerprint
    assert config["model_cfg"]["vision_cfg"]["timm_model_name"] == "test_efficientnet"
    texts = ["a photo of a cat.", "a truck"]
    np.testing.assert_allclose(student.encode_texts(texts), tiny_backbone.encode_texts(texts), atol=1e-6)
    report = json.loads((tmp_path / "student" / "model" / "distillation.json").read_text())
    assert report["images"] == 160 and -1 <= report["held_out_cosine"] <= 1


def test_students_with_a_conv_head_after_pooling_are_refused(tiny_backbone, tmp_path):
    import pytest

    with pytest.raises(ValueError, match="conv head after pooling"):
        distill(tiny_backbone, shared("dtd10", "all"), tmp_path, student="mobilenetv3_small_050", epochs=1,
                cache_dir=tmp_path / "cache", progress=False)
