"""U-Net and MACL network: shapes, parameter names for weight transfer, gradients."""

import pytest
import torch

from maclcore.errors import ConfigError
from maclcore.losses.mlc import MLCLossConfig, mlc_loss
from maclcore.models.macl import MACLNet, MACLNetConfig
from maclcore.models.unet import UNet, UNetConfig, transferable_prefixes

SMALL = (4, 8, 8, 16, 16)


@pytest.mark.parametrize("size", [16, 48, 80])
def test_unet_output_shape(size):
    net = UNet(UNetConfig(num_classes=4, channels=SMALL))
    assert net(torch.rand(2, 1, size, size)).shape == (2, 4, size, size)


def test_unet_refuses_sizes_not_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        UNet(UNetConfig(channels=SMALL))(torch.rand(1, 1, 40, 40))


def test_unet_config_validates_widths():
    with pytest.raises(ConfigError, match="five positive widths"):
        UNetConfig(channels=(8, 16))


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("size", [16, 48, 64])
def test_macl_shapes_for_sizes_and_depths(depth, size):
    net = MACLNet(UNetConfig(channels=SMALL), MACLNetConfig(decoder_depth=depth, projection_dim=6, hidden_dim=7))
    out = net(torch.rand(4, 1, size, size))
    padded = -(-size // (16 * 2 ** depth)) * 16 * 2 ** depth  # inputs are padded to a multiple of 16 * 2**depth
    s = padded // 16
    assert out["z_g"].shape == out["zt_g"].shape == (4, 6)
    assert out["z_l"].shape == out["zt_l"].shape == (4, 6, s, s)
    assert out["y_aux"].shape == (4, SMALL[4], s, s)
    assert out["y"].shape == (4, SMALL[4], s // 2 ** depth, s // 2 ** depth)


def test_macl_parameter_names_match_the_unet_for_transfer():
    unet = set(UNet(UNetConfig(channels=SMALL)).state_dict())
    for depth in range(5):
        macl = set(MACLNet(UNetConfig(channels=SMALL), MACLNetConfig(decoder_depth=depth)).state_dict())
        transferable = {n for n in macl if n.startswith(transferable_prefixes(depth))}
        assert transferable <= unet
        assert {n for n in unet if n.startswith(transferable_prefixes(depth))} == transferable
        assert not any(n.startswith(f"decoder.blocks.{depth}.") for n in macl)


def test_gradients_reach_encoder_decoder_and_all_projectors():
    torch.manual_seed(0)
    net = MACLNet(UNetConfig(channels=SMALL), MACLNetConfig(decoder_depth=2, projection_dim=8, hidden_dim=8))
    views = torch.rand(8, 1, 64, 64)
    positions = torch.rand(4).repeat(2)
    ids = torch.arange(4).repeat(2)
    terms = mlc_loss(net(views), positions, ids, MLCLossConfig(), scale=4)
    terms["loss"].backward()
    groups = {}
    for name, param in net.named_parameters():
        parts = name.split(".")
        key = ".".join(parts[:3]) if parts[0] == "decoder" else ".".join(parts[:2]) if parts[0] in ("dominant", "auxiliary") else parts[0]
        groups.setdefault(key, []).append(param.grad is not None and bool(param.grad.abs().sum() > 0))
    expected = {"encoder", "decoder.blocks.0", "decoder.blocks.1", "dominant.instance", "dominant.pixel",
                "auxiliary.instance", "auxiliary.pixel"}
    assert set(groups) == expected
    for key, flags in groups.items():
        assert all(flags), f"no gradient in {key}"


def test_symmetric_variant_shares_projectors_and_needs_no_decoder():
    net = MACLNet(UNetConfig(channels=SMALL), MACLNetConfig(decoder_depth=0, symmetric=True))
    assert net.auxiliary is None
    assert not any(name.startswith("auxiliary.") for name in net.state_dict())
    out = net(torch.rand(2, 1, 32, 32))
    assert torch.equal(out["z_g"], out["zt_g"])
    with pytest.raises(ConfigError):
        MACLNetConfig(decoder_depth=2, symmetric=True)


def test_only_the_heads_the_loss_needs_are_built():
    from maclcore.training.pretrain import pretrain_config

    for variant, instance, pixel in [("macl", True, True), ("no-dense", True, False), ("pcl", True, False)]:
        network = pretrain_config(variant).network
        assert (network.instance_head, network.pixel_head) == (instance, pixel)
        out = MACLNet(UNetConfig(channels=SMALL), network)(torch.rand(2, 1, 64, 64))
        assert ("z_g" in out, "z_l" in out) == (instance, pixel)
