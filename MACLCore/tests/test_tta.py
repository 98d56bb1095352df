"""Test-time augmentation: the mean over the in-plane flips, which makes the prediction exactly flip-equivariant."""

import torch

from maclcore.inference.predict import TTA_FLIPS, predict_slices
from maclcore.models.unet import UNet, UNetConfig


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(UNetConfig(channels=(4, 8, 8, 16, 16))).eval()


def test_tta_is_the_mean_of_the_flipped_predictions_flipped_back():
    net, images = network(), torch.rand(3, 1, 32, 32)
    expected = torch.stack([predict_slices(net, images.flip(d) if d else images, amp=False).flip(d) if d
                            else predict_slices(net, images, amp=False) for d in map(tuple, TTA_FLIPS)]).mean(0)
    torch.testing.assert_close(predict_slices(net, images, amp=False, tta=True), expected)


def test_with_tta_a_flipped_slice_gets_the_flipped_prediction():
    net, images = network(), torch.rand(2, 1, 32, 32)
    for dims in ((-1,), (-2,)):
        plain = predict_slices(net, images.flip(dims), amp=False)
        assert not torch.allclose(plain, predict_slices(net, images, amp=False).flip(dims), atol=1e-4)  # not so plain
        torch.testing.assert_close(predict_slices(net, images.flip(dims), amp=False, tta=True),
                                   predict_slices(net, images, amp=False, tta=True).flip(dims), atol=1e-5, rtol=1e-4)


def test_tta_probabilities_sum_to_one_in_batches_of_any_size():
    net, images = network(), torch.rand(5, 1, 32, 32)
    probs = predict_slices(net, images, batch_size=2, amp=False, tta=True)
    assert probs.shape == (5, 4, 32, 32)
    torch.testing.assert_close(probs.sum(1), torch.ones(5, 32, 32))
    torch.testing.assert_close(probs, predict_slices(net, images, batch_size=5, amp=False, tta=True))


def test_by_default_flips_are_averaged_only_for_models_trained_with_flips(tmp_path):
    """The default (tta=None) follows the model file: its finetuning's augmentation drew flips or not."""
    from dataclasses import replace

    import numpy as np

    from maclcore.config import to_dict
    from maclcore.inference.predict import load_segmentation_model, predict_volume, trained_with_flips
    from maclcore.io.volume import Geometry, Volume
    from maclcore.training.finetune import FinetuneConfig
    from reliability_fixtures import save_tiny_model, tiny_state

    state = tiny_state()
    state["head.bias"].zero_()  # then the labels vary from pixel to pixel, and flips change some
    state["head.weight"] = torch.randn(state["head.weight"].shape, generator=torch.Generator().manual_seed(0))
    model = load_segmentation_model(save_tiny_model(tmp_path / "m.pt", state, spacing=2.0))
    grid = Geometry(size=(40, 36, 3), spacing=(1.5, 1.5, 8.0), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    volume = Volume(np.random.default_rng(0).normal(size=grid.shape).astype(np.float32), grid, "v")
    plain = predict_volume(model, volume, postprocess=False, tta=False)
    flipped = predict_volume(model, volume, postprocess=False, tta=True)
    assert (plain != flipped).any()  # so the comparisons below tell the two apart

    assert not trained_with_flips(model)  # a file that does not say: plain
    np.testing.assert_array_equal(predict_volume(model, volume, postprocess=False), plain)
    recipe = FinetuneConfig()
    assert recipe.augmentation.flip  # the default recipe flips, so its models get TTA
    no_flips = replace(recipe, augmentation=replace(recipe.augmentation, flip=False))
    no_augmentation = replace(recipe, augmentation=replace(recipe.augmentation, enabled=False))
    for config, expected in ((recipe, flipped), (no_flips, plain), (no_augmentation, plain)):
        model.info["training"] = {"config": to_dict(config)}
        np.testing.assert_array_equal(predict_volume(model, volume, postprocess=False), expected)
