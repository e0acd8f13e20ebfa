"""Zero-shot classifier from class text embeddings (spec: methods/zero_shot.md)."""
from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._base import Head, SoftmaxClassifier, projected, renamed_keywords, set_class_embeddings


class ZeroShotClassifier(SoftmaxClassifier, Head):
    """Logits ``s * X @ W.T`` with W the (C, D) unit class embeddings (prompt-ensembled text embeddings).

    ``logit_scale`` s only matters for probabilities and for heads that add these logits to other terms;
    100 follows CLIP / open_clip / CLIP_benchmark evaluation.
    """

    _fitted_arrays = ("class_embeddings_",)
    _fitted_meta = ("class_names_", "classes_")

    def __init__(self, logit_scale: float = 100.0):
        self.logit_scale = logit_scale

    @renamed_keywords
    def fit(self, X=None, y=None, *, class_embeddings=None,
            class_names: list[str] | None = None) -> "ZeroShotClassifier":
        """``class_embeddings``: (C, D), e.g. from :func:`zeroshot.class_embeddings`. X is unused; y, when given,
        only names the labels that :meth:`predict` returns (``classes_``, see :func:`label_classes`)."""
        self.classes_ = set_class_embeddings(self, class_embeddings, class_names, y)
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self, "class_embeddings_")
        return self.logit_scale * projected(X, self.class_embeddings_, dim=self.n_features_in_, unit=False)

