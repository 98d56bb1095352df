"""Preprocessing (METHOD.md) and its exact inverse; the slice dataset."""

import numpy as np
import pytest
import torch

from maclcore.data.dataset import SliceData
from maclcore.data.preprocessing import (PreparedVolume, PreprocessingConfig, normalise_intensity, pad_slices,
                                         padded_size, plan_preprocessing, prepare_volume, restore_probabilities,
                                         stack_slices)
from maclcore.errors import ConfigError, InputError
from maclcore.io.volume import Geometry

EYE = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


def geometry(nx, ny, nz, sx, sy, sz=10.0):
    return Geometry((nx, ny, nz), (sx, sy, sz), (0.0, 0.0, 0.0), EYE)


def test_normalisation_clips_to_percentiles_and_scales_to_unit_range():
    values = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    out = normalise_intensity(values, (1.0, 99.0))
    low, high = np.percentile(values, (1, 99))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert out.ravel()[500] == pytest.approx((500 - low) / (high - low))
    assert np.all(out.ravel()[:9] == 0) and np.all(out.ravel()[-9:] == 1)


def test_constant_volume_normalises_to_zeros():
    assert not normalise_intensity(np.full((2, 3, 3), 7.0)).any()


def test_plan_takes_median_spacing_and_rounds_the_largest_extent_up_to_16():
    geometries = [geometry(100, 80, 5, 1.0, 1.0), geometry(120, 90, 5, 1.5, 1.5), geometry(50, 50, 5, 2.0, 2.0)]
    plan = plan_preprocessing(geometries)
    assert plan.spacing == 1.5
    # Largest resampled extent: 120 px at 1.5 mm stays 120 -> 128.
    assert plan.size == 128
    assert plan_preprocessing(geometries, spacing=3.0).size == 64  # 120 * 1.5 / 3 = 60 -> 64
    with pytest.raises(ConfigError, match="never cropped"):
        plan_preprocessing(geometries, size=96)
    with pytest.raises(ConfigError, match="multiple of 16"):
        PreprocessingConfig(spacing=1.0, size=100)


def test_prepare_resamples_in_plane_only_and_keeps_slices():
    geo = geometry(40, 30, 6, 0.5, 1.0)  # anisotropic in-plane: x 0.5 mm, y 1.0 mm
    volume = np.random.default_rng(0).random(geo.shape).astype(np.float32)
    prepared = prepare_volume("case", volume, geo, PreprocessingConfig(spacing=1.0, size=32))
    assert prepared.image.shape == (6, 30, 20)
    assert prepared.positions().tolist() == pytest.approx([(k + 0.5) / 6 for k in range(6)])


def test_implausible_spacing_is_refused_with_the_name():
    geo = geometry(40, 40, 3, 500.0, 500.0)
    with pytest.raises(InputError, match="big.nii.gz: its in-plane spacing"):
        prepare_volume("big.nii.gz", np.zeros(geo.shape, np.float32), geo, PreprocessingConfig(spacing=1.0, size=32))


def test_padding_is_centred_zero_padding_never_cropping():
    stack = np.ones((2, 5, 7), np.float32)
    out = pad_slices(stack, 16)
    assert out.shape == (2, 16, 16) and out.sum() == stack.sum()
    assert out[0, 5:10, 4:11].all()
    config = PreprocessingConfig(spacing=1.0, size=32)
    assert padded_size((20, 30), config) == 32
    assert padded_size((20, 40), config) == 48  # larger than f_s at inference: pad more, never crop


@pytest.mark.parametrize("spacing", [1.0, 0.5, 2.0])
def test_inverse_puts_a_label_map_back_on_the_input_grid(spacing):
    """One-hot probabilities of a label map, through preprocessing and back, give the same label map."""
    geo = geometry(36, 28, 4, 1.0, 1.0)
    rng = np.random.default_rng(3)
    labels = np.zeros(geo.shape, np.uint8)
    labels[:, 6:20, 8:30] = 1
    labels[:, 10:16, 12:22] = 2
    config = PreprocessingConfig(spacing=spacing, size=96)
    prepared = prepare_volume("c", rng.random(geo.shape).astype(np.float32), geo, config, labels, num_classes=3)
    size = padded_size(prepared.image.shape[-2:], config)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(pad_slices(prepared.label, size)).long(), 3)
    restored = restore_probabilities(onehot.permute(0, 3, 1, 2).float(), prepared.image.shape[-2:], geo)
    assert restored.shape == (4, 3, 28, 36)
    agreement = (restored.argmax(1).numpy() == labels).mean()
    if spacing == 1.0:
        assert agreement == 1.0  # no resampling: exact
    else:
        assert agreement > 0.97  # resampled to another spacing and back: only boundary pixels may move


def test_slice_data_stacks_volumes_with_positions_and_labels():
    volumes = [PreparedVolume(name=f"v{i}", image=np.full((n, 10, 12), i, np.float32),
                              geometry=geometry(12, 10, n, 1, 1), label=np.full((n, 10, 12), i, np.uint8))
               for i, n in enumerate([3, 2])]
    data = SliceData.from_volumes(volumes, 16, with_labels=True)
    assert data.images.shape == (5, 1, 16, 16) and data.labels.shape == (5, 16, 16)
    assert data.volumes.tolist() == [0, 0, 0, 1, 1]
    assert data.positions.tolist() == pytest.approx([1 / 6, 3 / 6, 5 / 6, 1 / 4, 3 / 4])
    subset = data.select_volumes(["v1"])
    assert len(subset) == 2 and subset.names == ["v1"] and subset.volumes.tolist() == [0, 0]
    assert float(subset.images.max()) == 1.0


def test_stacking_pads_every_stack_and_keeps_order_and_dtype():
    """The one pad-and-stack that training data, prediction and suggestion share."""
    first, second = np.ones((2, 5, 7), np.float32), np.full((1, 16, 9), 2.0, np.float32)
    images = stack_slices([first, second], 16)
    assert images.shape == (3, 1, 16, 16) and images.dtype == torch.float32
    assert torch.equal(images[:2, 0], torch.from_numpy(pad_slices(first, 16)))
    assert torch.equal(images[2:, 0], torch.from_numpy(pad_slices(second, 16)))
    labels = stack_slices([np.ones((2, 5, 7), np.uint8)], 16, channel=False)
    assert labels.shape == (2, 16, 16) and labels.dtype == torch.uint8 and int(labels.sum()) == 70
    with pytest.raises(ValueError, match="no slice stacks"):
        stack_slices([], 16)
