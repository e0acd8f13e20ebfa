"""The one registry of heads: each entry names a head (kebab-case), its class, constructor kwargs, kind and what
``fit`` needs. The few-shot protocol, the OOD evaluation, ``load_head`` and the CLI all read it, so adding a head
means adding its entry here (and its class to ``_classes``). Classes are named, not imported, so listing the names
costs the CLI no SciPy or scikit-learn import."""
from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("classifier", "ood", "calibrator")
INPUTS = {  # what a fit can be given -> what to give when it is missing
    "features": "image features: the support shots, ID training images or unlabelled images",
    "labels": "the labels of those images",
    "class_embeddings": "(C, D) class text embeddings: give the ID class names",
    "class_names": "the class names",
    "no_class_embeddings": "(C, D) 'no' embeddings: train a negation map with 'zeroshot ood train-clipn'",
    "captions": "one caption feature per shot",
    "base_classes": "the labels of the base classes (TEEN)",
    "logits": "(N, C) logits of another head",
}
_POSITIONAL = {"features": 0, "logits": 0, "labels": 1}  # fit(X, y, **keywords)


@dataclass(frozen=True)
class HeadSpec:
    """One registered head: ``build`` makes it unfitted, ``fit`` fits it on the inputs it ``needs`` (+ ``optional``)."""

    name: str
    class_name: str
    kind: str
    needs: tuple[str, ...]
    optional: tuple[str, ...] = ()
    kwargs: dict = field(default_factory=dict)
    transductive: bool = False  # scores the very rows it was fitted on (ZLaP on the test set), not new rows
    summary: str = ""

    @property
    def cls(self) -> type:
        from ._classes import HEADS

        return HEADS[self.class_name]

    def build(self, **settings):
        """The unfitted head: this entry's kwargs, plus the ``settings`` (e.g. ``logit_scale``, ``random_state``)
        that the class takes as parameters; the others are ignored, so one call serves every head."""
        accepted = set(self.cls._get_param_names()) - set(self.kwargs)
        return self.cls(**self.kwargs, **{k: v for k, v in settings.items() if k in accepted})

    def fit(self, head, **inputs):
        """``head.fit`` with the inputs this entry takes (features / logits and labels positionally); a missing
        required input is a clear error, inputs it does not take are dropped."""
        unknown = set(inputs) - set(INPUTS)
        if unknown:
            raise ValueError(f"unknown fit inputs {sorted(unknown)}; the registry knows {', '.join(INPUTS)}")
        missing = [n for n in self.needs if inputs.get(n) is None]
        if missing:
            raise ValueError(f"head {self.name} needs {'; '.join(f'{n} ({INPUTS[n]})' for n in missing)} to fit")
        given = {n: inputs[n] for n in self.needs + self.optional if inputs.get(n) is not None}
        args = [None, None]
        for n, position in _POSITIONAL.items():
            if n in given:
                args[position] = given.pop(n)
        return head.fit(*args, **given)


def _entries(*specs: HeadSpec) -> dict[str, HeadSpec]:
    return {spec.name: spec for spec in specs}


_TEXT = ("class_embeddings",)
_SHOTS = ("features", "labels")
REGISTRY: dict[str, HeadSpec] = _entries(
    HeadSpec("zero-shot", "ZeroShotClassifier", "classifier", _TEXT, ("class_names",),
             summary="cosine to the class text embeddings, times the logit scale"),
    HeadSpec("zlap", "ZLaP", "classifier", ("features", *_TEXT), ("class_names",), transductive=True,
             summary="label propagation on a kNN graph of the unlabelled test images themselves"),
    HeadSpec("zlap-inductive", "ZLaP", "classifier", ("features", *_TEXT), ("class_names",),
             summary="label propagation on a graph of unlabelled support images, new images scored inductively"),
    HeadSpec("linear-probe", "LinearProbe", "classifier", _SHOTS, ("class_embeddings", "class_names"),
             summary="L-BFGS logistic regression with a C search (CLIP protocol)"),
    HeadSpec("linear-probe-zs", "LinearProbe", "classifier", (*_SHOTS, *_TEXT), ("class_names",),
             kwargs={"init": "zero-shot"}, summary="linear probe started at and shrunk toward the zero-shot weights"),
    HeadSpec("tip", "TipAdapter", "classifier", (*_SHOTS, *_TEXT), ("class_names",),
             summary="Tip-Adapter: zero-shot logits plus a training-free cache of the shots"),
    HeadSpec("tip-f", "TipAdapterF", "classifier", (*_SHOTS, *_TEXT), ("class_names",),
             summary="Tip-Adapter-F: Tip-Adapter with fine-tuned cache keys"),
    HeadSpec("gda", "GDA", "classifier", (*_SHOTS, *_TEXT), ("class_names",),
             summary="Gaussian discriminant analysis (shared covariance) ensembled with zero-shot logits"),
    HeadSpec("caps", "CapSAdapter", "classifier", (*_SHOTS, *_TEXT), ("captions", "class_names"),
             summary="CapS-Adapter: image + caption cache and TIP-X term"),
    HeadSpec("teen", "TEEN", "classifier", _SHOTS, ("class_embeddings", "base_classes", "class_names"),
             summary="TEEN: class prototypes calibrated toward base prototypes (or the text embeddings)"),
    HeadSpec("mcm", "MCM", "ood", _TEXT, ("class_names",), summary="maximum concept matching (max softmax of cosines)"),
    HeadSpec("maxlogit", "MaxLogit", "ood", _TEXT, ("class_names",), summary="largest cosine to a class"),
    HeadSpec("energy", "Energy", "ood", _TEXT, ("class_names",), summary="negative free energy of the scaled logits"),
    HeadSpec("mahalanobis", "Mahalanobis", "ood", ("features",), ("labels",),
             summary="minus the Mahalanobis distance to the nearest ID class Gaussian (tied covariance)"),
    HeadSpec("relative-mahalanobis", "RelativeMahalanobis", "ood", _SHOTS,
             summary="Mahalanobis minus the distance to one background Gaussian"),
    HeadSpec("knn", "KNN", "ood", ("features",), summary="minus the distance to the k-th nearest ID feature"),
    HeadSpec("clipn-ctw", "CLIPN", "ood", (*_TEXT, "no_class_embeddings"), ("class_names",),
             kwargs={"inference": "ctw"}, summary="CLIPN competing-to-win with a negation map's 'no' embeddings"),
    HeadSpec("clipn-atd", "CLIPN", "ood", (*_TEXT, "no_class_embeddings"), ("class_names",),
             kwargs={"inference": "atd"}, summary="CLIPN agreeing-to-differ with a negation map's 'no' embeddings"),
    HeadSpec("temperature-scaling", "TemperatureScaling", "calibrator", ("logits", "labels"),
             summary="softmax(logits / T), T fitted on held-out labelled logits"),
    HeadSpec("prior-correction", "PriorCorrection", "calibrator", ("logits",),
             summary="per-class logit offsets for label shift (EM / prior matching)"),
)


def canonical_name(name: str) -> str:
    """The registry spelling of a head name: trimmed, lower case, ``_`` read as ``-`` (so ``clipn_atd`` works)."""
    return name.strip().lower().replace("_", "-")


def names(kind: str | None = None) -> tuple[str, ...]:
    """Registered names in registry order, optionally of one kind."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    return tuple(n for n, spec in REGISTRY.items() if kind is None or spec.kind == kind)


def spec_for(name: str, kind: str | None = None) -> HeadSpec:
    """The entry of ``name`` (any spelling :func:`canonical_name` accepts), optionally required to be of ``kind``."""
    spec = REGISTRY.get(canonical_name(name))
    if spec is None or (kind is not None and spec.kind != kind):
        raise ValueError(f"unknown {kind or 'head'} {name!r}; choose from {', '.join(names(kind))}")
    return spec
