"""Inference: engines, the format registry and the Predictor. See docs/inference.md."""
