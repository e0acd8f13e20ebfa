"""Zero-shot classifier from class text embeddings (spec: methods/zero_shot.md)."""
from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._base import Head, SoftmaxClassifier, projected, set_class_embeddings


class ZeroShotClassifier(SoftmaxClassifier, Head):
    """Logits ``s * X @ W.T`` with W the (C, D) unit class embeddings (prompt-ensembled text embeddings).

    ``logit_scale`` s only matters for probabilities and for heads that add these logits to other terms;
    100 follows CLIP / open_clip / CLIP_benchmark evaluation.
    """

    _fitted_arrays = ("class_embeddings_", "classes_")
    _fitted_meta = ("class_names_",)

    def __init__(self, logit_scale: float = 100.0):
        self.logit_scale = logit_scale

    def fit(self, X=None, y=None, *, classes, class_names: list[str] | None = None) -> "ZeroShotClassifier":
        """``classes``: (C, D) class embeddings, e.g. from :func:`zeroshot.class_embeddings`. X and y are unused."""
        set_class_embeddings(self, classes, class_names)
        self.classes_ = np.arange(len(self.class_embeddings_))
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self, "class_embeddings_")
        return self.logit_scale * projected(X, self.class_embeddings_, dim=self.n_features_in_, unit=False)

