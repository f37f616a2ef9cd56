"""Float32 stand-ins for bf16 autocast: convolution operands rounded (bf16="rounded"), and operands, outputs
and gradients rounded where autocast stores bf16 (bf16="emulated")."""

import pytest
import torch
import torch.nn.functional as F

from model import device
from model.bf16_rounding import EmulateBf16Autocast, EmulateBf16Everywhere, RoundConvolutionsToBf16, round_to_bf16
from model.config import TrainConfig
from model.unet import UNet


def _naive_bf16(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to bf16 by hand: keep the top 16 bits, round to nearest, ties to even."""
    bits = x.detach().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    lsb = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + lsb) >> 16) << 16
    return rounded.to(torch.int64).where(rounded < 2**31, rounded - 2**32).to(torch.int32).view(torch.float32)


def test_rounding_matches_a_naive_round_to_nearest_even():
    torch.manual_seed(0)
    x = torch.randn(10_000) * torch.logspace(-6, 6, 10_000)
    x = torch.cat([x, torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8)])])  # exact ties
    assert torch.equal(round_to_bf16(x), _naive_bf16(x))
    assert not torch.equal(round_to_bf16(x), x)


def test_convolutions_compute_on_rounded_operands_in_float32():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 10)
    conv, up = torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ConvTranspose2d(3, 4, 2, stride=2)
    with RoundConvolutionsToBf16():
        y, z = conv(x), up(x)
    assert y.dtype == torch.float32
    r = _naive_bf16
    assert torch.equal(y, F.conv2d(r(x), r(conv.weight), r(conv.bias), padding=1))
    assert torch.equal(z, F.conv_transpose2d(r(x), r(up.weight), r(up.bias), stride=2))
    assert not torch.equal(y, conv(x))  # outside the mode nothing is rounded


def test_gradients_pass_the_rounding_unchanged():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    with RoundConvolutionsToBf16():
        (conv(x) ** 2).sum().backward()
    # reference: the same loss with the rounded operands as plain float32 leaves
    xr, wr, br = (_naive_bf16(t).requires_grad_() for t in (x, conv.weight, conv.bias))
    (F.conv2d(xr, wr, br, padding=1) ** 2).sum().backward()
    assert torch.allclose(x.grad, xr.grad) and torch.allclose(conv.weight.grad, wr.grad)
    assert torch.allclose(conv.bias.grad, br.grad)
    assert conv.weight.grad.dtype == torch.float32


def _unet_step(ctx):
    torch.manual_seed(0)
    net, x = UNet(1, 3, (8, 16, 32)), torch.randn(2, 1, 32, 32)
    with ctx:
        out = net(x)
    out.float().log_softmax(1)[:, 1].mean().backward()
    return out.float().detach(), torch.cat([p.grad.flatten() for p in net.parameters()])


def test_rounding_every_op_tracks_a_bf16_autocast_step_closest():
    native_out, native_grad = _unet_step(torch.autocast("cpu", dtype=torch.bfloat16))

    def distance(ctx):
        out, grad = _unet_step(ctx)
        return float((out - native_out).norm() / native_out.norm()), float(
            (grad - native_grad).norm() / native_grad.norm()
        )

    everywhere, layers = distance(EmulateBf16Everywhere()), distance(EmulateBf16Autocast())
    assert everywhere[0] < layers[0] and everywhere[1] < layers[1]
    # float32's gradient is about 0.05 from autocast's, rounding at the layers alone 0.04, every op 0.01-0.03
    # (autocast's own bf16 kernels differ between CPUs with and without native bf16)
    assert everywhere[1] < 0.75 * layers[1]


def test_rounding_every_op_follows_what_autocast_would_hold_in_bf16():
    torch.manual_seed(0)
    x, lin = torch.randn(16, 8), torch.nn.Linear(8, 8)
    with EmulateBf16Everywhere():
        augmented = x * 1.001  # float32 in, float32 out, as under autocast
        h = lin(x)  # bf16 under autocast
        activated, normalised = torch.tanh(h), F.layer_norm(h, (8,))  # bf16 in, bf16 out
        mixed = h + augmented  # bf16 + float32 promotes to float32
        same = torch.relu_(h)
    r = _naive_bf16
    assert torch.equal(augmented, x * 1.001) and not torch.equal(augmented, r(augmented))
    for t in (activated, normalised):
        assert torch.equal(t, r(t))
    assert not torch.equal(mixed, r(mixed))
    assert same is h


@pytest.mark.parametrize("mode", ["rounded", "emulated", "emulated-all"])
def test_runtime_stand_in_trains_a_unet_in_float32(mode):
    rt = device.runtime_for("cpu", channels_last="off", compile="off", bf16=mode)
    assert rt.bf16_rounding == mode and rt.autocast_dtype is None
    assert rt.describe()["bf16_rounding"] == mode and mode in rt.describe()["why"]["bf16"]
    net = UNet(1, 2, (4, 8))
    x = torch.randn(2, 1, 16, 16)
    with device.autocast(rt):
        out = net(x)
    assert out.dtype == torch.float32 and not torch.equal(out, net(x))
    # only the emulations round outputs: the segmentation head's logits land on bf16 values
    assert torch.equal(out, _naive_bf16(out)) == mode.startswith("emulated")
    out.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert not device.runtime_for("cpu", compile="off", bf16="off").bf16_rounding


def test_emulation_rounds_operands_and_outputs_of_convolutions_linear_layers_and_products():
    torch.manual_seed(0)
    x, a, b = torch.randn(2, 3, 12, 10), torch.randn(7, 9), torch.randn(9, 5)
    conv, up, lin = (
        torch.nn.Conv2d(3, 5, 3, padding=1),
        torch.nn.ConvTranspose2d(3, 4, 2, stride=2),
        torch.nn.Linear(9, 4),
    )
    with EmulateBf16Autocast():
        y, z, l, m, relu = conv(x), up(x), lin(a), a @ b, torch.relu(a)
    r = _naive_bf16
    assert y.dtype == z.dtype == l.dtype == m.dtype == torch.float32
    assert torch.equal(y, r(F.conv2d(r(x), r(conv.weight), r(conv.bias), padding=1)))
    assert torch.equal(z, r(F.conv_transpose2d(r(x), r(up.weight), r(up.bias), stride=2)))
    assert torch.equal(l, r(F.linear(r(a), r(lin.weight), r(lin.bias))))
    assert torch.equal(m, r(r(a) @ r(b)))
    assert torch.equal(relu, torch.relu(a))  # elementwise ops are left alone
    assert not torch.equal(m, a @ b)


def test_emulation_rounds_the_gradients_where_it_rounds_the_values():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    with EmulateBf16Autocast():
        out = conv(x)
    (out**2).sum().backward()
    # reference: conv in float32 on rounded leaves, fed the rounded output gradient; leaf gradients rounded
    r = _naive_bf16
    xr, wr, br = (r(t).requires_grad_() for t in (x, conv.weight, conv.bias))
    y = F.conv2d(xr, wr, br, padding=1)
    y.backward(r(2 * r(y.detach())))
    assert torch.equal(x.grad, r(xr.grad)) and torch.equal(conv.weight.grad, r(wr.grad))
    assert torch.equal(conv.bias.grad, r(br.grad))
    assert not torch.equal(x.grad, xr.grad)


def test_emulation_matches_bf16_autocast_on_a_convolution():
    torch.manual_seed(0)
    x, conv = torch.randn(2, 8, 16, 16), torch.nn.Conv2d(8, 16, 3, padding=1)
    with torch.no_grad(), EmulateBf16Autocast():
        emulated = conv(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        native = conv(x)
    assert native.dtype == torch.bfloat16
    # both sum float32 products of bf16 operands and round once; only the summation order may differ
    assert torch.allclose(emulated, native.float(), rtol=2**-8, atol=1e-6)
    assert (emulated == native.float()).float().mean() > 0.99


def test_config_accepts_the_stand_ins_and_names_the_choices():
    assert TrainConfig(bf16="rounded").bf16 == "rounded"
    assert TrainConfig(bf16="emulated").bf16 == "emulated"
    with pytest.raises(ValueError, match="bf16 must be one of .*rounded.*emulated"):
        TrainConfig(bf16="round")
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainConfig(compile="rounded")
