"""Training in an embedding space: the alignment trainer, distillation into students, the CLIPN-style negation map."""
