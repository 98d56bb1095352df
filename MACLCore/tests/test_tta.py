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
