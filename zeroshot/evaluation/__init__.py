"""Evaluations on cached features: the few-shot protocol, OOD detection reports and image-text retrieval recall."""
