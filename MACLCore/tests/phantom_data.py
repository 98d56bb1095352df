"""Helpers shared by the tests: tiny training settings and the nnU-Net folders of a phantom dataset."""

import os

# Small enough that a finetune takes seconds on a 2-core CPU, large enough to learn something.
TINY = ["--channels", "4,8,8,16,16", "--spacing", "6", "--device", "cpu", "--progress", "none"]


def images_of(folder):
    return os.path.join(folder, "imagesTr")


def labels_of(folder):
    return os.path.join(folder, "labelsTr")
