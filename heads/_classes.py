"""Every head class, imported together (SciPy, scikit-learn, faiss on first use); ``HEADS`` maps the class names
that saved heads record to the classes the registry names."""
from ._base import Head, load_head, softmax
from .calibration import TEEN, PriorCorrection, TemperatureScaling
from .caps_adapter import CapSAdapter
from .clipn import CLIPN
from .gda import GDA
from .knn import KNN
from .linear_probe import LinearProbe
from .mahalanobis import Mahalanobis, RelativeMahalanobis
from .ood import MCM, Energy, MaxLogit, OODDetector
from .registry import REGISTRY
from .tip_adapter import TipAdapter, TipAdapterF
from .zero_shot import ZeroShotClassifier
from .zlap import ZLaP

_CLASSES = {cls.__name__: cls for cls in (ZeroShotClassifier, ZLaP, LinearProbe, TipAdapter, TipAdapterF, GDA,
                                          CapSAdapter, TEEN, MCM, MaxLogit, Energy, Mahalanobis,
                                          RelativeMahalanobis, KNN, CLIPN, TemperatureScaling, PriorCorrection)}
HEADS: dict[str, type] = {spec.class_name: _CLASSES[spec.class_name] for spec in REGISTRY.values()}

__all__ = ["Head", "OODDetector", "load_head", "softmax", "HEADS", *HEADS]
