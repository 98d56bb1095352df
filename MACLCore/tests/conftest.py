"""Shared fixtures: small synthetic phantoms written to disk."""

import pytest

from maclcore.data.phantom import write_phantom_dataset


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory):
    """Three labelled phantoms (nnU-Net layout) and two more for testing: {'train': dir, 'test': dir}."""
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(str(root / "train"), 3, seed=11, prefix="train")
    write_phantom_dataset(str(root / "test"), 2, seed=12, prefix="test")
    return {name: str(root / name) for name in ("train", "test")}
