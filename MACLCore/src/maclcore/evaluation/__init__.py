"""Metrics, evaluation of prediction folders, and overlay pictures."""
