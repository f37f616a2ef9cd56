"""Device choice and the speed switches that go with it, decided per machine.

`choose_switches` answers, for "auto" settings, from what the hardware can do:

- bf16 autocast only where the hardware computes bf16 natively: a CUDA GPU that supports it, or a CPU
  with avx512_bf16 / amx_bf16 (aarch64: bf16) that oneDNN and ATen are allowed to use
  (ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY can hide it). Elsewhere bf16 is emulated and many times
  slower than float32, so it stays off.
- On a CPU where bf16 is native, a short measurement (a few training steps of a small U-Net in each
  variant, also with channels_last) decides; it runs once per machine and is kept in a JSON file
  (the workspace's `speed.json`) keyed by CPU model, torch version, ISA limits and thread count.
  Without a cache file no measurement runs and native bf16 is taken as faster.
- torch.compile: on for CUDA; off on CPU, where compiling cost more than a whole short retrain.

A config can still force each switch "on" or "off"; `Runtime.reasons` says why each value was taken.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data.atomic import atomic_write_bytes

SWITCHES = ("channels_last", "compile", "bf16")
# oneDNN ISA names in increasing order (ONEDNN_MAX_CPU_ISA); bf16 is native from AVX512_CORE_BF16 on
ONEDNN_ISAS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
    "ALL",
    "DEFAULT",
)
MEASURE_MARGIN = 1.1  # a variant must be this much faster than float32 to be chosen


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


# --------------------------------------------------------------------------------------------
# what the CPU can do
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    aten_capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...
    onednn_max_isa: str  # ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA), "" when not set

    @property
    def native_bf16(self) -> tuple[bool, str]:
        """(bf16 is computed natively, why)."""
        hardware = sorted(self.flags & {"avx512_bf16", "amx_bf16", "bf16"})
        if not hardware:
            return False, "the CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag)"
        if platform.machine().lower() in ("x86_64", "amd64"):
            if not self.aten_capability.upper().startswith("AVX512"):
                return False, f"ATen runs at CPU capability {self.aten_capability} (bf16 would be emulated)"
            isa = self.onednn_max_isa.upper()
            if isa and isa in ONEDNN_ISAS:
                if ONEDNN_ISAS.index(isa) < ONEDNN_ISAS.index("AVX512_CORE_BF16"):
                    return False, f"oneDNN is limited to {isa} (ONEDNN_MAX_CPU_ISA; bf16 would be emulated)"
        return True, f"the CPU computes bf16 natively ({', '.join(hardware)})"


def cpu_info() -> CpuInfo:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "model name" and not model:
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return CpuInfo(model, frozenset(flags), torch.backends.cpu.get_cpu_capability(), isa)


def machine_key(info: CpuInfo) -> str:
    """What a cached measurement is valid for."""
    return (
        f"{info.model} | torch {torch.__version__} | aten {info.aten_capability} | "
        f"onednn {info.onednn_max_isa or 'default'} | threads {torch.get_num_threads()}"
    )


# --------------------------------------------------------------------------------------------
# the measurement (CPU with native bf16 only)
# --------------------------------------------------------------------------------------------
# (channels_last, bf16), from the simplest
MEASURED_VARIANTS = {
    "float32": (False, False),
    "bf16": (False, True),
    "channels_last": (True, False),
    "channels_last + bf16": (True, True),
}


def measure_step_ms(steps: int = 4, size: int = 64, batch: int = 8, rounds: int = 2) -> dict[str, float]:
    """Median ms of a forward + backward + Adam step of a small U-Net in each variant (interleaved)."""
    from model.losses import ce_dice
    from model.unet import UNet

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=g)
    y = torch.randint(0, 3, (batch, size, size), generator=g)
    times: dict[str, list[float]] = {name: [] for name in MEASURED_VARIANTS}
    nets = {}
    for name, (cl, bf16) in MEASURED_VARIANTS.items():
        rt = Runtime(torch.device("cpu"), cl, False, torch.bfloat16 if bf16 else None)
        torch.manual_seed(0)
        net = prepare_model(UNet(1, 3, (16, 32, 64, 128)), rt)
        nets[name] = (rt, net, torch.optim.Adam(net.parameters(), lr=1e-4))
    for round_ in range(rounds + 1):  # round 0 warms every variant's kernels up and is not timed
        for name, (rt, net, opt) in nets.items():
            for _ in range(steps if round_ else 2):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                with autocast(rt):
                    logits = net(prepare_input(x, rt))
                ce_dice(logits.float(), y, num_classes=3).backward()
                opt.step()
                if round_:
                    times[name].append(1000 * (time.perf_counter() - t0))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def pick_fastest(step_ms: dict[str, float]) -> str:
    """The variant to use: the simplest one that no later (more switches) variant beats by MEASURE_MARGIN."""
    best = "float32"
    for name in MEASURED_VARIANTS:
        if step_ms[name] * MEASURE_MARGIN < step_ms[best]:
            best = name
    return best


def measured_choice(cache: Path | None, measure: bool = True) -> dict | None:
    """The cached measurement for this machine; made (and cached) when missing and `measure`."""
    info = cpu_info()
    key = machine_key(info)
    entries = {}
    if cache is not None and cache.is_file():
        try:
            entries = json.loads(cache.read_text())
        except (OSError, ValueError):
            entries = {}
    if key in entries or not measure:
        return entries.get(key)
    ms = measure_step_ms()
    best = pick_fastest(ms)
    entry = {
        "step_ms": {k: round(v, 1) for k, v in ms.items()},
        "best": best,
        "measured_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, json.dumps({**entries, key: entry}, indent=1).encode())
    return entry


# --------------------------------------------------------------------------------------------
# the choice
# --------------------------------------------------------------------------------------------
def choose_switches(
    dev: torch.device, cache: Path | None = None, measure: bool = True, info: CpuInfo | None = None
) -> tuple[dict[str, bool], dict[str, str]]:
    """Defaults for the "auto" switches on `dev` -> (values, why each)."""
    if dev.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        return (
            {"channels_last": False, "compile": True, "bf16": bf16},
            {
                "channels_last": "not needed on CUDA for this network",
                "compile": "CUDA: compiled kernels pay off",
                "bf16": "the GPU supports bf16" if bf16 else "the GPU does not support bf16",
            },
        )
    info = info or cpu_info()
    native, why = info.native_bf16
    values = {"channels_last": False, "compile": False, "bf16": False}
    reasons = {
        "compile": "CPU: compiling costs more than a short retrain gains",
        "channels_last": "CPU: no measured gain",
        "bf16": why,
    }
    if not native:
        reasons["channels_last"] = "CPU: no measured gain without native bf16"
        return values, reasons
    entry = measured_choice(cache, measure) if cache is not None else None
    if entry is None:
        values["bf16"] = True
        reasons["bf16"] = why + "; not measured on this machine yet"
        return values, reasons
    best, ms = entry["best"], entry["step_ms"]
    values["channels_last"], values["bf16"] = MEASURED_VARIANTS[best]
    summary = ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items())
    reasons["bf16"] = f"{why}; measured {entry['measured_utc']} ({summary}): {best} fastest"
    reasons["channels_last"] = f"measured: {best} fastest"
    return values, reasons


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    channels_last: bool
    compile: bool
    autocast_dtype: torch.dtype | None
    reasons: dict[str, str] = field(default_factory=dict, compare=False)

    def describe(self) -> dict:
        return {
            "device": str(self.device),
            "channels_last": self.channels_last,
            "compile": self.compile,
            "autocast": str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else None,
            "why": dict(self.reasons),
        }


def runtime_for(
    device: str = "auto",
    channels_last: str = "auto",
    compile: str = "auto",
    bf16: str = "auto",
    cache: str | Path | None = None,
    measure: bool = True,
) -> Runtime:
    """The runtime for these settings; "auto" ones follow `choose_switches` (measuring into `cache` if needed)."""
    dev = pick_device(device)
    settings = {"channels_last": channels_last, "compile": compile, "bf16": bf16}
    needs_choice = any(v not in ("on", "off") for v in settings.values())
    path = Path(cache) if cache else None
    defaults, why = choose_switches(dev, path, measure) if needs_choice else ({}, {})
    values, reasons = {}, {}
    for name, setting in settings.items():
        if setting in ("on", "off"):
            values[name], reasons[name] = setting == "on", f"forced {setting} by the config"
        else:
            values[name], reasons[name] = defaults[name], why[name]
    dtype = torch.bfloat16 if values["bf16"] else None
    return Runtime(dev, values["channels_last"], values["compile"], dtype, reasons)


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
