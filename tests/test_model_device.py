"""Device selection and the speed switches, exercised on a CPU-only machine."""

import pytest
import torch

from model import device
from model.unet import UNet


def test_auto_picks_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.pick_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.pick_device("auto").type == "cpu"


def test_cuda_requested_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        device.pick_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        device.pick_device("tpu")


def test_cuda_runtime_uses_bf16_and_compile(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    rt = device.runtime_for("auto")
    assert rt.device.type == "cuda" and rt.compile and rt.autocast_dtype == torch.bfloat16
    assert device.runtime_for("auto", compile="off", bf16="off").autocast_dtype is None


def test_cpu_runtime_follows_the_measured_defaults(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rt = device.runtime_for("auto")
    assert rt.device.type == "cpu"
    assert rt.channels_last == device.CPU_DEFAULTS["channels_last"]
    assert rt.compile == device.CPU_DEFAULTS["compile"]
    assert (rt.autocast_dtype is not None) == device.CPU_DEFAULTS["bf16"]
    forced = device.runtime_for("cpu", channels_last="on", compile="off", bf16="on")
    assert forced.channels_last and not forced.compile and forced.autocast_dtype == torch.bfloat16


def test_bf16_autocast_and_channels_last_train_step_on_cpu():
    rt = device.runtime_for("cpu", channels_last="on", compile="off", bf16="on")
    net = device.prepare_model(UNet(1, 3, (4, 8)), rt)
    x = device.prepare_input(torch.randn(2, 1, 16, 24), rt)
    assert x.is_contiguous(memory_format=torch.channels_last)
    with device.autocast(rt):
        logits = net(x)
    assert logits.dtype == torch.bfloat16 and logits.shape == (2, 3, 16, 24)
    logits.float().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters() if p.requires_grad)


def test_no_autocast_means_float32():
    rt = device.runtime_for("cpu", bf16="off", channels_last="off", compile="off")
    with device.autocast(rt):
        out = UNet(1, 2, (4,))(torch.randn(1, 1, 8, 8))
    assert out.dtype == torch.float32
