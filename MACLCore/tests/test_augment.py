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


def test_contrast_and_blur_are_drawn_only_when_set_and_do_what_they_say():
    from maclcore.data.augment import adjust_intensity, gaussian_blur

    cpu = torch.device("cpu")
    plain = random_intensity(500, AugmentationConfig(), torch.Generator().manual_seed(3), cpu)
    more = random_intensity(500, AugmentationConfig(contrast=(0.75, 1.25), blur=1.0), torch.Generator().manual_seed(3), cpu)
    assert torch.equal(plain[:, :2], more[:, :2])  # gamma and gain as drawn before: old runs draw the same
    assert (plain[:, 2] == 1).all() and (plain[:, 3] == 0).all()
    assert more[:, 2].min() >= 0.75 - 1e-6 and more[:, 2].max() <= 1.25 + 1e-6
    blurred = more[:, 3] > 0
    assert 0.25 < blurred.float().mean() < 0.42 and more[blurred, 3].min() >= 0.5 and more[:, 3].max() <= 1.0 + 1e-6
    with pytest.raises(Exception, match="blur"):
        AugmentationConfig(blur=2.0)

    images = torch.rand(3, 1, 16, 16)
    assert torch.allclose(gaussian_blur(images, torch.zeros(3)), images, atol=1e-6)  # sigma 0: unchanged
    soft = gaussian_blur(images, torch.tensor([0.0, 1.0, 1.5]))
    assert torch.equal(soft[0], images[0]) or torch.allclose(soft[0], images[0], atol=1e-6)
    assert soft[2].std() < soft[1].std() < images[1].std()  # wider blur, smoother noise
    assert torch.allclose(soft.mean((1, 2, 3)), images.mean((1, 2, 3)), atol=0.02)  # brightness kept
    params = torch.tensor([[1.0, 1.0, 2.0, 0.0]] * 3)
    stretched = adjust_intensity(images, params, contrast=True)
    assert torch.allclose(stretched.mean((1, 2, 3)), images.mean((1, 2, 3)), atol=1e-5)
    assert torch.allclose(stretched.std((1, 2, 3)), 2 * images.std((1, 2, 3)), rtol=1e-4)
    assert torch.equal(adjust_intensity(images, params), images)  # without the flags: gamma and gain only
