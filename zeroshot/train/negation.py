"""Train a CLIPN-style "no" text side on CPU in seconds (spec: methods/clipn.md 2 and 6, variant 1).

What this is: CLIPN's losses -- image-text binary-opposite (ITBO: matched pairs say "yes", in-batch non-matching
pairs say "no") and text semantic-opposite (TSO: a caption's "no" embedding moves away from its "yes" one) --
training a low-rank map ``t_no = normalize(t + U V^T t)`` on the *output* of the frozen text tower (U starts at 0,
so t_no = t at step 0). Image and caption features are encoded once by the frozen towers, so training is matrix
algebra on a few thousand pairs: Flickr8k captions and/or class-name prompts paired with labelled ID images.
Applied to the class embeddings W_yes it gives the W_no that :class:`zeroshot.heads.CLIPN` scores with.

What it is not: CLIPN proper (Wang et al. 2023), which trains a full copy of the text tower with learnable "no"
prompts on CC3M (2.9M pairs, 4 GPUs); neither that data nor the released CLIPN weights are used here. Deviations:
the "no" side is a map on text features rather than a text encoder; negatives that share a class (or an image)
are left out of the "no" term, as the spec's plan asks; the best epoch on held-out images is kept.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..backbone import check_fingerprint
from ..features import FeatureSet, check_features, normalise_rows
from ..prompts import build_prompts, encode_texts_cached
from .align import Targets

NEGATION_JSON, NEGATION_WEIGHTS = "negation.json", "negation.safetensors"


@dataclass
class NegationConfig:
    """Optimisation settings of the spec's CPU plan (AdamW, cosine schedule as in CLIPN, betas 0.9/0.98)."""

    rank: int = 64
    epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    seed: int = 0


@dataclass
class NegationMap:
    """``t_no = normalize(t + (t V) U^T)`` with U, V of shape (D, rank); ``info`` records how it was trained."""

    U: np.ndarray
    V: np.ndarray
    info: dict = field(default_factory=dict)

    def __call__(self, texts) -> np.ndarray:
        """(M, D) "yes" text embeddings -> their (M, D) unit "no" embeddings."""
        T = check_features(texts, dim=len(self.U), name="text embeddings").astype(np.float64)
        out = T + (T @ self.V) @ self.U.T
        return normalise_rows(out).astype(np.float32)

    def save(self, folder: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"U": np.ascontiguousarray(self.U, np.float32), "V": np.ascontiguousarray(self.V, np.float32)},
                  str(folder / NEGATION_WEIGHTS))
        (folder / NEGATION_JSON).write_text(json.dumps(self.info, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, *, fingerprint: str | None = None) -> "NegationMap":
        """``fingerprint`` refuses a map trained on another backbone's features."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        if not (folder / NEGATION_WEIGHTS).is_file():
            raise FileNotFoundError(f"no negation map in {folder} ({NEGATION_WEIGHTS} missing)")
        info = json.loads((folder / NEGATION_JSON).read_text())
        check_fingerprint(info.get("fingerprint"), fingerprint, str(folder),
                          "train a negation map on this backbone's features ('zeroshot ood train-clipn')")
        weights = load_file(str(folder / NEGATION_WEIGHTS))
        return cls(weights["U"], weights["V"], info)


def negate(texts: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    return F.normalize(texts + (texts @ V) @ U.T, dim=-1)


def clipn_losses(images: torch.Tensor, texts: torch.Tensor, no_texts: torch.Tensor, logit_scale: float,
                 not_negative: torch.Tensor) -> dict[str, torch.Tensor]:
    """CLIPN's losses for a batch of B pairs (image i <-> text i), all rows unit (clipn.md 2).

    ``not_negative`` (B, B) is True where text j must not be told "no" for image i (i = j, or the same class or
    image). ``p_yes_ij = sigmoid(s <f_i, t_j> - s <f_i, t_no_j>)``; L_yes = -mean_i log p_yes_ii,
    L_no = -mean over negatives log(1 - p_yes_ij), L_tso = mean_j 2 - sqrt(2 - 2 <t_j, t_no_j> + 1e-4),
    total = (L_yes + L_no + L_tso) / 2.
    """
    z = logit_scale * (images @ texts.T - images @ no_texts.T)
    yes = -F.logsigmoid(torch.diagonal(z)).mean()
    negatives = ~not_negative
    no = -F.logsigmoid(-z[negatives]).mean() if negatives.any() else z.new_zeros(())
    tso = (2 - torch.sqrt(2 - 2 * (texts * no_texts).sum(dim=1) + 1e-4)).mean()
    return {"yes": yes, "no": no, "tso": tso, "total": 0.5 * (yes + no + tso)}


def _not_negative(groups: np.ndarray) -> torch.Tensor:
    """(B, B) True on the diagonal and between rows of the same group (groups < 0 stand alone)."""
    g = torch.as_tensor(groups)
    return torch.eye(len(g), dtype=torch.bool) | ((g[:, None] == g[None, :]) & (g[:, None] >= 0))


def train_negation(image_features, targets: Targets, *, logit_scale: float,
                   config: NegationConfig | None = None, info: dict | None = None) -> NegationMap:
    """Fit U, V on (image, caption) pairs: image i draws one of its captions (``targets``) per epoch.

    A seeded ``val_fraction`` of the images is held out; the epoch with the lowest held-out loss is kept and every
    epoch's losses and held-out accuracies (matched pairs said "yes", non-matching pairs said "no") are recorded
    in ``info["history"]``. Runs on one torch thread: the matrices are small (batch x D x rank), and waking a thread
    pool for every op cost more than it saved (5x slower with 2 threads on a busy 2-core CPU, same result).
    """
    with _one_thread():
        return _train(image_features, targets, logit_scale, config or NegationConfig(), info)


@contextlib.contextmanager
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(image_features, targets: Targets, logit_scale: float, config: NegationConfig,
           info: dict | None) -> NegationMap:
    images = torch.tensor(check_features(image_features, name="image_features"))
    n, dim = images.shape
    if len(targets.offsets) != n + 1:
        raise ValueError(f"targets describe {len(targets.offsets) - 1} images but {n} image features were given")
    if not 1 <= config.rank <= dim:
        raise ValueError(f"rank must be between 1 and the feature width {dim}, got {config.rank}")
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    order = rng.permutation(n)
    n_val = int(round(config.val_fraction * n))
    val, train = order[:n_val], order[n_val:]
    if len(train) < 2:
        raise ValueError(f"{n} images leave {len(train)} for training: give more pairs")
    val_text = targets.draw(val, rng)
    U = torch.zeros(dim, config.rank, requires_grad=True)
    V = (torch.randn(dim, config.rank) / math.sqrt(dim)).requires_grad_()
    optimizer = torch.optim.AdamW([U, V], lr=config.lr, betas=(0.9, 0.98), eps=1e-6,
                                  weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(train) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    history, best = [], (math.inf, U.detach().clone(), V.detach().clone())
    for epoch in range(config.epochs):
        batch_order = rng.permutation(train)
        text_rows = targets.draw(batch_order, rng)
        totals = []
        for b in range(0, len(batch_order), config.batch_size):
            rows, t = batch_order[b : b + config.batch_size], targets.embeddings[text_rows[b : b + config.batch_size]]
            losses = clipn_losses(images[rows], t, negate(t, U, V), logit_scale, _not_negative(targets.groups[rows]))
            optimizer.zero_grad()
            losses["total"].backward()
            optimizer.step()
            schedule.step()
            totals.append(float(losses["total"].detach()))
        record = {"epoch": epoch + 1, "train_total": float(np.mean(totals))}
        if n_val:
            record |= _validate(images[val], targets.embeddings[val_text], targets.groups[val], U, V, logit_scale)
            if record["val_total"] < best[0]:
                best = (record["val_total"], U.detach().clone(), V.detach().clone())
        history.append(record)
    if not n_val:
        best = (math.nan, U.detach(), V.detach())
    info = {**(info or {}), "method": "CLIPN-style negation head (no-projection map on text features), clipn.md 6",
            "config": asdict(config), "logit_scale": float(logit_scale), "n_images": int(n), "n_val": int(n_val),
            "n_texts": int(len(targets.embeddings)), "best_val_total": best[0], "history": history,
            "seconds": round(time.perf_counter() - start, 2)}
    return NegationMap(best[1].numpy(), best[2].numpy(), info)


@torch.no_grad()
def _validate(images, texts, groups, U, V, logit_scale) -> dict:
    """Held-out losses, share of matched pairs said "yes" and of non-matching pairs said "no"."""
    no_texts = negate(texts, U, V)
    not_negative = _not_negative(groups)
    losses = clipn_losses(images, texts, no_texts, logit_scale, not_negative)
    z = images @ texts.T - images @ no_texts.T
    negatives = ~not_negative
    return {**{f"val_{k}": float(v) for k, v in losses.items()},
            "val_yes_acc": float((torch.diagonal(z) > 0).float().mean()),
            "val_no_acc": float((z[negatives] < 0).float().mean()) if negatives.any() else math.nan}


def caption_targets(images: FeatureSet, captions_csv: str | os.PathLike, backbone, *, first: int | None = None,
                    cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, Targets]:
    """Image features and their captions (CSV ``image,caption_idx,caption``, matched to ``images.ids`` by file name).

    ``first`` keeps only the first images by sorted name: the shipped default model holds out Flickr8k-1k's last
    200, so train on ``first=800`` there (the split of ``scripts/train_default_model.py``).
    """
    captions: dict[str, list[str]] = {}
    with open(captions_csv, newline="") as f:
        for row in csv.DictReader(f):
            captions.setdefault(row["image"], []).append(row["caption"].strip())
    names = sorted(captions)[:first]
    row_of = {Path(str(i)).name: k for k, i in enumerate(images.ids)}
    names = [n for n in names if n in row_of]  # images that failed to decode have no features
    if not names:
        raise ValueError(f"no image of {captions_csv} is in the given features: extract its images folder first")
    texts = [c for n in names for c in captions[n]]
    counts = np.array([len(captions[n]) for n in names])
    targets = Targets(torch.as_tensor(encode_texts_cached(backbone, texts, cache_dir)), np.r_[0, np.cumsum(counts)],
                      np.arange(len(texts)), np.full(len(names), -1))
    return np.asarray(images.features)[[row_of[n] for n in names]], targets


def class_prompt_targets(images: FeatureSet, classes: list[str], templates, backbone, *,
                         cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, Targets]:
    """Labelled images and the prompts of their class ("a photo of a {class}." for each template); images of the
    same class are not negatives of each other."""
    labels = np.asarray(images.labels)
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"class prompts need images labelled 0..{len(classes) - 1}; these have labels "
                         f"{np.unique(labels)[:5].tolist()}...")
    prompts = build_prompts(list(classes), templates)
    bounds = np.r_[0, np.cumsum([len(p) for p in prompts])]
    counts = bounds[labels + 1] - bounds[labels]
    offsets = np.r_[0, np.cumsum(counts)]
    indices = np.repeat(bounds[labels] - offsets[:-1], counts) + np.arange(offsets[-1])
    embeddings = torch.as_tensor(encode_texts_cached(backbone, [p for group in prompts for p in group], cache_dir))
    return np.asarray(images.features), Targets(embeddings, offsets, indices, labels.copy())


def join_targets(*parts: tuple[np.ndarray, Targets]) -> tuple[np.ndarray, Targets]:
    """Concatenate (features, targets) pairs into one training set; groups stay distinct across parts."""
    features, embeddings, offsets, indices, groups = [], [], [np.zeros(1, np.int64)], [], []
    n_texts = n_indices = next_group = 0
    for feats, t in parts:
        features.append(feats)
        embeddings.append(t.embeddings)
        offsets.append(t.offsets[1:] + n_indices)
        indices.append(t.indices + n_texts)
        groups.append(np.where(t.groups >= 0, t.groups + next_group, -1))
        n_texts, n_indices = n_texts + len(t.embeddings), n_indices + len(t.indices)
        next_group += int(t.groups.max()) + 1 if (t.groups >= 0).any() else 0
    return np.concatenate(features), Targets(torch.cat(embeddings), np.concatenate(offsets), np.concatenate(indices),
                                             np.concatenate(groups))
