"""Class-aware crops: foreground rate, crops inside the slice, and inference on the whole slice."""

import torch

from maclcore.data.augment import warp
from maclcore.data.sampling import CropConfig, CropSampler, crop_affines, foreground_rate
from maclcore.inference.predict import predict_slices
from maclcore.models.unet import UNet, UNetConfig


def labels_with_small_class(n=20, size=64):
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[:, 20:40, 20:40] = 3  # large
    labels[::4, 50:53, 50:53] = 1  # tiny, on a quarter of the slices
    labels[:, 18:20, 20:40] = 2
    return labels


def draw_crops(labels, foreground, crop=16, count=256, seed=0):
    sampler = CropSampler(labels, 4, CropConfig(size=crop, foreground=foreground))
    generator = torch.Generator().manual_seed(seed)
    slices, centres = sampler.draw(torch.randint(0, labels.shape[0], (count,), generator=generator), generator)
    theta = torch.eye(2, 3).expand(count, 2, 3)
    crops = warp(labels[slices][:, None].float(), crop_affines(theta, centres, crop, labels.shape[-1]),
                 "nearest", (crop, crop))[:, 0].long()
    return crops


def test_foreground_rate_class_aware():
    labels = labels_with_small_class()
    rates = foreground_rate(draw_crops(labels, foreground=1.0), 4)
    assert rates[0] > 0.3  # the tiny class (0.04% of the voxels) is in about a third of the crops or more
    assert (rates > 0.3).all()
    random_rates = foreground_rate(draw_crops(labels, foreground=0.0), 4)
    assert random_rates[0] < 0.2


def test_identity_crop_matches_slice_region():
    labels = torch.arange(64 * 64).reshape(1, 64, 64).float()
    centre = torch.tensor([[0.0, 0.0]])  # the slice centre
    theta = crop_affines(torch.eye(2, 3)[None], centre, 16, 64)
    crop = warp(labels[:, None], theta, "nearest", (16, 16))[0, 0]
    assert torch.equal(crop, labels[0, 24:40, 24:40])


def test_inference_on_the_whole_slice_on_the_input_grid():
    network = UNet(UNetConfig(num_classes=4, channels=(4, 4, 4, 4, 4)))  # trained on crops of 32
    network.train()
    network(torch.rand(2, 1, 32, 32))
    slices = torch.rand(3, 1, 80, 80)
    probabilities = predict_slices(network, slices, 2, amp=False)
    assert probabilities.shape == (3, 4, 80, 80)


def test_crop_config_checks():
    import pytest
    from maclcore.errors import ConfigError
    with pytest.raises(ConfigError, match="crop"):
        CropConfig(size=20)


def test_flips_mirror_and_keep_draws_without_flips():
    from maclcore.data.augment import AugmentationConfig, random_affines
    plain = AugmentationConfig(rotation=0, translation=0, scale=(1, 1))
    flipped = AugmentationConfig(rotation=0, translation=0, scale=(1, 1), flip=True)
    a = random_affines(64, plain, torch.Generator().manual_seed(1), torch.device("cpu"))
    b = random_affines(64, flipped, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert torch.equal(a, torch.eye(2, 3).expand(64, 2, 3))
    diag = torch.stack([b[:, 0, 0], b[:, 1, 1]], 1)
    assert set(diag.flatten().tolist()) == {-1.0, 1.0}
