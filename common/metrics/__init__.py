"""Metrics: Fréchet distance / KID with pluggable features, improved precision/recall, toy-distribution metrics."""
