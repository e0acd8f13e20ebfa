"""zeroshot: CLIP-style vision-language models on cached feature matrices.

Names are imported on first use, so a fully cached command never pays for importing torch.
"""
import os
from importlib import import_module

# On CPU the decode workers and the forward pass share the cores; OpenMP threads that spin while waiting steal
# the cycles the decoders need (measured: +20% images/s end to end, -4% on the bare forward pass). This only
# takes effect if torch is not imported yet, and a value the user already set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EXPORTS = {
    "backbone": ["Backbone", "check_same_space", "load_backbone", "save_backbone_folder"],
    "datasets": ["Dataset", "FileList", "ImageFiles", "ImageFolder", "NpzArrays", "TarShards", "open_dataset"],
    "extraction": ["extract", "default_cache_dir"],
    "features": ["FeatureSet", "check_features"],
    "images": ["BadImage", "ImageTransform"],
    "metrics": ["classification_metrics"],
    "prompts": ["Card", "available_cards", "class_embeddings", "load_card"],
    "fewshot": ["run_fewshot", "sample_shots", "split_per_class"],
    "ood_metrics": ["auroc", "evaluate_detectors", "fpr_at_tpr"],  # ood_metrics() itself: the module's name
    "clipn_train": ["NegationConfig", "NegationMap", "train_negation"],
    "index": ["Index"],
    "search": ["Hit", "search_ids", "search_images", "search_text"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__version__ = "0.1.0"
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'zeroshot' has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
