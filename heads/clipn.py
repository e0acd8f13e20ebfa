"""CLIPN-style OOD scores from "yes" and "no" class embeddings (spec: methods/clipn.md 4).

What this is: CLIPN's two threshold-free inference rules on any pair of (C, D) class embeddings, ``W_yes`` from the
ordinary text tower and ``W_no`` from a "no" text side, e.g. the negation map trained on CPU by
:mod:`zeroshot.train.negation`, or hand-written negated prompts ("a photo without a {}."). What it is not: CLIPN's
released model (a ViT-B/16 with a "no" copy of its text tower trained on CC3M); no CLIPN weights are used here.
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_expit
from sklearn.utils.validation import check_is_fitted

from ._base import check_class_embeddings, renamed_keywords
from .ood import TextOODDetector, _check_positive, log_sum_exp

INFERENCES = ("atd", "ctw")


class CLIPN(TextOODDetector):
    """``p_c = softmax_c(s <f, w_yes_c>)`` is the class posterior and ``p_yes_c = sigmoid(s <f, w_yes_c> - s <f,
    w_no_c>)`` the chance that the image *is* class c rather than *not* c.

    - ``inference="ctw"`` (competing-to-win): score ``p_yes`` of the predicted class argmax_c p_c;
      :meth:`predict` calls a sample OOD when ``p_no > p_yes`` for that class.
    - ``inference="atd"`` (agreeing-to-differ): score ``sum_c p_yes_c p_c = 1 - p_ood``; OOD when
      ``p_ood > max_c p_c``.

    :meth:`score_samples` returns the log-odds ``log(S / (1 - S))`` of these scores S: the same ranking, but it
    does not saturate as S and log S do (at s = 100, float32 probabilities of confident samples tie at 1.0). The ID
    class prediction is the zero-shot one (the "yes" side is untouched), so ID accuracy is unchanged.
    """

    _fitted_arrays = ("class_embeddings_", "no_class_embeddings_")

    def __init__(self, inference: str = "atd", logit_scale: float = 100.0):
        self.inference = inference
        self.logit_scale = logit_scale

    @renamed_keywords
    def fit(self, X=None, y=None, *, class_embeddings=None, no_class_embeddings=None,
            class_names: list[str] | None = None) -> "CLIPN":
        """``class_embeddings``: (C, D) "yes" class embeddings; ``no_class_embeddings``: the matching (C, D) "no"
        embeddings; ``X``: ID features to keep a threshold from (optional: :meth:`predict` needs none)."""
        if self.inference not in INFERENCES:
            raise ValueError(f"inference must be one of {INFERENCES}, got {self.inference!r}")
        _check_positive(self.logit_scale, "logit_scale")
        if no_class_embeddings is None:
            raise ValueError("CLIPN needs no_class_embeddings: the (C, D) 'no' embeddings of a negation map "
                             "('zeroshot ood train-clipn') or of hand-written negated prompts")
        W_no = check_class_embeddings(no_class_embeddings, name="no_class_embeddings")
        super().fit(None, y, class_embeddings=class_embeddings, class_names=class_names)
        if W_no.shape != self.class_embeddings_.shape:
            raise ValueError(f"no_class_embeddings has shape {W_no.shape} but class_embeddings has "
                             f"{self.class_embeddings_.shape}: give one 'no' embedding per class")
        self.no_class_embeddings_ = W_no
        return self if X is None else self.calibrate(X)

    def _log_odds(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(log-odds of the ID score under this head's rule, log p_c), float64."""
        check_is_fitted(self, "no_class_embeddings_")
        C = len(self.class_embeddings_)
        cos = self._cosines(X, np.vstack([self.class_embeddings_, self.no_class_embeddings_])).astype(np.float64)
        yes, no = self.logit_scale * cos[:, :C], self.logit_scale * cos[:, C:]
        log_p, z = yes - log_sum_exp(yes)[:, None], yes - no  # z_c = logit of p_yes_c
        if self.inference == "ctw":
            return np.take_along_axis(z, log_p.argmax(axis=1)[:, None], axis=1)[:, 0], log_p
        # S = sum_c p_c p_yes_c and 1 - S = sum_c p_c p_no_c, each summed in log space
        return log_sum_exp(log_p + log_expit(z)) - log_sum_exp(log_p + log_expit(-z)), log_p

    def score_samples(self, X) -> np.ndarray:
        return self._log_odds(X)[0].astype(np.float32)

    def predict(self, X) -> np.ndarray:
        """1 = in-distribution, -1 = OOD (scikit-learn's outlier convention): by the threshold ``offset_`` once
        one is kept (fit on ID features, :meth:`calibrate`), else by CLIPN's threshold-free rule above."""
        check_is_fitted(self, "no_class_embeddings_")
        if self.offset_ is not None:
            return super().predict(X)
        log_odds, log_p = self._log_odds(X)
        if self.inference == "ctw":
            ood = log_odds < 0  # p_no > p_yes for the predicted class
        else:
            ood = log_expit(-log_odds) > log_p.max(axis=1)  # p_ood = 1 - S > max_c p_c, compared in log space
        return np.where(ood, -1, 1)
