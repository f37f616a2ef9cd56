"""Shared by the retrain-service tests: a fake `model.train` and a small workspace with painted slices.

The fake trainer follows model.train's contract (progress.jsonl lines, checkpoint.pt, then model.pt +
config.json + metrics.json, and global.pt when the config runs the global stage, in out_dir) in well under a second: it copies a real, untrained model file
made once per test session, so predictions after it run the real inference code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

LABELS = [{"value": 1, "name": "anterior", "color": "#ff0000"}, {"value": 2, "name": "posterior", "color": "#00ff00"}]
SHAPE = (12, 16, 10)

FAKE_TRAINER = r"""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

cfg = json.loads(Path(sys.argv[1]).read_text())
out = Path(cfg["out_dir"])
out.mkdir(parents=True, exist_ok=True)
mode = os.environ.get("FAKE_TRAIN_MODE", "ok")
steps = int(os.environ.get("FAKE_TRAIN_STEPS", "4"))
step_s = float(os.environ.get("FAKE_TRAIN_STEP_S", "0.02"))
calls = out / "calls.jsonl"
with open(calls, "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "finetune_batch": cfg["finetune_batch"], "local_batch": cfg["local_batch"],
                        "local_mode": cfg["local_mode"], "resumed": (out / "checkpoint.pt").exists()}) + "\n")
n_calls = len(calls.read_text().splitlines())
progress = open(out / "progress.jsonl", "a")

def event(**fields):
    progress.write(json.dumps(fields) + "\n")
    progress.flush()

if mode == "crash":
    event(event="error", message="label value 7 is not in the label map")
    print("ValueError: label value 7 is not in the label map", flush=True)
    sys.exit(2)
if mode == "oom" and n_calls == 1 or mode == "oom-always":
    print("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
    sys.exit(1)
if mode == "spawn":  # a child in the same process group, as DataLoader workers would be
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (out / "child.pid").write_text(str(child.pid))
event(event="resume" if (out / "checkpoint.pt").exists() else "start", message="fake", progress=0.0)
for i in range(steps):
    time.sleep(step_s)
    event(event="step", stage="finetune", epoch=1, epochs=1, step=i + 1, steps=steps, loss=1.0 / (i + 1),
          progress=(i + 1) / steps, eta_s=(steps - i - 1) * step_s)
    (out / "checkpoint.pt").write_text(str(i))
if cfg.get("global_stage") and cfg.get("global_epochs", 1) > 0:  # the label-free stage's encoder, as model.train keeps it
    shutil.copyfile(os.environ["FAKE_MODEL"], out / "global.pt")
shutil.copyfile(os.environ["FAKE_MODEL"], out / "model.pt")
(out / "config.json").write_text(json.dumps(cfg))
(out / "metrics.json").write_text(json.dumps({"fake": True, "dice_mean": float("nan")}))
event(event="done", progress=1.0)
"""


def write_fake_trainer(folder: Path) -> Path:
    path = Path(folder) / "fake_train.py"
    path.write_text(FAKE_TRAINER)
    return path


def make_untrained_model(path: Path, preset: str = "quick", num_classes: int = 3) -> Path:
    """A real model.pt (random weights) in the format model.inference loads."""
    import torch

    from model import checkpoint
    from model.config import preset as make_preset
    from model.unet import UNet

    config = make_preset(preset, num_classes=num_classes)
    torch.manual_seed(0)
    net = UNet(config.in_channels, num_classes, config.widths, config.bottleneck)
    info = {
        "axis": 0,
        "size": 2**config.depth,
        "max_size": config.max_size,
        "multiple": 2**config.depth,
        "context": config.context_slices,
    }
    checkpoint.save(
        {
            "format": checkpoint.MODEL_FORMAT,
            "state_dict": checkpoint.cpu_state(net),
            "config": config.to_dict(),
            "num_classes": num_classes,
            "slices": info,
        },
        path,
    )
    return path


def fake_runner_env(model_file: Path, mode: str = "ok", steps: int = 4, step_s: float = 0.02) -> dict:
    return {
        **os.environ,
        "FAKE_MODEL": str(model_file),
        "FAKE_TRAIN_MODE": mode,
        "FAKE_TRAIN_STEPS": str(steps),
        "FAKE_TRAIN_STEP_S": str(step_s),
    }


def fake_runner(folder: Path, model_file: Path, **kwargs):
    from app.jobs import LocalRunner

    return LocalRunner(
        command=[sys.executable, str(write_fake_trainer(folder))], env=fake_runner_env(model_file, **kwargs)
    )


def synthetic_nifti(path: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A small volume with a bright box, and its full label (1 in the box's front half, 2 in the back)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 10, SHAPE).astype(np.float32)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[3:9, 4:12, 2:8] = 1
    label[6:9, 4:12, 2:8] = 2
    image[label > 0] += 200
    affine = np.diag([1.1, 0.9, 2.0, 1.0])
    affine[:3, 3] = [-5, 7, 3]
    nib.save(nib.Nifti1Image(image, affine), path)
    return path, label


def calls_of(job_out_dir: Path) -> list[dict]:
    path = Path(job_out_dir) / "model" / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def skip_speed_measurement(workspace_root: Path) -> None:
    """Record float32 as this machine's choice in the workspace's speed file, so that the first inference
    does not spend half a minute measuring (tests that are not about speed)."""
    import json

    from app.speed import speed_cache
    from model import device

    path = speed_cache(workspace_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"step_ms": {}, "best": "float32", "measured_utc": "not measured: set by a test"}
    path.write_text(json.dumps({device.machine_key(device.cpu_info()): entry}))
