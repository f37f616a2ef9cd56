"""Measure CPU speed switches for the `cpu` preset's training steps; writes docs/benchmarks/cpu_speedups.md.

    .venv/bin/python -m bench.cpu_speedups [--steps 12] [--rounds 3]

Variants: float32 baseline, channels_last, bf16 autocast, both, torch.compile (+bf16) (`--variants` picks
some; the baseline always runs). Each variant runs a fine-tune step (CE + Dice, batch = finetune_batch) and a
local-stage step (two views, local contrastive loss) at 64x64 (the hippocampus slice size) with the cpu
preset's widths. Variants are interleaved over several rounds and the median step time is kept, so a busy
machine biases no one.
This is the long version of the measurement model/device.py makes once per machine (and keeps in the
workspace's speed.json) to choose the switches; it also covers torch.compile.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from model.config import preset  # noqa: E402
from model.device import autocast, prepare_input, prepare_model, runtime_for  # noqa: E402
from model.heads import LocalHead  # noqa: E402
from model.losses import ce_dice, local_contrastive  # noqa: E402
from model.unet import UNet  # noqa: E402

VARIANTS = {
    "float32 (baseline)": dict(channels_last="off", compile="off", bf16="off"),
    "channels_last": dict(channels_last="on", compile="off", bf16="off"),
    "bf16 autocast": dict(channels_last="off", compile="off", bf16="on"),
    "channels_last + bf16": dict(channels_last="on", compile="off", bf16="on"),
    "torch.compile": dict(channels_last="off", compile="on", bf16="off"),
    "torch.compile + bf16": dict(channels_last="off", compile="on", bf16="on"),
}
BASELINE = "float32 (baseline)"


class Bench:
    def __init__(self, switches: dict, size: int):
        cfg = preset("cpu")
        self.cfg, self.rt = cfg, runtime_for("cpu", **switches)
        torch.manual_seed(0)
        self.unet = UNet(1, 3, cfg.widths)
        self.head = LocalHead(self.unet.feature_channels, cfg.local_proj_dim)
        if self.rt.channels_last:
            self.head.to(memory_format=torch.channels_last)
        self.net = prepare_model(self.unet, self.rt)
        self.opt = torch.optim.Adam(list(self.unet.parameters()) + list(self.head.parameters()), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        self.x_ft = torch.randn(cfg.finetune_batch, 1, size, size, generator=g)
        self.y_ft = torch.randint(0, 3, (cfg.finetune_batch, size, size), generator=g)
        self.x_lc = torch.randn(cfg.local_batch, 1, size, size, generator=g)
        self.y_lc = torch.randint(0, 3, (cfg.local_batch, size, size), generator=g)
        self.compile_s = 0.0
        if self.rt.compile:  # the first calls compile; report that cost separately
            t0 = time.perf_counter()
            self.finetune_step(), self.local_step()
            self.finetune_step(), self.local_step()
            self.compile_s = time.perf_counter() - t0

    def finetune_step(self) -> float:
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.rt):
            logits = self.net(prepare_input(self.x_ft, self.rt))
        ce_dice(logits.float(), self.y_ft, num_classes=3).backward()
        self.opt.step()
        return time.perf_counter() - t0

    def local_step(self) -> float:
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.rt):
            _, f1 = self.net(prepare_input(self.x_lc, self.rt), return_features=True)
            _, f2 = self.net(prepare_input(self.x_lc + 0.1, self.rt), return_features=True)
            e1, e2 = self.head(f1["decoder"]), self.head(f2["decoder"])
        cfg = self.cfg
        local_contrastive(
            e1.float(), e2.float(), self.y_lc, cfg.local_temperature, cfg.local_mode, cfg.local_stride, cfg.local_block
        ).backward()
        self.opt.step()
        return time.perf_counter() - t0


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        bf16 = "avx512_bf16" in flags
    except OSError:
        bf16 = False
    return (
        f"{cpu}, {torch.get_num_threads()} torch threads ({platform.machine()}), avx512_bf16={'yes' if bf16 else 'no'}, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "cpu_speedups.md")
    parser.add_argument("--variants", default="", help="comma-separated names of VARIANTS (default: all)")
    args = parser.parse_args()
    names = (
        [BASELINE, *(n for n in args.variants.split(",") if n and n != BASELINE)] if args.variants else list(VARIANTS)
    )
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")

    loads = [load_average()]
    benches = {name: Bench(VARIANTS[name], args.size) for name in names}
    times = {name: {"finetune": [], "local": []} for name in names}
    for _ in range(args.rounds):
        for name, b in benches.items():
            b.finetune_step(), b.local_step()  # warm-up after switching variants
            times[name]["finetune"] += [b.finetune_step() for _ in range(args.steps)]
            times[name]["local"] += [b.local_step() for _ in range(args.steps)]
        loads.append(load_average())

    cfg = preset("cpu")
    base = {k: statistics.median(v) for k, v in times[BASELINE].items()}
    rows = []
    for name in names:
        ft, lc = statistics.median(times[name]["finetune"]), statistics.median(times[name]["local"])
        rows.append(
            f"| {name} | {1000 * ft:.0f} | {base['finetune'] / ft:.2f}x | {1000 * lc:.0f} | "
            f"{base['local'] / lc:.2f}x | {benches[name].compile_s:.0f} |"
        )
    # what wins over a whole cpu-preset run: compile must also pay for its compile time
    run_steps = {
        "finetune": cfg.finetune_epochs * cfg.finetune_steps,
        "local": cfg.local_epochs * cfg.local_steps + cfg.global_epochs * cfg.global_steps,
    }
    run_s = {
        name: benches[name].compile_s + sum(run_steps[k] * statistics.median(times[name][k]) for k in run_steps)
        for name in names
    }
    best = min(run_s, key=run_s.get)
    from model.device import choose_switches

    chosen, why = choose_switches(torch.device("cpu"))

    command = "python -m bench.cpu_speedups " + " ".join(sys.argv[1:])
    text = "\n".join(
        [
            "# CPU speed switches for the `cpu` preset",
            "",
            f"Machine: {machine()}.  ",
            f"Commit: {commit()}. Command: `{command.strip()}`.  ",
            f"Load average (1 min) before/after each round: {', '.join(loads)} (other jobs share these 2 cores).",
            "",
            f"U-Net widths {'-'.join(map(str, cfg.widths))}, {args.size}x{args.size} slices, 3 classes. Fine-tune step: "
            f"batch {cfg.finetune_batch}, CE + Dice. Local step: batch {cfg.local_batch}, two views, "
            f"`{cfg.local_mode}` local contrastive loss. Forward + backward + Adam; median of "
            f"{args.rounds} interleaved rounds x {args.steps} steps.",
            "",
            "| variant | fine-tune step (ms) | speed-up | local step (ms) | speed-up | compile time (s) |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Estimated time of one cpu-preset run ({run_steps['finetune']} fine-tune steps + {run_steps['local']} "
            "local/global steps, counted at the local step's cost, + compile time): "
            + ", ".join(f"{name} {s:.0f} s" for name, s in run_s.items())
            + ".",
            "",
            f"Fastest here: **{best}**. model/device.py chooses on this machine (without a cached measurement): "
            f"`{chosen}` because {why['bf16']}.",
            "",
            "Compile time is the first calls of each graph in this process; with a cold inductor cache "
            "(first run on a machine) it was 130-190 s per variant on this machine, more than a whole fine-tune refresh.",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
