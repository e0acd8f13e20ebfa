"""Tip-Adapter (training-free cache model) and Tip-Adapter-F (fine-tuned cache keys) (spec: methods/tip_adapter.md)."""
from __future__ import annotations

import warnings

import numpy as np

from ._fewshot import FewShotClassifier, Support, accuracy, best_on_grid, grid, in_chunks


def sort_by_class(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by class (stable), so per-class sums over the cache are contiguous column blocks."""
    order = np.argsort(y, kind="stable")
    return np.ascontiguousarray(X[order]), y[order]


def class_starts(sorted_labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.searchsorted(sorted_labels, np.arange(n_classes))


def affinity(S: np.ndarray, beta: float, out: np.ndarray | None = None) -> np.ndarray:
    """``exp(-beta (1 - S))`` of cosine similarities S, into ``out`` (may be S itself); float32 is enough."""
    out = np.multiply(S, beta, out=out)
    out -= beta
    return np.exp(out, out=out)


def cache_logits(X: np.ndarray, keys: np.ndarray, beta: float, starts: np.ndarray) -> np.ndarray:
    """``exp(-beta (1 - X @ keys.T)) @ one_hot(labels)`` for class-sorted keys: per-class sums of contiguous
    columns. The keys are scaled by beta before the product, which saves a pass over the (N, M) matrix."""
    S = X @ (np.float32(beta) * keys).T
    S -= np.float32(beta)
    return np.add.reduceat(np.exp(S, out=S), starts, axis=1)


def search_alpha_beta(S_val: np.ndarray, starts: np.ndarray, base_val: np.ndarray, y_val: np.ndarray,
                      alphas: np.ndarray, betas: np.ndarray) -> tuple[dict, float]:
    """Grid search of ``base + alpha * cache(beta)`` on validation rows: beta outer, alpha inner, first best wins.

    The cache term is computed once per beta; all alphas are then scored in one vectorised step.
    """
    scores = np.empty((len(betas), len(alphas)))
    buffer = np.empty_like(S_val)
    for i, beta in enumerate(betas):
        cache = np.add.reduceat(affinity(S_val, beta, out=buffer), starts, axis=1)
        logits = np.multiply.outer(alphas.astype(np.float32), cache)
        logits += base_val
        scores[i] = accuracy(logits, y_val)
    (i, j), acc = best_on_grid(scores)
    return {"alpha": alphas[j], "beta": betas[i]}, acc


def warn_if_unbalanced(counts: np.ndarray) -> None:
    if counts.min() != counts.max():
        warnings.warn(f"shots per class differ ({counts.min()}..{counts.max()}): classes with more shots get larger "
                      "cache logits", stacklevel=3)


class TipAdapter(FewShotClassifier):
    """``logits = s * X @ W.T + alpha * exp(-beta * (1 - X @ K.T)) @ one_hot(y)``, K the support features.

    alpha / beta left ``None`` are searched on the validation split with the official grids (20 alphas in
    [0.1, alpha_max), 200 betas in [0.1, beta_max)), defaults 1 and 5.5 (the paper's) otherwise. Unlike the
    official ImageNet script, the search never sees the evaluation set. Keys are the given features: pass averaged
    augmented views yourself if you have them (the official code averages 10 augmented passes per image).
    """

    _fitted_arrays = FewShotClassifier._fitted_arrays + ("class_embeddings_", "cache_keys_", "cache_labels_")
    _hyperparameters = ("alpha", "beta")
    _defaults = {"alpha": 1.0, "beta": 5.5}

    def __init__(self, alpha: float | None = None, beta: float | None = None, alpha_max: float = 3.0,
                 beta_max: float = 7.0, logit_scale: float = 100.0, val_fraction: float = 0.25, random_state: int = 0):
        self.alpha = alpha
        self.beta = beta
        self.alpha_max = alpha_max
        self.beta_max = beta_max
        self.logit_scale = logit_scale
        self.val_fraction = val_fraction
        self.random_state = random_state

    def _grids(self) -> tuple[np.ndarray, np.ndarray]:
        alphas = grid(self.alpha, 0.1 + np.arange(20) * (self.alpha_max - 0.1) / 20)
        betas = grid(self.beta, 0.1 + np.arange(200) * (self.beta_max - 0.1) / 200)
        return alphas, betas

    def _search(self, fit: Support, X_val, y_val, W):
        keys, labels = self._keys(fit, W)
        return search_alpha_beta(X_val @ keys.T, class_starts(labels, fit.n_classes),
                                 self.logit_scale * (X_val @ W.T), y_val, *self._grids())

    def _keys(self, support: Support, W) -> tuple[np.ndarray, np.ndarray]:
        """Cache keys and their labels, grouped by class (Tip-Adapter-F trains them here)."""
        return sort_by_class(support.X, support.y)

    def _build(self, support: Support, W, **chosen) -> None:
        warn_if_unbalanced(np.bincount(support.y, minlength=support.n_classes))
        self.class_embeddings_ = W
        self.cache_keys_, self.cache_labels_ = self._keys(support, W)

    def _logits(self, X: np.ndarray) -> np.ndarray:
        W, starts = self.class_embeddings_, class_starts(self.cache_labels_, len(self.class_embeddings_))
        alpha, beta = self.chosen_["alpha"], self.chosen_["beta"]

        def logits(x):
            out = self.logit_scale * (x @ W.T)
            if alpha:  # alpha = 0 is exactly zero-shot
                out += alpha * cache_logits(x, self.cache_keys_, beta, starts)
            return out

        return in_chunks(X, len(W), logits)


def cache_loss_and_grad(K: np.ndarray, x: np.ndarray, y: np.ndarray, base: np.ndarray, labels: np.ndarray,
                        starts: np.ndarray, alpha: float, beta: float) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of ``base + alpha * exp(-beta (1 - x K^T)) @ one_hot(labels)`` and its gradient in the
    keys K, written out by hand: with G = dCE/dlogits and A the affinities, ``dK = alpha beta (G[:, labels] A)^T x``."""
    A = x @ K.T
    affinity(A, beta, out=A)
    z = base + alpha * np.add.reduceat(A, starts, axis=1)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    G = np.exp(log_p)
    G[np.arange(len(y)), y] -= 1
    G /= len(y)
    return float(-log_p[np.arange(len(y)), y].mean()), (alpha * beta) * (G[:, labels] * A).T @ x


def train_cache_keys(keys: np.ndarray, labels: np.ndarray, base_logits: np.ndarray, n_classes: int, *, alpha: float,
                     beta: float, epochs: int, lr: float, batch_size: int, weight_decay: float,
                     seed: int) -> np.ndarray:
    """Tip-Adapter-F training: the class-sorted keys (initialised from the support rows, which are also the
    training queries) learn by cross-entropy with AdamW (eps 1e-4) and a cosine learning rate, alpha and beta
    held fixed. Keys are not renormalised (as in the official code)."""
    K = keys.astype(np.float32).copy()
    starts = class_starts(labels, n_classes)
    m, v = np.zeros_like(K), np.zeros_like(K)
    b1, b2, eps = 0.9, 0.999, 1e-4
    rng = np.random.default_rng(seed)
    steps_per_epoch = -(-len(keys) // batch_size)
    total = epochs * steps_per_epoch
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = rng.permutation(len(keys))
        rows = order[(step % steps_per_epoch) * batch_size:][:batch_size]
        _, grad = cache_loss_and_grad(K, keys[rows], labels[rows], base_logits[rows], labels, starts, alpha, beta)
        rate = 0.5 * lr * (1 + np.cos(np.pi * step / total))  # CosineAnnealingLR, stepped every iteration
        K *= 1 - rate * weight_decay  # AdamW: decoupled weight decay
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        t = step + 1
        K -= rate * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return K


class TipAdapterF(TipAdapter):
    """Tip-Adapter with fine-tuned cache keys (spec: tip_adapter.md, Tip-Adapter-F).

    Keys train ``epochs`` epochs on the support features with ``train_alpha`` / ``train_beta`` fixed (AdamW,
    lr 1e-3, batch 256, cosine schedule, as in the official code), then alpha / beta are searched with the learned
    keys. Deviations: features-only, so each epoch sees the same support features instead of fresh augmented
    views; the official script picks the epoch by TEST accuracy, here the last epoch is kept. For the search the
    keys train on the fit part of the split; the final keys train the same way on all shots.
    """

    def __init__(self, alpha: float | None = None, beta: float | None = None, alpha_max: float = 3.0,
                 beta_max: float = 7.0, logit_scale: float = 100.0, epochs: int = 20, lr: float = 1e-3,
                 batch_size: int = 256, weight_decay: float = 0.01, train_alpha: float = 1.0, train_beta: float = 1.0,
                 val_fraction: float = 0.25, random_state: int = 0):
        super().__init__(alpha, beta, alpha_max, beta_max, logit_scale, val_fraction, random_state)
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.train_alpha = train_alpha
        self.train_beta = train_beta

    def _keys(self, support: Support, W) -> tuple[np.ndarray, np.ndarray]:
        keys, labels = sort_by_class(support.X, support.y)
        trained = train_cache_keys(keys, labels, self.logit_scale * (keys @ W.T), support.n_classes,
                                   alpha=self.train_alpha, beta=self.train_beta, epochs=self.epochs, lr=self.lr,
                                   batch_size=self.batch_size, weight_decay=self.weight_decay, seed=self.random_state)
        return trained, labels
