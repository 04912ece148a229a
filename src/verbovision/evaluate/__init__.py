"""Evaluation: the metrics (numerically identical to the official toolkits), scoring files, evaluating a model."""
