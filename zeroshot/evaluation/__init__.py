"""Evaluations on cached features: the few-shot protocol, OOD detection reports, image-text retrieval recall,
multi-label mAP, and the benchmark runner over models x datasets x tasks with its CLIP_benchmark-style tables."""
