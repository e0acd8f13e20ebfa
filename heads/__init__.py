"""Heads on L2-normalised features: scikit-learn estimators that save as safetensors + JSON."""
from ._base import Head, load_head, softmax
from .zero_shot import ZeroShotClassifier
from .calibration import TEEN, PriorCorrection, TemperatureScaling
from .caps_adapter import CapSAdapter
from .gda import GDA
from .linear_probe import LinearProbe
from .tip_adapter import TipAdapter, TipAdapterF
from .zlap import ZLaP
from .clipn import CLIPN
from .knn import KNN
from .mahalanobis import Mahalanobis, RelativeMahalanobis
from .ood import MCM, Energy, MaxLogit, OODDetector

HEADS = {cls.__name__: cls for cls in (ZeroShotClassifier,
                                          LinearProbe, TipAdapter, TipAdapterF, GDA, CapSAdapter, ZLaP, TEEN,
                                          TemperatureScaling, PriorCorrection,
                                          MCM, MaxLogit, Energy, Mahalanobis, RelativeMahalanobis, KNN, CLIPN)}

__all__ = ["Head", "OODDetector", "load_head", "softmax", "HEADS", *HEADS]
