"""Device choice and the speed switches that go with it.

CUDA: bf16 autocast (when the GPU supports it) and `torch.compile`.
CPU: the switches default to what bench/cpu_speedups.py measured fastest for the `cpu` preset's
training step on the project's 2-core machine (docs/benchmarks/cpu_speedups.md); a config can force
each one "on" or "off".
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

# Measured by bench/cpu_speedups.py (docs/benchmarks/cpu_speedups.md).
CPU_DEFAULTS = {"channels_last": False, "compile": False, "bf16": True}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
        return torch.device("cuda")
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    channels_last: bool
    compile: bool
    autocast_dtype: torch.dtype | None

    def describe(self) -> dict:
        return {
            "device": str(self.device),
            "channels_last": self.channels_last,
            "compile": self.compile,
            "autocast": str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else None,
        }


def _choose(setting: str, default: bool) -> bool:
    return {"on": True, "off": False}.get(setting, default)


def runtime_for(device: str = "auto", channels_last: str = "auto", compile: str = "auto", bf16: str = "auto") -> Runtime:
    dev = pick_device(device)
    if dev.type == "cuda":
        defaults = {"channels_last": False, "compile": True, "bf16": torch.cuda.is_bf16_supported()}
    else:
        defaults = CPU_DEFAULTS
    use_bf16 = _choose(bf16, defaults["bf16"])
    return Runtime(
        device=dev,
        channels_last=_choose(channels_last, defaults["channels_last"]),
        compile=_choose(compile, defaults["compile"]),
        autocast_dtype=torch.bfloat16 if use_bf16 else None,
    )


def autocast(runtime: Runtime):
    if runtime.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=runtime.autocast_dtype)


def prepare_model(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """Move the model; returns the module to call (compiled when asked). Save weights from `model`."""
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return torch.compile(model) if runtime.compile else model


def prepare_input(x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    x = x.to(runtime.device, non_blocking=True).float()
    return x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x
