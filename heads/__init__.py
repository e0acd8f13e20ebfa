"""Heads on L2-normalised features: scikit-learn estimators that save as safetensors + JSON.

The registry (names, kinds, what ``fit`` needs) imports nothing heavy; the classes load on first attribute access
(PEP 562), so the CLI can list head names without paying for SciPy and scikit-learn."""
from .registry import REGISTRY, HeadSpec, canonical_name, names, spec_for

_REGISTRY_NAMES = ["REGISTRY", "HeadSpec", "canonical_name", "names", "spec_for"]
_CLASS_NAMES = ["Head", "OODDetector", "load_head", "softmax", "HEADS",
                *dict.fromkeys(spec.class_name for spec in REGISTRY.values())]
__all__ = [*_REGISTRY_NAMES, *_CLASS_NAMES]


def __getattr__(name: str):
    if name in _CLASS_NAMES:
        from . import _classes

        return getattr(_classes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
