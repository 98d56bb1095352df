"""Preprocessing, slice datasets, batched augmentation and synthetic phantoms."""
