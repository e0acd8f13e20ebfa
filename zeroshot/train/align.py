"""Alignment trainer: fit an image tower so its L2-normalised outputs live in a fixed target embedding space.

One loop serves two targets (methods/distillation.md):
- **text** (LiT-style): each image has candidate captions embedded by a locked text tower; a symmetric contrastive
  loss with a learned temperature, where images sharing a group (class) are positives of each other, so a batch
  holds no false negatives (optionally with soft targets from text-text similarity), or SigLIP's pairwise sigmoid
  loss with a learned bias;
- **teacher**: each image has its teacher image embedding; cosine (default), L1 after re-normalisation (EZAD), or
  affinity mimicking against a set of class-text anchors (TinyCLIP's image-to-text distillation).

Images arrive pre-decoded as one uint8 tensor (N, 3, S, S); augmentation runs batched on tensors. Training is
seeded, checkpoints every ``checkpoint_every`` steps (resume continues mid-epoch, same sample order), logs JSON lines
and keeps the weights with the best validation score.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..images import ImageTransform

log = logging.getLogger(__name__)

LOSSES = ("contrastive", "sigmoid", "cosine", "l1", "affinity")


@dataclass
class AlignConfig:
    """Optimisation settings; the defaults suit a small CNN at 64 px on a few CPU cores."""

    loss: str = "contrastive"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    grad_clip: float = 1.0
    init_temperature: float = 0.07
    init_bias: float = -10.0  # the sigmoid loss's learned logit bias starts here (SigLIP's init)
    soft_target_temperature: float | None = None  # contrastive: targets softmax(text-text cosine / this) (None: hard)
    affinity_temperature: float = 0.01
    seed: int = 0
    max_minutes: float | None = None
    max_steps: int | None = None  # stop after this many steps (a time budget made reproducible)
    schedule_steps: int | None = None  # the run's length: the cosine ends and training stops here (default: epochs)
    affinity_weight: float = 0.0  # cosine/l1 + this x affinity to the anchors (TinyCLIP's L_I2T), when anchors are given
    checkpoint_every: int = 100
    augment: bool = True
    min_crop_scale: float = 0.35
    low_res_prob: float = 0.25  # share of images blurred by a down-up resampling (robustness to small sources)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.soft_target_temperature is not None and self.loss != "contrastive":
            raise ValueError("soft targets apply to the contrastive loss only")


@dataclass
class Targets:
    """What each image is pulled towards: rows of ``embeddings`` (M, D), image i may use rows
    ``indices[offsets[i]:offsets[i+1]]`` (one drawn per visit); ``groups`` (N,) marks images that are positives
    of each other (-1: only itself)."""

    embeddings: torch.Tensor
    offsets: np.ndarray
    indices: np.ndarray
    groups: np.ndarray
    views: ViewPlan | None = None  # set: row r is image r % N seen in view r // N, and training replays that view

    @classmethod
    def one_each(cls, embeddings: np.ndarray, groups: np.ndarray | None = None) -> "Targets":
        """Image i -> row i (teacher features)."""
        n = len(embeddings)
        return cls(torch.as_tensor(np.asarray(embeddings, np.float32)), np.arange(n + 1), np.arange(n),
                   np.full(n, -1) if groups is None else np.asarray(groups))

    @classmethod
    def per_view(cls, embeddings: np.ndarray, plan: ViewPlan) -> "Targets":
        """Teacher features of every view, (V, N, D): image i may draw any of its V views (row v * N + i)."""
        v, n, _ = embeddings.shape
        if (v, n) != (plan.n_views, len(plan)):
            raise ValueError(f"targets for {v} views x {n} images do not match the plan's {plan.n_views} x "
                             f"{len(plan)}")
        rows = (np.arange(v)[None, :] * n + np.arange(n)[:, None]).ravel()
        return cls(torch.as_tensor(np.asarray(embeddings, np.float32).reshape(v * n, -1)), np.arange(n + 1) * v,
                   rows, np.full(n, -1), plan)

    def draw(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        counts = self.offsets[rows + 1] - self.offsets[rows]
        if (counts == 0).any():
            raise ValueError("every training image needs at least one target")
        return self.indices[self.offsets[rows] + (rng.random(len(rows)) * counts).astype(np.int64)]


def augment(batch: torch.Tensor, transform: ImageTransform, config: AlignConfig,
            generator: torch.Generator) -> torch.Tensor:
    """uint8 (B,3,S,S) -> normalised float: random resized crop + flip, brightness/contrast jitter, and an
    occasional down-up resampling, drawn afresh from ``generator``."""
    x = transform.normalize(batch)
    if not config.augment:
        return x
    b = len(x)
    uniforms = torch.cat([torch.rand(b, 6, generator=generator), torch.rand(b, 2, generator=generator)], dim=1)
    return apply_view(x, uniforms, config)


def apply_view(x: torch.Tensor, u: torch.Tensor, config: AlignConfig) -> torch.Tensor:
    """The augmentation of :func:`augment` as a pure function of 8 uniforms per image (so a view can be replayed):
    crop scale, aspect, x/y offset, flip, down-up resampling, brightness, contrast. One batched affine grid."""
    b = len(x)
    scale = torch.sqrt(config.min_crop_scale + (1 - config.min_crop_scale) * u[:, 0])  # side of the crop (0..1)
    aspect = torch.exp((u[:, 1] - 0.5) * math.log(4 / 3))
    sx, sy = (scale * aspect.sqrt()).clamp(max=1), (scale / aspect.sqrt()).clamp(max=1)
    tx, ty = (1 - sx) * (2 * u[:, 2] - 1), (1 - sy) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    jitter = (u[:, 6:8] * 0.4 + 0.8).view(b, 2, 1, 1, 1)  # brightness, contrast in [0.8, 1.2]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * jitter[:, 1] + mean * jitter[:, 0]
    low = u[:, 5] < config.low_res_prob
    if low.any():
        size = x.shape[-1]
        small = F.interpolate(x[low], size=size // 2, mode="bilinear", antialias=True, align_corners=False)
        x[low] = F.interpolate(small, size=size, mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


class ViewPlan:
    """``n_views`` fixed views per image: view 0 is the clean image, view v > 0 a seeded :func:`apply_view` whose
    uniforms are drawn once per (seed, view, image). A teacher encodes each view once; the student replays the very
    same view its target was computed on (methods/distillation.md, section 3)."""

    def __init__(self, n_images: int, n_views: int, seed: int = 0):
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1 (view 0 is the clean image), got {n_views}")
        self.n_views, self.seed = n_views, seed
        self.uniforms = torch.stack([torch.rand(n_images, 8, generator=torch.Generator().manual_seed(seed * 1000 + v))
                                     for v in range(n_views)])  # (V, N, 8); view 0's row is unused

    def __len__(self) -> int:
        return self.uniforms.shape[1]

    def subset(self, rows: np.ndarray) -> "ViewPlan":
        """The same views for the images ``rows`` only (row i of the subset is image rows[i])."""
        plan = object.__new__(ViewPlan)
        plan.n_views, plan.seed, plan.uniforms = self.n_views, self.seed, self.uniforms[:, torch.as_tensor(rows)]
        return plan

    def render(self, batch: torch.Tensor, rows: np.ndarray, views: np.ndarray, transform: ImageTransform,
               config: AlignConfig) -> torch.Tensor:
        """uint8 images ``batch`` (images ``rows`` of this plan) -> normalised float, each in view ``views[i]``."""
        x = transform.normalize(batch).contiguous(memory_format=torch.channels_last)
        for view in np.unique(views[views > 0]):
            pick = np.flatnonzero(views == view)
            x[pick] = apply_view(x[pick], self.uniforms[view, torch.as_tensor(rows[pick])], config)
        return x


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor, logit_scale: torch.Tensor,
                     soft_temperature: float | None = None) -> torch.Tensor:
    """Symmetric InfoNCE where every pair sharing a group (>= 0) is a positive (multi-positive log-likelihood).
    With ``soft_temperature`` the target over a batch is softmax(cos(text_i, text_j) / T), positives at cosine 1,
    so a caption near the image's own is a soft positive rather than a hard negative."""
    logits = logit_scale * image @ text.T
    positive = _positives(groups)
    if soft_temperature is not None:
        soft = torch.softmax((text @ text.T).masked_fill(positive, 1.0) / soft_temperature, 1)  # symmetric
        return -((soft * logits.log_softmax(1)).sum(1).mean() + (soft * logits.T.log_softmax(1)).sum(1).mean()) / 2
    very_negative = torch.finfo(logits.dtype).min
    i2t = torch.logsumexp(logits.masked_fill(~positive, very_negative), 1) - torch.logsumexp(logits, 1)
    t2i = torch.logsumexp(logits.T.masked_fill(~positive.T, very_negative), 1) - torch.logsumexp(logits.T, 1)
    return -(i2t.mean() + t2i.mean()) / 2


def sigmoid_loss(image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor, logit_scale: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
    """SigLIP (Zhai et al. 2023): -1/B sum_ij log sigmoid(z_ij (t x_i.y_j + b)), z = +1 for positives (same group)
    and -1 otherwise; every pair is its own binary problem, with no softmax over the batch."""
    sign = _positives(groups).float() * 2 - 1
    return -F.logsigmoid(sign * (logit_scale * image @ text.T + bias)).sum() / len(image)


def _positives(groups: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: i and j share a group >= 0, or i == j."""
    positive = (groups[:, None] == groups[None, :]) & (groups[:, None] >= 0)
    return positive | torch.eye(len(groups), dtype=torch.bool)


def teacher_loss(kind: str, student: torch.Tensor, teacher: torch.Tensor, anchors: torch.Tensor | None,
                 temperature: float) -> torch.Tensor:
    """Feature distillation on unit vectors: cosine, L1 (EZAD) or image->anchor affinity mimicking (TinyCLIP)."""
    if kind == "cosine":
        return (1 - (student * teacher).sum(1)).mean()
    if kind == "l1":
        return (student - teacher).abs().sum(1).mean()
    if anchors is None:
        raise ValueError("the affinity loss needs anchor embeddings (e.g. the teacher's class-prompt embeddings)")
    target = F.softmax(teacher @ anchors.T / temperature, dim=1)
    return -(target * F.log_softmax(student @ anchors.T / temperature, dim=1)).sum(1).mean()


class Aligner:
    """Train ``tower`` (images -> (B, D) unnormalised) towards ``targets``; checkpoints live in ``out_dir``."""

    def __init__(self, tower: torch.nn.Module, transform: ImageTransform, config: AlignConfig, out_dir: str | Path):
        self.tower, self.transform, self.config = tower, transform, config
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))
        self.bias = torch.nn.Parameter(torch.tensor(config.init_bias))  # used by the sigmoid loss only

    def _optimizer(self):
        decay = [p for p in self.tower.parameters() if p.ndim > 1]
        no_decay = [p for p in self.tower.parameters() if p.ndim <= 1] + [self.log_scale, self.bias]
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.config.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=self.config.lr)

    def fit(self, images: torch.Tensor, targets: Targets, *, validate: Callable[[torch.nn.Module], float] | None = None,
            anchors: np.ndarray | None = None, progress: bool = True) -> dict:
        """Train; returns the log summary. ``validate(tower) -> score`` (higher is better) runs after each epoch."""
        cfg = self.config
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 (N,3,S,S) tensor, got {images.dtype} {tuple(images.shape)}")
        if len(targets.offsets) != len(images) + 1:
            raise ValueError(f"{len(images)} images but targets for {len(targets.offsets) - 1}")
        if (cfg.loss == "affinity" or cfg.affinity_weight) and anchors is None:
            raise ValueError("the affinity loss needs anchor embeddings (e.g. the teacher's class-prompt embeddings)")
        steps_per_epoch = len(images) // cfg.batch_size
        if steps_per_epoch == 0:
            raise ValueError(f"{len(images)} images are fewer than one batch of {cfg.batch_size}")
        total = min(steps_per_epoch * cfg.epochs, cfg.schedule_steps or steps_per_epoch * cfg.epochs)
        optimizer = self._optimizer()
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (
            1 + math.cos(math.pi * min(s, total) / total)))
        state = self._resume(optimizer, schedule)
        anchor_t = None if anchors is None else torch.as_tensor(np.asarray(anchors, np.float32))
        groups_all = torch.as_tensor(np.asarray(targets.groups, dtype=np.int64))
        start_time = time.perf_counter() - state["seconds"]
        bar = _bar(total, state["step"], progress)
        self.tower.train()
        stop = False
        while state["step"] < min(total, cfg.max_steps or total) and not stop:
            epoch, in_epoch = divmod(state["step"], steps_per_epoch)
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(images))
            for k in range(in_epoch, steps_per_epoch):
                rows = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
                step_rng = np.random.default_rng([cfg.seed, epoch, k])
                generator = torch.Generator().manual_seed(int(step_rng.integers(2**62)))
                drawn = targets.draw(rows, step_rng)  # independent of generator: order does not matter
                batch = images[torch.as_tensor(rows)]
                x = (augment(batch, self.transform, cfg, generator) if targets.views is None else
                     targets.views.render(batch, rows, drawn // len(images), self.transform, cfg))
                out = F.normalize(self.tower(x).float(), dim=-1)
                target = targets.embeddings[torch.as_tensor(drawn)]
                if cfg.loss == "contrastive":
                    loss = contrastive_loss(out, target, groups_all[torch.as_tensor(rows)], self.log_scale.exp(),
                                            cfg.soft_target_temperature)
                elif cfg.loss == "sigmoid":
                    loss = sigmoid_loss(out, target, groups_all[torch.as_tensor(rows)], self.log_scale.exp(), self.bias)
                else:
                    loss = teacher_loss(cfg.loss, out, target, anchor_t, cfg.affinity_temperature)
                    if cfg.affinity_weight and cfg.loss != "affinity":
                        loss = loss + cfg.affinity_weight * teacher_loss("affinity", out, target, anchor_t,
                                                                         cfg.affinity_temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.tower.parameters(), cfg.grad_clip)
                optimizer.step()
                schedule.step()
                with torch.no_grad():
                    self.log_scale.clamp_(0, math.log(100))
                state["step"] += 1
                state["seconds"] = time.perf_counter() - start_time
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{cfg.batch_size * bar.n / max(state['seconds'], 1e-9):.0f}",
                                refresh=False)
                self._log({"step": state["step"], "epoch": epoch, "loss": round(loss.item(), 5),
                           "temperature": round(math.exp(-self.log_scale.item()), 5), "lr": schedule.get_last_lr()[0],
                           "seconds": round(state["seconds"], 1)})
                out_of_budget = ((cfg.max_minutes is not None and state["seconds"] > 60 * cfg.max_minutes)
                                 or (cfg.max_steps is not None and state["step"] >= cfg.max_steps))
                finished = state["step"] >= total  # the schedule ended inside an epoch (schedule_steps)
                if state["step"] % cfg.checkpoint_every == 0 or out_of_budget or finished:
                    self._checkpoint(optimizer, schedule, state)
                if out_of_budget or finished:
                    stop = out_of_budget and not finished
                    break
            if validate is not None and (k == steps_per_epoch - 1 or stop or finished):
                state = self._validate(validate, state, epoch)
                self._checkpoint(optimizer, schedule, state)
        bar.close()
        if validate is None:
            self.save_weights(self.out / "best.safetensors")
        summary = {"steps": state["step"], "seconds": round(state["seconds"], 1), "best_score": state["best_score"],
                   "best_epoch": state["best_epoch"], "stopped_early": stop, "config": asdict(cfg)}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    # --- persistence -----------------------------------------------------------------------------------------
    def save_weights(self, path: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in self.tower.state_dict().items()}
        state["log_scale"] = self.log_scale.detach().clone()
        save_file(state, str(path))

    def load_weights(self, path: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(path))
        self.log_scale.data.copy_(state.pop("log_scale"))
        self.tower.load_state_dict(state)

    def _validate(self, validate, state: dict, epoch: int) -> dict:
        self.tower.eval()
        with torch.inference_mode():
            score = float(validate(self.tower))
        self.tower.train()
        self._log({"epoch": epoch, "validation": score, "step": state["step"]})
        if state["best_score"] is None or score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch)
            self.save_weights(self.out / "best.safetensors")
        return state

    def _checkpoint(self, optimizer, schedule, state: dict) -> None:
        tmp = self.out / "checkpoint.pt.tmp"
        torch.save({"tower": self.tower.state_dict(), "log_scale": self.log_scale.detach(), "bias": self.bias.detach(),
                    "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "state": dict(state),
                    "config": asdict(self.config)}, tmp)
        tmp.replace(self.out / "checkpoint.pt")

    def _resume(self, optimizer, schedule) -> dict:
        path = self.out / "checkpoint.pt"
        state = {"step": 0, "seconds": 0.0, "best_score": None, "best_epoch": None}
        if not path.is_file():
            return state
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if _settings(saved["config"]) != _settings(asdict(self.config)):
            raise ValueError(f"{path} was written with other settings; use a new output folder or the same config")
        self.tower.load_state_dict(saved["tower"])
        self.log_scale.data.copy_(saved["log_scale"])
        self.bias.data.copy_(saved.get("bias", torch.tensor(self.config.init_bias)))
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        log.info("resuming from step %d (%s)", saved["state"]["step"], path)
        return {**state, **saved["state"]}

    def _log(self, record: dict) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def _settings(config: dict) -> dict:
    """What must match for a checkpoint to resume: everything but the time and step budgets."""
    return {k: v for k, v in config.items() if k not in ("max_minutes", "max_steps")}


def _bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", disable=not enabled, file=sys.stderr, mininterval=2)
