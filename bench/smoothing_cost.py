"""What smoothing along the slicing axis (`predict_smooth_mm`) adds to predicting a volume, on this machine.

    python -m bench.smoothing_cost [--shapes 35x51x35,60x512x512] [--repeats 3] [--threads 1]

The `cpu` preset's U-Net with random weights (inference time does not depend on the weights) predicts a
random volume of each shape along axis 0 with the preset's chunking, mirrors off, with the preset's
`predict_smooth_mm` on a 1 mm grid and without, interleaved, so both see the same machine load. Prints the
median time of each and their ratio.
Run it again under `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2` to see a CPU without AVX-512.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench.common import machine
from model.config import preset
from model.device import runtime_for
from model.inference import predict_array, smoothing_slices
from model.slices import training_size
from model.unet import UNet


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(x) for x in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 1:
        raise SystemExit(f"a shape is three sizes like 35x51x35, got {text!r}")
    return parts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="35x51x35,60x512x512")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = preset("cpu")
    runtime = runtime_for("cpu", "auto", "off", "off")
    net = UNet(cfg.in_channels, 3, cfg.widths, cfg.bottleneck).eval()
    print(f"machine: {machine()}, torch {torch.__version__}, {args.threads} thread(s)")
    for text in args.shapes.split(","):
        shape = parse_shape(text)
        volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        size = training_size([shape], 0, cfg.max_size, 2 ** len(cfg.widths))
        info = {"axis": 0, "size": size, "max_size": cfg.max_size, "multiple": 2 ** len(cfg.widths)}
        info["context"] = cfg.context_slices
        sigma = smoothing_slices(cfg.predict_smooth_mm, (1.0, 1.0, 1.0), 0)
        times: dict[float, list[float]] = {0.0: [], sigma: []}
        for i in range(args.repeats + 1):
            for sigma in times:
                t0 = time.perf_counter()
                predict_array(net, volume, info, runtime, 3, chunk_pixels=cfg.predict_chunk_pixels, smooth=sigma)
                if i:  # the first round warms up
                    times[sigma].append(time.perf_counter() - t0)
        off, on = (statistics.median(v) for v in times.values())
        print(
            f"{text}: median of {args.repeats}, smoothing off {off * 1000:.1f} ms, "
            f"predict_smooth_mm={cfg.predict_smooth_mm:g} {on * 1000:.1f} ms, ratio {on / off:.3f}"
        )


if __name__ == "__main__":
    main()
