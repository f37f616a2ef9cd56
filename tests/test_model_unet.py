"""The U-Net and its heads: shapes for odd sizes, several widths and class counts, features for the heads."""

import pytest
import torch

from model.heads import GlobalHead, LocalHead
from model.unet import UNet


@pytest.mark.parametrize(
    "widths, classes, size",
    [((8, 16), 2, (35, 50)), ((4, 8, 16), 3, (17, 23)), ((4, 8, 16, 32), 11, (64, 64)), ((6,), 2, (9, 5))],
)
def test_logits_keep_the_input_size(widths, classes, size):
    net = UNet(1, classes, widths)
    x = torch.randn(2, 1, *size)
    logits, feats = net(x, return_features=True)
    assert logits.shape == (2, classes, *size)
    assert feats["decoder"].shape == (2, widths[0], *size)
    assert feats["bottleneck"].shape[:2] == (2, 2 * widths[-1])
    assert net(x).shape == logits.shape


def test_default_widths_are_the_papers():
    net = UNet()
    assert net.widths == (64, 128, 256, 512) and net.bottleneck_channels == 1024


def test_padding_does_not_leak_between_samples():
    """InstanceNorm: a sample's output does not depend on the other samples of the batch."""
    net = UNet(1, 3, (4, 8)).eval()
    a, b = torch.randn(1, 1, 20, 30), torch.randn(1, 1, 20, 30)
    with torch.no_grad():
        together = net(torch.cat([a, b]))
        alone = net(a)
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-5)


def test_heads_shapes_and_unit_norm():
    net = UNet(1, 3, (4, 8, 16))
    _, feats = net(torch.randn(3, 1, 24, 40), return_features=True)
    z = GlobalHead(net.bottleneck_channels, 32)(feats["bottleneck"])
    assert z.shape == (3, 32)
    e = LocalHead(net.feature_channels, 128)(feats["decoder"])
    assert e.shape == (3, 128, 24, 40)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3, 24, 40))


def test_encoder_state_has_only_encoder_weights():
    net = UNet(1, 3, (4, 8))
    keys = net.encoder_state_dict().keys()
    assert keys and all(k.startswith(("encoder.", "bottleneck.")) for k in keys)
    assert not any(k.startswith(("decoder.", "up.", "seg_head.")) for k in keys)


@pytest.mark.parametrize("size", [(9, 14, 11), (16, 16, 16)])
def test_a_3d_unet_keeps_the_volume_size_and_pads_every_axis(size):
    net = UNet(1, 3, (4, 8), dims=3)
    x = torch.randn(2, 1, *size)
    logits, feats = net(x, return_features=True)
    assert logits.shape == (2, 3, *size) and feats["decoder"].shape == (2, 4, *size)
    assert all(
        isinstance(m, torch.nn.Conv3d)
        for m in net.modules()
        if isinstance(m, torch.nn.modules.conv._ConvNd) and not isinstance(m, torch.nn.ConvTranspose3d)
    )
    padded, h, w = net.pad_input(x)
    assert (h, w) == size[-2:] and all(n % 4 == 0 and n >= 8 for n in padded.shape[-3:])


def test_a_2d_unet_keeps_its_weight_names_and_refuses_other_dims():
    names = sorted(UNet(3, 3, (4, 8)).state_dict())
    assert names[:3] == ["bottleneck.0.weight", "bottleneck.1.bias", "bottleneck.1.weight"]
    assert all(t.dim() == 4 for k, t in UNet(3, 3, (4, 8)).state_dict().items() if k.endswith("0.weight"))
    with pytest.raises(ValueError, match="dims"):
        UNet(1, 3, (4, 8), dims=1)
