"""ZLaP: label propagation from class-text nodes over a kNN graph of unlabelled images (spec: methods/zlap.md)."""
from __future__ import annotations

import numpy as np
from scipy import sparse

from zeroshot.features import check_features

from ._base import ArgmaxClassifier, Head, check_class_embeddings, checked_class_names, renamed_keywords


def knn(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product neighbours of each query row among ``base`` rows (faiss flat index): (sims, indices)."""
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(base)))


def top_classes(X: np.ndarray, W: np.ndarray, k: int, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``min(k, C)`` most similar classes: (similarities clipped at 0 then raised to gamma, indices)."""
    sims = X @ W.T
    k = min(k, W.shape[0])
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return np.maximum(np.take_along_axis(sims, idx, axis=1), 0) ** gamma, idx


def propagation_matrix(U: np.ndarray, W: np.ndarray, k: int, gamma: float, alpha: float) -> sparse.csr_matrix:
    """``L = I - alpha * D^-1/2 A D^-1/2`` on nodes [C text nodes, N image nodes] (spec: Graph, steps 1-7)."""
    C, N = len(W), len(U)
    img_sims, img_idx = knn(U, U, k)
    txt_sims, txt_idx = top_classes(U, W, k, gamma)
    rows = np.repeat(np.arange(C, C + N), img_idx.shape[1] + txt_idx.shape[1])
    cols = np.hstack([img_idx + C, txt_idx]).ravel()
    vals = np.hstack([np.maximum(img_sims, 0), txt_sims]).ravel()
    A = sparse.csr_matrix((vals, (rows, cols)), shape=(C + N, C + N), dtype=np.float64)
    A = A + A.T  # mutual neighbours get the sum
    A = A - sparse.diags(A.diagonal())  # no self-loops (each image is its own first neighbour)
    A.eliminate_zeros()
    degree = np.asarray(A.sum(axis=1)).ravel()
    degree[degree == 0] = 1
    scale = sparse.diags(1 / np.sqrt(degree))
    return (sparse.identity(C + N, format="csr") - alpha * (scale @ A @ scale)).tocsr()


def conjugate_gradient(L: sparse.csr_matrix, B: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Solve ``L Z = B`` for every column of B at once (independent CG runs in lock-step; L symmetric positive
    definite). Stops when every column's residual is below ``tol`` times its right-hand side, or after max_iter."""
    Z = np.zeros_like(B)
    R = B.copy()
    P = R.copy()
    rr = (R * R).sum(axis=0)
    target = tol ** 2 * (B * B).sum(axis=0)
    for _ in range(max_iter):
        if (rr <= target).all():
            break
        LP = L @ P
        step = np.divide(rr, (P * LP).sum(axis=0), out=np.zeros_like(rr), where=rr > 0)
        Z += step * P
        R -= step * LP
        rr_new = (R * R).sum(axis=0)
        P = R + np.divide(rr_new, rr, out=np.zeros_like(rr), where=rr > 0) * P
        rr = rr_new
    return Z


class ZLaP(ArgmaxClassifier, Head):
    """Zero-shot label propagation: class scores flow from the text nodes through a kNN graph of UNLABELLED images.

    ``fit(U, class_embeddings=W)`` builds the graph on U and solves ``L z = e_c`` for each class by conjugate gradient:
    ``transductive_scores_`` / ``transduction_`` are the scores / labels of U itself (transductive: they depend on
    all of U). ``decision_function(X)`` is the sparse inductive variant for new images: each graph node keeps only
    its best class and score, and a query sums those over its k image and k text neighbours. Rows that receive no
    mass (all similarities <= 0) fall back to zero-shot cosine scores. No labels, so nothing is tuned: k, gamma and
    alpha default to the official code's 5, 5.0, 0.3. Scores are not probabilities (no ``predict_proba``).
    """

    is_transductive = True
    _fitted_arrays = ("class_embeddings_", "unlabelled_", "node_class_", "node_score_", "transductive_scores_",
                      "transduction_")
    _fitted_meta = ("class_names_", "classes_", "cg_")

    def __init__(self, k: int = 5, gamma: float = 5.0, alpha: float = 0.3, tol: float = 1e-6, max_iter: int = 50):
        self.k = k
        self.gamma = gamma
        self.alpha = alpha
        self.tol = tol
        self.max_iter = max_iter

    @renamed_keywords
    def fit(self, X, y=None, *, class_embeddings=None, class_names: list[str] | None = None) -> "ZLaP":
        """X (N, D): unlabelled image features (e.g. the test set itself); ``class_embeddings`` (C, D): the text
        nodes. y is ignored (the images are unlabelled)."""
        if not 0 <= self.alpha < 1:
            raise ValueError(f"alpha must be in [0, 1) for the propagation to converge, got {self.alpha}")
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        W = check_class_embeddings(class_embeddings)
        U = check_features(X, dim=W.shape[1], name="unlabelled features X")
        if len(U) == 0:
            raise ValueError("ZLaP needs unlabelled images to build its graph: X is empty")
        names = checked_class_names(class_names, len(W))
        C = len(W)
        L = propagation_matrix(U, W, self.k, self.gamma, self.alpha)
        targets = np.eye(L.shape[0], C)  # one column per class node
        Z = conjugate_gradient(L, targets, self.tol, self.max_iter)
        residual = np.linalg.norm(L @ Z - targets, axis=0).max()
        self.cg_ = {"max_residual": float(residual), "max_iter": self.max_iter}
        self.class_embeddings_, self.unlabelled_ = W, U.copy()
        self.node_class_ = Z.argmax(axis=1)
        self.node_score_ = Z.max(axis=1).astype(np.float32)
        self.transductive_scores_ = self._with_fallback(Z[C:].astype(np.float32), U)
        self.transduction_ = self.transductive_scores_.argmax(axis=1)  # = classes_[...]: the labels are 0..C-1
        self.classes_ = np.arange(C)
        self.class_names_ = names
        self.n_features_in_ = W.shape[1]
        return self

    def _with_fallback(self, scores: np.ndarray, X: np.ndarray) -> np.ndarray:
        empty = ~scores.any(axis=1)
        scores[empty] = X[empty] @ self.class_embeddings_.T
        return scores

    def decision_function(self, X) -> np.ndarray:
        """Sparse inductive scores (N, C) for new images (spec: Sparse inductive)."""
        X = self._check_X(X)
        C = len(self.class_embeddings_)
        img_sims, img_idx = knn(self.unlabelled_, X, self.k)
        txt_sims, txt_idx = top_classes(X, self.class_embeddings_, self.k, self.gamma)
        nodes = np.hstack([img_idx + C, txt_idx])
        weights = np.hstack([np.maximum(img_sims, 0), txt_sims]) * self.node_score_[nodes]
        cells = np.arange(len(X))[:, None] * C + self.node_class_[nodes]
        scores = np.bincount(cells.ravel(), weights.ravel(), minlength=len(X) * C).reshape(len(X), C)
        return self._with_fallback(scores.astype(np.float32), X)
