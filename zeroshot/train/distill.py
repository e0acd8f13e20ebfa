"""Distil a backbone's image tower into a small timm student that lives in the teacher's embedding space.

Spec: methods/distillation.md. The images are decoded once; the teacher encodes each of ``views`` fixed views per
image once (view 0 clean, the others seeded crops / flips / jitter / down-up resampling), cached as FeatureSets
under the teacher's fingerprint; the student, a timm trunk plus a linear projection warm-started by ridge least
squares, then trains with :mod:`zeroshot.train.align`, each visit replaying the very view its target was computed on.
The result is a model folder holding the student image tower and the teacher's text tower, with
``teacher_fingerprint`` in its config, so it loads with :func:`load_backbone` and every head keeps working.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..backbone import (
    CONFIG_FILE, Backbone, build_model, fit_timm_projection, load_backbone, save_backbone_folder,
    text_tower_from_package,
)
from ..cache import resolve_cache_dir, touch_last_used, views_entry
from ..datasets import Dataset, open_dataset
from ..extraction import decode_all
from ..features import FeatureSet
from ..images import ImageTransform
from .align import AlignConfig, Aligner, Targets, ViewPlan

log = logging.getLogger(__name__)

DEFAULT_STUDENT = "resnet10t_050"  # zeroshot.students: half-width resnet10t, the default model's tower


def ridge_projection(features: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-3,
                     prior: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_P ||B P - T||^2 + ridge * n * ||P - P0||^2, returned as a (D, F) Linear weight; ``prior`` is P0 as a
    (D, F) weight (default 0): with few rows the solution stays near it, with many it is the least-squares map."""
    b = features.double()
    gram = b.T @ b + ridge * len(b) * torch.eye(b.shape[1], dtype=torch.float64)
    rhs = b.T @ targets.double()
    if prior is not None:
        rhs += ridge * len(b) * prior.T.double()
    return torch.linalg.solve(gram, rhs).T.float()


def student_tower(student: str, embed_dim: int, image_size: int):
    """open_clip's timm tower (trunk + linear projection), the projection sized from the trunk's real output width
    (:func:`~zeroshot.backbone.fit_timm_projection`): any timm model name works as a student."""
    from open_clip.timm_model import TimmModel

    import timm

    from .. import students  # noqa: F401  (registers our student architectures with timm)

    if not timm.is_model(student):
        close = difflib.get_close_matches(student, timm.list_models(), n=3)
        raise ValueError(f"--student {student!r} is not a timm model name"
                         + (f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"))
    tower = TimmModel(student, embed_dim=embed_dim, image_size=image_size, pool="avg", proj="linear")
    fit_timm_projection(tower)
    return tower


def distill(teacher: Backbone, data: Dataset | str | os.PathLike, out_dir: str | os.PathLike, *,
            student: str = DEFAULT_STUDENT, loss: str = "cosine", views: int = 5, epochs: int = 10,
            batch_size: int = 128, lr: float = 2e-3, seed: int = 0, anchors: np.ndarray | None = None,
            affinity_weight: float = 0.0, init: str | os.PathLike | None = None, max_minutes: float | None = None,
            max_steps: int | None = None,
            holdout: float = 0.02, cache_dir: str | os.PathLike | None | bool = None,
            progress: bool = True) -> Backbone:
    """Train ``student`` on ``data`` (labels unused) to reproduce ``teacher``'s image embeddings; returns it loaded.

    ``anchors`` (M, D): teacher text embeddings (e.g. class prompts of any label set) for the affinity loss term.
    ``init``: a student folder (same ``student`` architecture) to continue from, or ``"teacher"`` to start a
    narrower copy of a ResNet teacher from its weights (``zeroshot.students.narrow_copy``); default: a fresh trunk.
    Fresh and teacher-copied trunks get a least-squares projection before training.
    The student takes the teacher's input size and normalisation.
    """
    dataset = data if isinstance(data, Dataset) else open_dataset(data)
    out = Path(out_dir)
    transform = teacher.transform
    torch.manual_seed(seed)
    tower = student_tower(student, teacher.embed_dim, transform.size)
    prior = None
    if init == "teacher":
        from ..students import narrow_copy

        teacher_tower = teacher.model.visual
        kept = narrow_copy(getattr(teacher_tower, "trunk", teacher_tower), tower.trunk)
        projection = getattr(getattr(teacher_tower, "head", None), "proj", None)
        if isinstance(projection, torch.nn.Linear):
            prior = projection.weight.detach().float()[:, kept]
    elif init is not None:
        _load_visual(tower, Path(init))
    if anchors is not None:
        anchors = np.asarray(anchors, np.float32)
        if anchors.ndim != 2 or anchors.shape[1] != teacher.embed_dim:
            raise ValueError(f"anchors must be (M, {teacher.embed_dim}) teacher text embeddings, got {anchors.shape}")

    images, rows, failed = decode_all(dataset, transform, progress=progress)
    if failed:
        log.warning("skipped %d training image(s) that could not be decoded: %s%s", len(failed),
                    ", ".join(f"{i} ({r})" for i, r in list(failed.items())[:5]), " ..." if len(failed) > 5 else "")
    config = AlignConfig(loss=loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, max_minutes=max_minutes,
                         max_steps=max_steps, affinity_weight=affinity_weight, low_res_prob=0.5,
                         warmup_steps=max(1, len(images) // batch_size))
    plan = ViewPlan(len(images), views, seed)
    ids = [dataset.ids[r] for r in rows]
    targets = teacher_view_features(teacher, images, ids, plan, config, dataset.signature(),
                                    resolve_cache_dir(cache_dir), progress)

    order = np.random.default_rng(seed).permutation(len(images))
    n_val = max(1, int(holdout * len(images)))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    if init is None or init == "teacher":
        _warm_start(tower, transform, images[train], torch.as_tensor(targets[0, train]), batch_size, prior)

    val_images, val_targets = images[val], torch.as_tensor(targets[:, val])

    def held_out_cosine(model) -> float:
        """Mean cosine to the teacher over every view of the held-out images."""
        scores = [(F.normalize(_encode(model, plan.render(val_images, val, np.full(len(val), v), transform, config),
                                       batch_size), dim=-1) * val_targets[v]).sum(1).mean() for v in range(views)]
        return float(torch.stack(scores).mean())

    aligner = Aligner(tower, transform, config, out / "train")
    summary = aligner.fit(images[train], Targets.per_view(targets[:, train], plan.subset(train)),
                          validate=held_out_cosine, anchors=anchors, progress=progress)
    aligner.load_weights(out / "train" / "best.safetensors")
    folder = _save_student(teacher, tower, student, transform, out / "model")
    (out / "model" / "distillation.json").write_text(json.dumps({
        **summary, "held_out_cosine": summary["best_score"], "teacher": teacher.name,
        "teacher_fingerprint": teacher.fingerprint, "data": getattr(dataset, "shards", dataset.location),
        "images": len(images), "views": views, "held_out": n_val, "skipped": failed}, indent=1))
    return load_backbone(folder, device="cpu")


def teacher_view_features(teacher: Backbone, images: torch.Tensor, ids: list[str], plan: ViewPlan,
                          config: AlignConfig, data_signature: dict, cache: Path | None,
                          progress: bool = True) -> np.ndarray:
    """(V, N, D) teacher embeddings of every view, one FeatureSet per view under the teacher's fingerprint in
    ``cache`` (None: not cached); views already encoded (a killed run) are read back instead of encoded again."""
    from tqdm import tqdm

    key = {"data": data_signature, "views": plan.n_views, "seed": plan.seed, "n": len(ids),
           "min_crop_scale": config.min_crop_scale, "low_res_prob": config.low_res_prob,
           "transform": teacher.transform.fingerprint()}
    folder = views_entry(cache, teacher.fingerprint, key) if cache is not None else None
    out = np.zeros((plan.n_views, len(ids), teacher.embed_dim), np.float32)
    batch = 256
    for view in range(plan.n_views):
        if folder is not None:
            with contextlib.suppress(FileNotFoundError, ValueError):  # not encoded yet, or damaged: encode it
                out[view] = FeatureSet.load(folder / f"view-{view}", fingerprint=teacher.fingerprint).features
                continue
        rows = np.arange(len(ids))
        for lo in tqdm(range(0, len(ids), batch), desc=f"teacher view {view + 1}/{plan.n_views}",
                       disable=not progress, mininterval=2):
            sl = rows[lo:lo + batch]
            x = plan.render(images[lo:lo + batch], sl, np.full(len(sl), view), teacher.transform, config)
            out[view, lo:lo + batch] = teacher.encode_images(x).cpu().numpy()
        if folder is not None:
            FeatureSet(out[view], np.full(len(ids), -1), np.asarray(ids, dtype=str),
                       {"fingerprint": teacher.fingerprint, "backbone": teacher.name, "dataset": data_signature,
                        "view": view, "views": key}).save(folder / f"view-{view}")
    if folder is not None:
        touch_last_used(folder)
    return out


def _encode(tower, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Normalised float images -> the tower's (unnormalised) outputs, batched, without gradients."""
    with torch.inference_mode():
        return torch.cat([tower(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])


def _load_visual(tower, folder: Path) -> None:
    """Image-tower weights of a saved student folder, checked against ``tower``'s architecture."""
    from safetensors.torch import load_file

    from ..backbone import WEIGHTS_FILE

    state = {k.removeprefix("visual."): v.float() for k, v in load_file(folder / WEIGHTS_FILE).items()
             if k.startswith("visual.")}
    try:
        tower.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{folder} does not hold weights for this student architecture: {exc}") from None


def _warm_start(tower, transform: ImageTransform, images: torch.Tensor, targets: torch.Tensor, batch_size: int,
                prior: torch.Tensor | None = None):
    """Least-squares projection on the (random, pretrained or teacher-copied) trunk's pooled features of the clean
    view, shrunk towards ``prior`` (a (D, F) weight, e.g. the teacher's projection on the channels kept)."""
    tower.eval()
    with torch.inference_mode():
        pooled = torch.cat([tower.trunk(transform.normalize(images[i:i + batch_size])).float()
                            for i in range(0, len(images), batch_size)])
    tower.head.proj.weight.data.copy_(ridge_projection(pooled, targets, prior=prior))
    tower.train()


def _save_student(teacher: Backbone, tower, student: str, transform: ImageTransform, folder: Path) -> Path:
    """A model folder: the teacher's architecture with the student's vision config, weights stored in fp16 (like
    the default model); the teacher's text weights (or a pointer to its packaged text tower)."""
    size = transform.size
    model_cfg = dict(teacher.model_config)
    model_cfg["vision_cfg"] = {"timm_model_name": student, "timm_model_pretrained": False, "timm_pool": "avg",
                               "timm_proj": "linear", "image_size": size}
    model = build_model(model_cfg, text_weights=text_tower_from_package(model_cfg))
    teacher_state = {k: v for k, v in teacher.model.state_dict().items() if not k.startswith("visual.")}
    missing = [k for k in model.load_state_dict(teacher_state, strict=False).missing_keys if not k.startswith("visual.")]
    if missing:
        raise ValueError(f"the teacher's text tower does not fit the student model: missing {missing[:5]}")
    model.visual.load_state_dict(tower.state_dict())
    exclude = ("text.transformer.",) if text_tower_from_package(model_cfg) else ()
    model.visual.half()
    save_backbone_folder(model, folder, model_cfg, {"size": size, "mean": list(transform.mean),
                                                   "std": list(transform.std)},
                         exclude_prefixes=exclude, logit_scale=teacher.logit_scale)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["teacher_fingerprint"], config["teacher_space"] = teacher.fingerprint, teacher.space
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder
