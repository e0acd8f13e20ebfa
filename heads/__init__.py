"""Heads on L2-normalised features: scikit-learn estimators that save as safetensors + JSON."""
from ._base import Head, load_head, softmax
from .zero_shot import ZeroShotClassifier
from .clipn import CLIPN
from .knn import KNN
from .mahalanobis import Mahalanobis, RelativeMahalanobis
from .ood import MCM, Energy, MaxLogit, OODDetector

HEADS = {cls.__name__: cls for cls in (ZeroShotClassifier,
                                          MCM, MaxLogit, Energy, Mahalanobis, RelativeMahalanobis, KNN, CLIPN)}

__all__ = ["Head", "ZeroShotClassifier", "load_head", "softmax", "HEADS"]
__all__ += ["OODDetector", "MCM", "MaxLogit", "Energy", "Mahalanobis", "RelativeMahalanobis", "KNN", "CLIPN"]
