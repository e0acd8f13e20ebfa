"""Distillation: ridge warm start, and a tiny student that loads as a Backbone sharing the teacher's text tower."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL_CFG, shared
from zeroshot import check_same_space, class_embeddings, extract, load_backbone
from zeroshot.train.distill import distill, ridge_projection
from zeroshot.heads import ZeroShotClassifier, load_head


def test_ridge_projection_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    features, true_map = torch.randn(500, 12, generator=g), torch.randn(12, 5, generator=g)
    weight = ridge_projection(features, features @ true_map, ridge=1e-8)
    assert weight.shape == (5, 12)
    torch.testing.assert_close(weight, true_map.T, atol=1e-4, rtol=1e-4)


def test_ridge_projection_stays_at_its_prior_when_rows_are_few():
    g = torch.Generator().manual_seed(0)
    features, true_map = torch.randn(8, 12, generator=g), torch.randn(12, 5, generator=g)  # 8 rows, 12 unknowns
    assert (ridge_projection(features, features @ true_map) - true_map.T).abs().max() > 0.1
    torch.testing.assert_close(ridge_projection(features, features @ true_map, prior=true_map.T), true_map.T)


@pytest.fixture(scope="module")
def tiny_student(tiny_backbone, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("distill")
    data = tmp_path / "data.npz"
    with np.load(shared("cifar10", "train.npz"), allow_pickle=False) as z:
        np.savez(data, images=z["images"][:160], labels=z["labels"][:160])
    student = distill(tiny_backbone, data, tmp_path / "student", student="test_efficientnet", views=3,
                      epochs=2, batch_size=32, cache_dir=tmp_path / "cache", progress=False)
    return student, tmp_path


def test_tiny_student_lives_in_the_teacher_space(tiny_backbone, tiny_student):
    student, tmp_path = tiny_student
    assert student.embed_dim == tiny_backbone.embed_dim and student.fingerprint != tiny_backbone.fingerprint
    config = json.loads((tmp_path / "student" / "model" / "open_clip_config.json").read_text())
    assert config["teacher_fingerprint"] == tiny_backbone.fingerprint
    assert config["model_cfg"]["vision_cfg"]["timm_model_name"] == "test_efficientnet"
    texts = ["a photo of a cat.", "a truck"]
    np.testing.assert_allclose(student.encode_texts(texts), tiny_backbone.encode_texts(texts), atol=1e-6)
    report = json.loads((tmp_path / "student" / "model" / "distillation.json").read_text())
    assert report["images"] == 160 and report["views"] == 3 and -1 <= report["held_out_cosine"] <= 1
    assert student.space == tiny_backbone.space
    check_same_space(student, tiny_backbone)  # no error: one space


def test_a_student_refuses_another_teachers_embeddings(tiny_backbone, tiny_student, tmp_path):
    import open_clip

    from zeroshot import save_backbone_folder

    student, _ = tiny_student
    torch.manual_seed(1)
    other = load_backbone(save_backbone_folder(open_clip.CLIP(**TINY_MODEL_CFG), tmp_path / "other", TINY_MODEL_CFG,
                                               {"size": 32}), device="cpu")
    with pytest.raises(ValueError, match="different spaces"):
        check_same_space(student, other)
    head = ZeroShotClassifier().fit(class_embeddings=other.encode_texts(["a cat", "a dog"]))
    head.save(tmp_path / "head", fingerprint=other.fingerprint, space=other.space)
    with pytest.raises(ValueError, match="embedding space"):
        load_head(tmp_path / "head", space=student.space)
    assert load_head(tmp_path / "head", space=other.space).space_ == other.space
    wide = {"space": student.space, "dim": 2 * student.embed_dim}
    with pytest.raises(ValueError, match="embedding sizes differ"):
        check_same_space(student, wide)
    with pytest.raises(ValueError, match=r"but it is expecting \d+ features"):
        ZeroShotClassifier().fit(class_embeddings=np.eye(2, 2 * student.embed_dim)).predict(
            student.encode_images(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).numpy())


def test_a_killed_distillation_resumes_and_skips_a_corrupt_image(tiny_backbone, tmp_path, capsys,
                                                                  zeroshot_notes):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    with np.load(shared("cifar10", "train.npz"), allow_pickle=False) as z:
        for i, image in enumerate(z["images"][:40]):
            Image.fromarray(image).save(folder / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    kwargs = dict(student="test_efficientnet", views=2, epochs=3, batch_size=8, cache_dir=tmp_path / "cache",
                  progress=False)
    distill(tiny_backbone, folder, tmp_path / "run", max_steps=4, **kwargs)  # stands in for a kill after step 4
    assert any("broken.png" in note for note in zeroshot_notes)  # a note, not stdout: that is the CLI's JSON
    assert capsys.readouterr().out == ""
    encode = type(tiny_backbone).encode_images
    try:  # the teacher's views are cached: a resumed run must not encode them again
        type(tiny_backbone).encode_images = lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-encoded"))
        distill(tiny_backbone, folder, tmp_path / "run", **kwargs)
    finally:
        type(tiny_backbone).encode_images = encode
    assert any("resuming from step 4" in note for note in zeroshot_notes)
    report = json.loads((tmp_path / "run" / "model" / "distillation.json").read_text())
    assert report["steps"] == 3 * ((40 - 1) // 8) and list(report["skipped"]) == ["broken.png"]
    assert report["images"] == 40


def test_a_student_with_a_conv_head_after_pooling_works_with_the_teachers_classes(tiny_backbone, tmp_path):
    """issue 20: MobileNetV3 widens its pooled features in a conv head (288 -> 1024 at width 0.5); the projection
    is sized from that width, so the saved student loads, encodes and classifies with the teacher's embeddings."""
    data = tmp_path / "data.npz"
    with np.load(shared("cifar10", "train.npz"), allow_pickle=False) as z:
        np.savez(data, images=z["images"][:64], labels=z["labels"][:64])
    student = distill(tiny_backbone, data, tmp_path / "run", student="mobilenetv3_small_050", views=1, epochs=1,
                      batch_size=32, cache_dir=tmp_path / "cache", progress=False)
    assert student.model.visual.head.proj.in_features == student.model.visual.trunk.head_hidden_size == 1024
    reloaded = load_backbone(tmp_path / "run" / "model")
    features = np.asarray(extract(reloaded, data, cache_dir=False, progress=False).features)
    assert features.shape == (64, tiny_backbone.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, rtol=1e-4)
    W = class_embeddings(tiny_backbone, ["cat", "truck"], ["a photo of a {}."], cache_dir=False)
    check_same_space(reloaded, tiny_backbone)
    assert ZeroShotClassifier().fit(class_embeddings=W).predict(features).shape == (64,)


def test_a_misspelt_student_name_is_refused_with_suggestions(tiny_backbone, tmp_path):
    with pytest.raises(ValueError, match="did you mean mobilenetv3_small_100"):
        distill(tiny_backbone, shared("dtd10", "all"), tmp_path, student="mobilenetv3_smal_100", epochs=1,
                cache_dir=tmp_path / "cache", progress=False)
