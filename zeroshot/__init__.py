"""zeroshot: CLIP-style vision-language models on cached feature matrices.

The core imports only NumPy and Pillow (about 0.1 s); torch, open_clip, faiss and scikit-learn load when a model,
an index or a head is first used, so a fully cached command never pays for them. The trainers import torch at
the top, so their names are loaded on first use.
"""
import os

# On CPU the decode workers and the forward pass share the cores; OpenMP threads that spin while waiting steal
# the cycles the decoders need (measured: +20% images/s end to end, -4% on the bare forward pass). This only
# takes effect if torch is not imported yet, and a value the user already set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .backbone import Backbone, check_same_space, load_backbone, save_backbone_folder  # noqa: E402
from .cache import default_cache_dir  # noqa: E402
from .datasets import Dataset, FileList, ImageFiles, ImageFolder, NpzArrays, TarShards, open_dataset  # noqa: E402
from .evaluation.fewshot import run_fewshot, sample_shots, split_per_class  # noqa: E402
from .extraction import extract  # noqa: E402
from .features import FeatureSet, check_features  # noqa: E402
from .images import BadImage, ImageTransform  # noqa: E402
from .metrics import classification_metrics  # noqa: E402
from .ood_metrics import auroc, evaluate_detectors, fpr_at_tpr  # noqa: E402  (ood_metrics() is the module's name)
from .onnx_export import export  # noqa: E402
from .prompts import Card, available_cards, class_embeddings, load_card  # noqa: E402
from .retrieval.index import Index  # noqa: E402
from .retrieval.search import Hit, search_ids, search_images, search_text  # noqa: E402
from .runtime import ExportedModel, load_exported  # noqa: E402

__version__ = "0.1.0"

_NEGATION = ("NegationConfig", "NegationMap", "train_negation")  # zeroshot.train.negation imports torch

__all__ = sorted(["Backbone", "check_same_space", "load_backbone", "save_backbone_folder", "Dataset", "FileList",
                  "ImageFiles", "ImageFolder", "NpzArrays", "TarShards", "open_dataset", "run_fewshot",
                  "sample_shots", "split_per_class", "default_cache_dir", "extract", "FeatureSet", "check_features",
                  "BadImage", "ImageTransform", "classification_metrics", "auroc", "evaluate_detectors",
                  "fpr_at_tpr", "Card", "available_cards", "class_embeddings", "load_card", "Index", "Hit",
                  "search_ids", "search_images", "search_text", "export", "ExportedModel", "load_exported",
                  *_NEGATION])


def __getattr__(name: str):
    if name in _NEGATION:
        from .train import negation

        return getattr(negation, name)
    raise AttributeError(f"module 'zeroshot' has no attribute {name!r}")
