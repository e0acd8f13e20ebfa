"""What every head shares: input and label checks, the renamed fit keywords, softmax, and saving as safetensors +
JSON (never pickle)."""
from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from zeroshot.backbone import check_fingerprint
from zeroshot.features import check_features, rows_look_unit, unit_rows
from zeroshot.metrics import softmax

HEAD_JSON, HEAD_WEIGHTS = "head.json", "head.safetensors"
HEAD_FORMAT = 2  # head.json's format version (2: classes_ in the JSON, detectors keep offset_); none means 1
HEAD_KEYS = ("class", "params", "fitted", "n_features_in_")
RENAMED_KEYWORDS = {"classes": "class_embeddings", "no_classes": "no_class_embeddings"}


def projected(X, W: np.ndarray, *, dim: int, unit: bool, name: str = "X") -> np.ndarray:
    """(N, C) float32 ``X @ W.T`` of checked feature rows, in one pass over X: finiteness is checked exactly on the
    small result (a NaN or inf in a row of X makes its row of scores non-finite) and, with ``unit``, norms on a
    sample (:func:`~zeroshot.features.rows_look_unit`). Only when a check fails is X checked (:func:`check_features`) or
    renormalised with a warning (:func:`unit_rows`) the slow way, so errors and warnings are exactly theirs."""
    X = check_features(X, dim=dim, name=name, finite=False)
    S = X @ W.T
    if np.isfinite(S).all() and (not unit or rows_look_unit(X, sampled=True)):
        return S
    return (unit_rows(X, dim=dim, name=name) if unit else check_features(X, dim=dim, name=name)) @ W.T


def renamed_keywords(fit):
    """Let ``fit`` take the text embeddings under their old names (``classes=``, ``no_classes=``) for one more
    release, with a FutureWarning: in scikit-learn ``classes`` means label values, so they are now
    ``class_embeddings=`` / ``no_class_embeddings=``. The signature stays the new one (metadata routing reads it)."""

    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        for old, new in RENAMED_KEYWORDS.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"give {new}= only ({old}= is its deprecated name)")
                warnings.warn(f"{type(self).__name__}.fit({old}=...) is deprecated and will be removed in the next "
                              f"release: pass the text embeddings as {new}=...", FutureWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
        return fit(self, *args, **kwargs)

    return wrapper


def label_classes(y, n_classes: int | None = None, class_names: list[str] | None = None) -> np.ndarray:
    """``classes_`` for labels ``y`` (scikit-learn's contract: any labels, ``predict`` returns them).

    Labels that are all class names take the class names' order (the order of the class embeddings); integer
    labels 0..C-1 for C class embeddings are the row indices; any other labels (strings, non-contiguous integers)
    are sorted as :func:`numpy.unique` sorts them, and the i-th class embedding belongs to the i-th label."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-D array of labels, got shape {y.shape}")
    check_classification_targets(y)  # scikit-learn's refusal of continuous targets, with its message
    values = np.unique(y)
    if class_names is not None and y.dtype.kind in "USO" and set(values.tolist()) <= set(class_names):
        return np.asarray(class_names)
    if n_classes is not None and y.dtype.kind in "biu" and len(y) and 0 <= values[0] and values[-1] < n_classes:
        return np.arange(n_classes)
    if n_classes is not None and len(values) != n_classes:
        hint = " (-1 marks an unlabelled sample: drop those rows)" if y.dtype.kind in "iu" and (y == -1).any() else ""
        raise ValueError(f"y has {len(values)} distinct labels but there are {n_classes} classes{hint}: give one "
                         "class embedding (and class name) per label, in the order of the sorted labels or of "
                         "class_names")
    return values


def encode_labels(y, classes: np.ndarray, name: str = "y") -> np.ndarray:
    """Each label's index in ``classes`` (any order, any label type); a label outside them says which."""
    y = np.asarray(y)
    order = np.argsort(classes, kind="stable")
    known = classes[order]
    if len(y) == 0:
        return np.zeros(0, np.int64)
    if (y.dtype.kind in "USO") != (known.dtype.kind in "USO"):
        raise ValueError(f"{name} holds {y.dtype} labels but the classes are {known.dtype} ({known[:5].tolist()} ...)")
    position = np.minimum(np.searchsorted(known, y), len(known) - 1)
    unseen = known[position] != y
    if unseen.any():
        raise ValueError(f"{name} has labels {np.unique(y[unseen])[:10].tolist()} outside the {len(classes)} classes "
                         f"{classes[:10].tolist()}: give a class embedding for every label, or drop those samples")
    return order[position].astype(np.int64)


def check_class_embeddings(W, name: str = "class_embeddings") -> np.ndarray:
    """(C, D) class text embeddings, finite; rows are renormalised (the zero-shot contract is unit rows)."""
    if W is None:
        raise ValueError(f"the class text embeddings are missing: fit(..., {name}=W) with W from "
                         "zeroshot.class_embeddings")
    W = check_features(W, name=name)
    if len(W) == 0:
        raise ValueError(f"{name} is empty: give at least one class embedding row")
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name} has all-zero rows; every class needs a non-zero text embedding")
    return (W / norms).astype(np.float32)


def checked_class_names(class_names: list[str] | None, n_classes: int, what: str = "class embeddings",
                        labels: np.ndarray | None = None) -> list[str]:
    """The given names, one per class, or else the labels (``classes_``) as text, "0" .. "C-1" without them."""
    if class_names is None:
        return [str(c) for c in (range(n_classes) if labels is None else labels)]
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names for {n_classes} {what}")
    return list(class_names)


def set_class_embeddings(head, class_embeddings, class_names: list[str] | None, y=None) -> np.ndarray:
    """Store checked (C, D) class embeddings and their names on ``head`` (shared by the text-only heads); returns
    the labels the rows stand for: :func:`label_classes` of ``y`` when given, else 0..C-1 (names default to them)."""
    W = check_class_embeddings(class_embeddings)
    labels = np.arange(len(W)) if y is None else label_classes(y, len(W), class_names)
    head.class_names_ = checked_class_names(class_names, len(W), labels=labels)
    head.class_embeddings_ = W
    head.n_features_in_ = W.shape[1]
    return labels


class ArgmaxClassifier(ClassifierMixin):
    """``predict``: the class with the highest ``decision_function`` score."""

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)  # first: it raises NotFittedError on an unfitted head
        return self.classes_[scores.argmax(axis=1)]


class SoftmaxClassifier(ArgmaxClassifier):
    """``predict_proba``: the softmax of ``decision_function`` (logits)."""

    def predict_proba(self, X) -> np.ndarray:
        return softmax(self.decision_function(X))


class Head(BaseEstimator):
    """Base for heads: ``_fitted_arrays`` name the fitted attributes saved as tensors, ``_fitted_meta`` as JSON
    (``classes_`` among them: labels may be strings)."""

    _fitted_arrays: tuple[str, ...] = ()
    _fitted_meta: tuple[str, ...] = ()

    def _check_fitted(self) -> None:
        """scikit-learn's NotFittedError unless the first fitted array (else any fitted attribute) is set."""
        check_is_fitted(self, self._fitted_arrays[0] if self._fitted_arrays else None)

    def _check_X(self, X) -> np.ndarray:
        self._check_fitted()
        return check_features(X, dim=self.n_features_in_)

    def _finite_scores(self, X, scores_of) -> np.ndarray:
        """``scores_of(X)`` with X checked after the fact: a non-finite score sends X through the full check (which
        names the NaN rows), so valid input pays no pass over X for it."""
        self._check_fitted()
        X = check_features(X, dim=self.n_features_in_, finite=False)
        scores = scores_of(X)
        if not np.isfinite(scores).all():
            check_features(X, dim=self.n_features_in_)
        return scores

    def save(self, folder: str | os.PathLike, **extra_meta) -> Path:
        """Write ``head.json`` (class, params, fitted metadata) and ``head.safetensors`` (fitted arrays)."""
        from safetensors.numpy import save_file

        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(getattr(self, k)) for k in self._fitted_arrays}, str(folder / HEAD_WEIGHTS))
        meta = {
            "format": HEAD_FORMAT,
            "class": type(self).__name__,
            "params": self.get_params(deep=False),
            "fitted": {k: _jsonable(getattr(self, k)) for k in self._fitted_meta},
            "n_features_in_": int(self.n_features_in_),
            **extra_meta,
        }
        (folder / HEAD_JSON).write_text(json.dumps(meta, indent=1))
        return folder


def _jsonable(value):
    """A fitted value as JSON can hold it: arrays (``classes_``) as lists, NumPy scalars as Python numbers."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


def load_head(folder: str | os.PathLike, *, fingerprint: str | None = None, space: str | None = None) -> Head:
    """Load any saved head; ``fingerprint`` refuses a head fitted on another backbone's features, ``space`` one
    fitted in another embedding space (a student shares its teacher's space, see ``Backbone.space``)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from ._classes import HEADS

    folder = Path(folder)
    meta = _read_head_json(folder / HEAD_JSON)
    if meta["class"] not in HEADS:
        raise ValueError(f"{folder / HEAD_JSON}: unknown head class {meta['class']!r}; it was saved by another "
                         f"library or version (known: {', '.join(sorted(HEADS))})")
    saved_fp = meta.get("fingerprint")
    check_fingerprint(saved_fp, fingerprint, str(folder), "refit the head on this backbone's features")
    saved_space = meta.get("space")
    if space is not None and saved_space is not None and saved_space != space:
        raise ValueError(f"{folder} was fitted in the embedding space {saved_space}, but these features live in "
                         f"{space}: a student works only with heads and text embeddings of its own teacher")
    cls = HEADS[meta["class"]]
    try:
        head = cls(**meta["params"])
    except TypeError as exc:
        raise ValueError(f"{folder / HEAD_JSON}: the params do not fit {cls.__name__} ({exc}); was it edited?") from None
    try:
        arrays = load_file(str(folder / HEAD_WEIGHTS))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder / HEAD_WEIGHTS} is missing: copy the whole head folder") from None
    except SafetensorError as exc:
        raise ValueError(f"{folder / HEAD_WEIGHTS} cannot be read ({exc}); save the head again") from None
    if meta.get("format", 1) == 1:
        _upgrade_format_1(folder, meta, arrays, cls)
    _check_names(folder / HEAD_WEIGHTS, "arrays", set(arrays), set(cls._fitted_arrays))
    _check_names(folder / HEAD_JSON, "fitted attributes", set(meta["fitted"]), set(cls._fitted_meta))
    for k, v in {**arrays, **meta["fitted"]}.items():
        setattr(head, k, np.asarray(v) if k == "classes_" else v)
    head.n_features_in_ = meta["n_features_in_"]
    head.fingerprint_ = saved_fp
    head.space_ = saved_space
    return head


def _read_head_json(path: Path) -> dict:
    """``head.json`` checked for what loading needs: a clear error naming the file for a missing, damaged or
    foreign one, never a bare KeyError."""
    if not path.is_file():
        raise FileNotFoundError(f"no saved head in {path.parent} ({path.name} missing); save one with head.save(folder)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the file is damaged: save the head again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} does not describe a head (a JSON object with {', '.join(HEAD_KEYS)})")
    missing = [key for key in HEAD_KEYS if key not in meta]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a head saved by zeroshot, or damaged")
    if meta.get("format", 1) not in (1, HEAD_FORMAT):
        raise ValueError(f"{path} has head format {meta['format']}, this zeroshot reads 1 to {HEAD_FORMAT}: load it "
                         "with the version that saved it, or refit the head")
    if not isinstance(meta["params"], dict) or not isinstance(meta["fitted"], dict):
        raise ValueError(f"{path}: 'params' and 'fitted' must be JSON objects")
    return meta


def _upgrade_format_1(folder: Path, meta: dict, arrays: dict, cls: type) -> None:
    """Read a head saved before format 2: ``classes_`` moves from the tensors to the JSON, and a detector's
    ``offset_`` is the threshold ``zeroshot ood fit`` kept beside it (None when it kept none). A head whose fitted
    state has changed since (RelativeMahalanobis) must be refitted."""
    if "classes_" in arrays and "classes_" in cls._fitted_meta:
        meta["fitted"]["classes_"] = arrays.pop("classes_")
    stale = sorted(set(arrays) - set(cls._fitted_arrays))
    if stale:
        raise ValueError(f"{folder} holds a {cls.__name__} saved in head format 1, whose fitted state "
                         f"({', '.join(stale)}) this version computes differently: fit and save it again")
    if "offset_" in cls._fitted_meta and "offset_" not in meta["fitted"]:
        meta["fitted"]["offset_"] = meta.get("threshold")


def _check_names(path: Path, what: str, found: set, declared: set) -> None:
    """A saved head sets exactly the attributes its class declares, so that a tampered file cannot set others."""
    if found != declared:
        extra, lacking = sorted(found - declared), sorted(declared - found)
        raise ValueError(f"{path}: its {what} do not match the head's" + (f"; unexpected {extra}" if extra else "")
                         + (f"; missing {lacking}" if lacking else "") + ": was it edited? Save the head again")
