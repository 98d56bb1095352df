"""Inference on whole volumes."""
