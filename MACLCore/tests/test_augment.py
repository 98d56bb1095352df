"""Batched augmentation on the device: the same transform for images and labels."""

import math

import pytest
import torch

from maclcore.data.augment import (AugmentationConfig, augment_batch, draw_augmentation, random_affines,
                                   random_intensity, warp)


def test_disabled_augmentation_is_the_identity():
    config = AugmentationConfig(enabled=False)
    images = torch.rand(3, 1, 16, 16)
    labels = torch.randint(0, 4, (3, 16, 16), dtype=torch.uint8)
    augmentation = draw_augmentation(3, torch.arange(3), config, torch.Generator().manual_seed(0), torch.device("cpu"))
    out_images, out_labels = augment_batch(images, labels, augmentation)
    torch.testing.assert_close(out_images, images)
    assert torch.equal(out_labels, labels)


def test_a_known_rotation_moves_a_point_where_expected():
    image = torch.zeros(1, 1, 33, 33)
    image[0, 0, 16, 26] = 1.0  # 10 px right of the centre
    angle = math.pi / 2
    theta = torch.tensor([[[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]]])
    out = warp(image, theta, "nearest")
    y, x = divmod(int(out.flatten().argmax()), 33)
    assert (y, x) == (6, 16)  # rotated by 90 degrees about the centre


def test_images_and_labels_get_the_same_transform_and_labels_stay_labels():
    torch.manual_seed(0)
    labels = torch.zeros(4, 32, 32, dtype=torch.uint8)
    labels[:, 8:24, 10:20] = 2
    labels[:, 12:18, 12:16] = 3
    images = labels[:, None].float() / 3
    config = AugmentationConfig(gamma=(1.0, 1.0), gain=(1.0, 1.0))
    augmentation = draw_augmentation(4, torch.arange(4), config, torch.Generator().manual_seed(1), torch.device("cpu"))
    out_images, out_labels = augment_batch(images, labels, augmentation)
    assert set(out_labels.unique().tolist()) <= {0, 2, 3}
    # Away from edges, the bilinearly warped image equals the warped labels / 3.
    inside = (out_images[:, 0] * 3 - out_labels.float()).abs() < 1e-4
    assert inside.float().mean() > 0.9
    assert not torch.equal(out_labels, labels)


def test_draws_are_reproducible_and_global_rows_are_consistent():
    config = AugmentationConfig()
    cpu = torch.device("cpu")
    full = draw_augmentation(8, torch.arange(8), config, torch.Generator().manual_seed(5), cpu)
    part = draw_augmentation(8, torch.tensor([2, 3]), config, torch.Generator().manual_seed(5), cpu)
    torch.testing.assert_close(part.theta, full.theta[2:4])
    torch.testing.assert_close(part.intensity, full.intensity[2:4])


def test_parameter_ranges_are_respected():
    config = AugmentationConfig(rotation=10, translation=0.05, scale=(0.9, 1.1), gamma=(0.8, 1.25), gain=(0.95, 1.05))
    theta = random_affines(2000, config, torch.Generator().manual_seed(0), torch.device("cpu"))
    linear = theta[:, :, :2]
    zoom = 1 / linear[:, 0].norm(dim=1)
    angle = torch.atan2(linear[:, 1, 0], linear[:, 0, 0])
    assert zoom.min() >= 0.9 - 1e-5 and zoom.max() <= 1.1 + 1e-5
    assert angle.abs().max() <= math.radians(10) + 1e-5
    assert theta[:, :, 2].abs().max() <= 0.1 + 1e-6
    intensity = random_intensity(2000, config, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert intensity[:, 0].min() >= 0.8 - 1e-6 and intensity[:, 0].max() <= 1.25 + 1e-6


def test_invalid_ranges_are_refused():
    from maclcore.errors import ConfigError

    with pytest.raises(ConfigError, match="gamma"):
        AugmentationConfig(gamma=(1.5, 1.0))
