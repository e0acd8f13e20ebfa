"""Heads on L2-normalised features: scikit-learn estimators that save as safetensors + JSON."""
from ._base import Head, load_head, softmax
from .zero_shot import ZeroShotClassifier

HEADS = {cls.__name__: cls for cls in (ZeroShotClassifier,)}

__all__ = ["Head", "ZeroShotClassifier", "load_head", "softmax", "HEADS"]
