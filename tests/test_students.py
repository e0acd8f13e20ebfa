"""Student architectures: the registered half-width resnet10t, and narrowing a teacher ResNet into a student."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch

from conftest import TINY_MODEL_CFG, shared
from zeroshot import load_backbone, save_backbone_folder
from zeroshot.train.distill import distill
from zeroshot.students import narrow_copy


def random_resnet(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm ResNet in eval mode with random batch-norm statistics, so that every layer matters."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=0, **kwargs).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.1, 1.0)
            m.bias.data.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("name, kwargs", [("resnet10t", {}), ("test_resnet", {}),
                                          ("test_resnet", {"replace_stem_pool": True})])
def test_a_full_width_copy_reproduces_the_teacher(name, kwargs):
    teacher, student = random_resnet(name, 0, **kwargs), random_resnet(name, 1, **kwargs)
    kept = narrow_copy(teacher, student)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x))
    assert kept.tolist() == list(range(teacher.num_features))


def test_half_width_resnet10t_keeps_the_strongest_channels():
    teacher, student = random_resnet("resnet10t"), timm.create_model("resnet10t_050", num_classes=0).eval()
    assert student.num_features == teacher.num_features // 2 and student.conv1[0].out_channels == 12
    kept = narrow_copy(teacher, student)
    assert len(kept) == 256 and (np.diff(kept.numpy()) > 0).all()
    gamma = teacher.layer4[0].bn2.weight.abs() + teacher.layer4[0].downsample[-1].weight.abs()
    assert gamma[kept].min() >= gamma[np.setdiff1d(np.arange(512), kept.numpy())].max()
    torch.testing.assert_close(student.layer4[0].bn2.weight, teacher.layer4[0].bn2.weight[kept])
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(student(x), teacher(x)[:, kept])
    assert (cosine > 0.5).all()  # a narrowed network, not a random one


@pytest.mark.parametrize("teacher, student, message", [
    ("resnet10t", "regnetx_002", "timm ResNets"),
    ("resnet10t", "resnet18", "not a narrower copy"),
    ("resnet10t_050", "resnet10t", "wider than the teacher"),
])
def test_students_that_are_not_a_narrower_copy_are_refused(teacher, student, message):
    with pytest.raises(ValueError, match=message):
        narrow_copy(timm.create_model(teacher, num_classes=0), timm.create_model(student, num_classes=0))


@pytest.fixture
def slice_of_cifar(tmp_path):
    data = tmp_path / "data.npz"
    with np.load(shared("cifar10", "train.npz"), allow_pickle=False) as z:
        np.savez(data, images=z["images"][:96], labels=z["labels"][:96])
    return data


@pytest.fixture
def teacher_with_data_statistics(slice_of_cifar, tmp_path):
    """The tiny test model with batch-norm running statistics of the training images (as a trained teacher has), so
    that training-mode and eval-mode forwards agree."""
    import open_clip

    with np.load(slice_of_cifar, allow_pickle=False) as z:
        images = torch.as_tensor(z["images"]).permute(0, 3, 1, 2)
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_MODEL_CFG)
    for m in model.visual.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    teacher = load_backbone(save_backbone_folder(model, tmp_path / "teacher", TINY_MODEL_CFG, {"size": 32}))
    model.visual.train()
    with torch.no_grad():
        model.visual(teacher.transform.normalize(images))
    return load_backbone(save_backbone_folder(model.eval(), tmp_path / "teacher", TINY_MODEL_CFG, {"size": 32}))


def test_distill_from_the_teachers_weights_starts_near_the_teacher(teacher_with_data_statistics, slice_of_cifar,
                                                                   tmp_path):
    teacher, cosine = teacher_with_data_statistics, {}
    for init in (None, "teacher"):
        distill(teacher, slice_of_cifar, tmp_path / str(init), student="test_resnet", init=init, views=1, epochs=1,
                batch_size=32, lr=1e-5, holdout=0.2, cache_dir=tmp_path / "cache", progress=False)
        cosine[init] = json.loads((tmp_path / str(init) / "model" / "distillation.json").read_text())["held_out_cosine"]
    assert cosine["teacher"] > 0.9 and cosine["teacher"] > cosine[None] + 0.2, cosine


def test_distill_from_the_teacher_needs_a_resnet_student(tiny_backbone, slice_of_cifar, tmp_path):
    with pytest.raises(ValueError, match="timm ResNets"):
        distill(tiny_backbone, slice_of_cifar, tmp_path, student="test_efficientnet", init="teacher",
                cache_dir=tmp_path / "cache", progress=False)
