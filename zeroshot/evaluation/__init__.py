"""Evaluations on cached features: the few-shot protocol and OOD detection reports."""
