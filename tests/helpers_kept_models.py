"""Untrained model files as training writes them, and painted slices of real hippocampus volumes: what the
tests of inference and of the benchmarks that read bench.label_efficiency's `--keep-models` folders build on.

    from helpers_kept_models import kept_untrained_run, paint_middle_slices, save_untrained_model
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from data.io import read_volume, write_mask
from data.volume import IGNORE
from model import checkpoint
from model.config import TrainConfig, preset
from model.unet import UNet


def paint_middle_slices(data: Path, names: list[str], folder: Path, prefix: str = "") -> tuple[list, list, list]:
    """For each volume, a sparse label file in `folder` holding its true middle slice along axis 1 ->
    (image paths, label paths, the middle index of each)."""
    images, labels, middles = [], [], []
    for name in names:
        truth = read_volume(str(data / "labelsTr" / name))
        sparse = np.full(truth.array.shape, IGNORE, np.uint8)
        middle = truth.array.shape[1] // 2
        sparse[:, middle] = np.asarray(truth.array)[:, middle]
        write_mask(sparse, truth, folder / f"{prefix}{name}")
        images.append(str(data / "imagesTr" / name))
        labels.append(str(folder / f"{prefix}{name}"))
        middles.append(middle)
    return images, labels, middles


def save_untrained_model(path: Path, cfg: TrainConfig, info: dict, num_classes: int = 3) -> None:
    """A model file as training writes it, of an untrained network seeded with 0 (no clean-up decided)."""
    torch.manual_seed(0)
    net = UNet(cfg.in_channels, num_classes, cfg.widths, cfg.bottleneck)
    model = {
        "format": checkpoint.MODEL_FORMAT,
        "state_dict": checkpoint.cpu_state(net),
        "config": cfg.to_dict(),
        "num_classes": num_classes,
        "slices": info,
        "cleanup": None,
    }
    checkpoint.save(model, path)


def kept_untrained_run(data: Path, names: list[str], folder: Path, prefix: str = "", **extra_config) -> Path:
    """A `--keep-models` folder of bench.label_efficiency as the bench scripts read it: under `folder`, one run
    (runs/seed0/sparse-2x1/full+pseudo) of an untrained quick-preset model along axis 1, trained (as it were)
    on `names` with their middle slice painted; its config.json holds `extra_config` too -> the run's folder."""
    run_dir = folder / "runs" / "seed0" / "sparse-2x1" / "full+pseudo"
    run_dir.mkdir(parents=True)
    images, labels, _ = paint_middle_slices(data, names, run_dir, prefix=prefix)
    cfg = preset("quick", num_classes=3, axis=1, widths=(4, 8), bf16="off", images=images, labels=labels)
    info = {"axis": 1, "size": 48, "max_size": cfg.max_size, "multiple": 2, "context": cfg.context_slices}
    save_untrained_model(run_dir / "model.pt", cfg, info)
    (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), **extra_config}))
    return run_dir
