"""Generated images against real ones in an embedding space: Fréchet distance with its small-sample diagnostics,
k-NN manifold precision / recall / density / coverage, and CLIPScore / RefCLIPScore, all on feature matrices
(``shared/methods/generated_image_eval.md``). Imports only NumPy; faiss and SciPy load when first used."""
from .clipscore import clip_score, clip_score_summary, ref_clip_score
from .frechet import (bootstrap_frechet, frechet_distance, frechet_distance_sqrtm, frechet_floor, frechet_from_stats,
                      frechet_vs_n, gaussian_stats)
from .manifold import knn_radii, manifold_metrics

__all__ = ["bootstrap_frechet", "clip_score", "clip_score_summary", "frechet_distance", "frechet_distance_sqrtm",
           "frechet_floor", "frechet_from_stats", "frechet_vs_n", "gaussian_stats", "knn_radii", "manifold_metrics",
           "ref_clip_score"]
