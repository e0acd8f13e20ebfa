"""Distil a backbone's image tower into a small timm student that lives in the teacher's embedding space.

Spec: methods/distillation.md. The teacher encodes the images once (the FeatureSet cache); the student, a timm trunk
plus a linear projection warm-started by ridge least squares, is then trained by :mod:`zeroshot.align` on those
targets. The result is a model folder holding the student image tower and the teacher's text tower, with
``teacher_fingerprint`` in its config, so it loads with :func:`load_backbone` and every head keeps working.
Deviation from the spec's CPU recipe: targets are the clean view only (no cached augmented views), so the
student trains on the same clean view (augmentation off); multi-view targets are a later option.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .align import AlignConfig, Aligner, Targets
from .backbone import (
    CONFIG_FILE, Backbone, load_backbone, quiet_model_loading, resolved_text_cfg, save_backbone_folder,
    text_tower_from_package,
)
from .datasets import Dataset, open_dataset
from .extraction import decode_all, extract
from .images import ImageTransform


def ridge_projection(features: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """argmin_P ||B P - T||^2 + ridge * ||P||^2, returned as a (D, F) Linear weight."""
    b = features.double()
    gram = b.T @ b + ridge * len(b) * torch.eye(b.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, b.T @ targets.double()).T.float()


def distill(teacher: Backbone, data: Dataset | str | os.PathLike, out_dir: str | os.PathLike, *,
            student: str = "mobilenetv2_050", image_size: int | None = None, loss: str = "cosine",
            epochs: int = 15, batch_size: int = 64, lr: float = 1e-3, seed: int = 0, max_minutes: float | None = None,
            holdout: float = 0.05, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Backbone:
    """Train ``student`` on ``data`` (labels unused) to reproduce ``teacher``'s image embeddings; returns it loaded."""
    from open_clip.timm_model import TimmModel

    dataset = data if isinstance(data, Dataset) else open_dataset(data)
    out = Path(out_dir)
    size = image_size or teacher.transform.size
    torch.manual_seed(seed)
    tower = TimmModel(student, embed_dim=teacher.embed_dim, image_size=size, pool="avg", proj="linear")
    pooled_width = getattr(tower.trunk, "head_hidden_size", None) or tower.trunk.num_features
    if pooled_width != tower.trunk.num_features:
        raise ValueError(f"{student} has a conv head after pooling ({tower.trunk.num_features} -> {pooled_width} "
                         "features), which open_clip's timm tower does not project correctly; choose a student "
                         "without one, e.g. mobilenetv2_050, resnet10t or efficientnet_b0")

    teacher_features = extract(teacher, dataset, cache_dir=cache_dir, progress=progress)
    transform = ImageTransform(size=size, mean=teacher.transform.mean, std=teacher.transform.std)
    images, rows, _ = decode_all(dataset, transform, progress=progress)
    position = {i: k for k, i in enumerate(teacher_features.ids)}
    keep = [k for k, r in enumerate(rows) if dataset.ids[r] in position]
    images = images[keep]
    targets = torch.as_tensor(np.asarray(teacher_features.features)[[position[dataset.ids[rows[k]]] for k in keep]])

    order = np.random.default_rng(seed).permutation(len(images))
    n_val = max(1, int(holdout * len(images)))
    val, train = order[:n_val], np.sort(order[n_val:])
    _warm_start(tower, transform, images[train], targets[train], batch_size)

    def held_out_cosine(model) -> float:
        feats = F.normalize(_encode(model, transform, images[val], batch_size), dim=-1)
        return float((feats * targets[val]).sum(1).mean())

    config = AlignConfig(loss=loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, max_minutes=max_minutes,
                         augment=False, warmup_steps=max(1, len(train) // batch_size))
    aligner = Aligner(tower, transform, config, out / "train")
    summary = aligner.fit(images[train], Targets.one_each(targets[train].numpy()), validate=held_out_cosine,
                          progress=progress)
    aligner.load_weights(out / "train" / "best.safetensors")
    folder = _save_student(teacher, tower, student, size, transform, out / "model")
    (out / "model" / "distillation.json").write_text(json.dumps({
        **summary, "held_out_cosine": summary["best_score"], "teacher": teacher.name,
        "teacher_fingerprint": teacher.fingerprint, "images": len(images), "held_out": n_val}, indent=1))
    return load_backbone(folder, device="cpu")


def _encode(tower, transform: ImageTransform, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([tower(transform.normalize(images[i:i + batch_size])).float()
                          for i in range(0, len(images), batch_size)])


def _warm_start(tower, transform: ImageTransform, images: torch.Tensor, targets: torch.Tensor, batch_size: int):
    """Least-squares projection on the (random or pretrained) trunk's pooled features: a free first fit."""
    tower.eval()
    with torch.inference_mode():
        pooled = torch.cat([tower.trunk(transform.normalize(images[i:i + batch_size])).float()
                            for i in range(0, len(images), batch_size)])
    tower.head.proj.weight.data.copy_(ridge_projection(pooled, targets))
    tower.train()


def _save_student(teacher: Backbone, tower, student: str, size: int, transform: ImageTransform, folder: Path) -> Path:
    """A model folder: the teacher's architecture with the student's vision config; the teacher's text weights."""
    import open_clip

    model_cfg = dict(teacher.model_config)
    model_cfg["vision_cfg"] = {"timm_model_name": student, "timm_model_pretrained": False, "timm_pool": "avg",
                               "timm_proj": "linear", "image_size": size}
    text_cfg = resolved_text_cfg(model_cfg)
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = text_tower_from_package(model_cfg)
    cls = open_clip.CustomTextCLIP if "hf_model_name" in text_cfg or model_cfg.get("custom_text") else open_clip.CLIP
    with quiet_model_loading():
        model = cls(**{k: v for k, v in {**model_cfg, "text_cfg": text_cfg}.items() if k != "custom_text"})
    teacher_state = {k: v for k, v in teacher.model.state_dict().items() if not k.startswith("visual.")}
    missing = [k for k in model.load_state_dict(teacher_state, strict=False).missing_keys if not k.startswith("visual.")]
    if missing:
        raise ValueError(f"the teacher's text tower does not fit the student model: missing {missing[:5]}")
    model.visual.load_state_dict(tower.state_dict())
    exclude = ("text.transformer.",) if text_tower_from_package(model_cfg) else ()
    save_backbone_folder(model, folder, model_cfg, {"size": size, "mean": list(transform.mean),
                                                   "std": list(transform.std)},
                         exclude_prefixes=exclude, logit_scale=teacher.logit_scale)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["teacher_fingerprint"] = teacher.fingerprint
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder
