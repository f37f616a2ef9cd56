"""What a retrain costs after training: the server predicting every volume, with the "auto" clean-up decided
at the end of training on flip-averaged predictions of the painted volumes (as before) or from the server's
own predictions with flip chosen per machine and volume (`predict_flip="auto"`, `defer_cleanup`).

    python -m bench.prediction_cost [--shapes 35x51x35,24x512x512] [--volumes 3] [--painted 2]

Each shape runs twice in subprocesses: on the CPU as it is, and with AVX-512 hidden
(ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2). The network is the `cpu` preset's U-Net with random
weights: inference time does not depend on the weights. Writes docs/benchmarks/prediction_cost.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ONE_LABEL, ROOT, report_header, synthetic_volume

HIDDEN_AVX512 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
OUT = ROOT / "docs" / "benchmarks" / "prediction_cost.md"


def model_file(path: Path, shape: tuple[int, int, int], **config) -> Path:
    """A model.pt of the cpu preset's network (random weights) with `config` changes, two classes, cutting
    slices along axis 0 as a model trained on volumes of `shape` does."""
    import torch

    from model import checkpoint
    from model.config import preset
    from model.slices import training_size
    from model.unet import UNet

    cfg = preset("cpu", num_classes=2, **config)
    torch.manual_seed(0)
    net = UNet(cfg.in_channels, 2, cfg.widths, cfg.bottleneck)
    size = training_size([shape], 0, cfg.max_size, 2**cfg.depth)
    info = {"axis": 0, "size": size, "max_size": cfg.max_size, "multiple": 2**cfg.depth}
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {
        "format": checkpoint.MODEL_FORMAT,
        "state_dict": checkpoint.cpu_state(net),
        "config": cfg.to_dict(),
        "num_classes": 2,
        "slices": info,
    }
    checkpoint.save(saved, path)
    return path


def measure(shape: tuple[int, int, int], n_volumes: int, n_painted: int) -> dict:
    """Seconds after training for both ways, in this process (its CPU limits as the environment sets)."""
    from app.predictions import Predictions
    from app.speed import speed_cache
    from data.store import Workspace
    from model.device import measured_choice
    from model.inference import load_predictor
    from model.postprocess import decide_cleanup

    with tempfile.TemporaryDirectory(prefix="slicewise-bench-") as tmp:
        root = Path(tmp)
        ws = Workspace(root / "ws")
        project = ws.create_project("bench", ONE_LABEL)
        volumes, sources, label_paths = [], [], []
        for n in range(n_volumes):
            path = root / f"v{n}.nii.gz"
            mask = synthetic_volume(path, shape)
            volumes.append(ws.import_volume(project["id"], path, path.name, 10**10))
            sources.append(str(path))
            if n < n_painted:
                middle = shape[0] // 2
                ws.save_annotation(volumes[-1]["id"], 0, middle, mask[middle])
                label_paths.append(str(root / "ws" / f"sparse{n}.nii.gz"))
                _write_sparse(ws.label_volume(volumes[-1]["id"]), path, label_paths[-1])
        before = model_file(root / "before" / "model.pt", shape, predict_flip="on")
        after = model_file(root / "after" / "model.pt", shape, predict_flip="auto", defer_cleanup=True)
        predictions = Predictions(ws, device="cpu")
        measured_choice(speed_cache(ws.root))  # this machine's speed switches, measured once before timing
        out = {}

        started = time.perf_counter()
        predictor = load_predictor(before, device="cpu", speed_cache=speed_cache(ws.root))
        cfg = predictor.config.replace(images=sources[:n_painted], labels=label_paths, cleanup="auto")
        decide_cleanup(predictor.net, cfg, predictor.info, predictor.runtime, 2)
        decided = time.perf_counter()
        model = ws.add_model(project["id"], None, str(before.parent), {}, {}, [])
        for volume in volumes:
            predictions.predict_volume(volume["id"], model)
        out["before"] = {"decide_s": decided - started, "total_s": time.perf_counter() - started}

        started = time.perf_counter()
        model = ws.add_model(project["id"], None, str(after.parent), {}, {}, [])
        predictions.settle_cleanup(model, volumes, {})
        decided = time.perf_counter()
        for volume in volumes:
            predictions.predict_volume(volume["id"], model)
        out["after"] = {"decide_s": decided - started, "total_s": time.perf_counter() - started}

        report: dict = {}
        load_predictor(after, device="cpu", speed_cache=speed_cache(ws.root)).predict(
            np.asarray(ws.volume_array(volumes[0]["id"])), tuple(volumes[0]["spacing"]), report=report
        )
        out["flip"] = report
        return out


def _write_sparse(labels: np.ndarray, like: Path, path: str) -> None:
    import nibabel as nib

    image = nib.load(like)
    nib.save(nib.Nifti1Image(labels, image.affine), path)


def run_child(shape: str, volumes: int, painted: int, hidden: bool) -> dict:
    env = {**os.environ, **(HIDDEN_AVX512 if hidden else {})}
    cmd = [sys.executable, "-m", "bench.prediction_cost", "--child", shape, "--volumes", str(volumes)]
    cmd += ["--painted", str(painted)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{shape} (AVX-512 hidden: {hidden}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_shape(text: str) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in text.split("x"))
    if len(shape) != 3:
        raise argparse.ArgumentTypeError(f"a shape is like 24x512x512, got {text!r}")
    return shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="35x51x35,24x512x512")
    ap.add_argument("--volumes", type=int, default=3)
    ap.add_argument("--painted", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(parse_shape(args.child), args.volumes, args.painted)))
        return
    started = time.time()
    rows = []
    for shape in args.shapes.split(","):
        parse_shape(shape)
        for hidden in (False, True):
            result = run_child(shape, args.volumes, args.painted, hidden)
            print(shape, "AVX-512 hidden" if hidden else "as is", json.dumps(result), flush=True)
            rows.append((shape, hidden, result))
    lines = [
        "# Cost of a retrain after training: predicting the project's volumes",
        "",
        report_header(started),
        "",
        f"{args.volumes} volumes of each shape, {args.painted} of them painted (one slice each); the `cpu` preset's",
        'U-Net (random weights, 2 classes). **Before**: "auto" clean-up decided at the end of training on',
        "flip-averaged predictions of the painted volumes, then the server predicts every volume with flips.",
        "**After** (the defaults now): the server decides the clean-up from its own predictions of the painted",
        "volumes (`defer_cleanup`) and mirrors a volume only when this machine, timed on its first slices, adds",
        'at most `predict_flip_budget_s` (15 s) to it (`predict_flip="auto"`).',
        "",
        "| volume shape | CPU | before: deciding / all | after: deciding / all | after / before | flip chosen |",
        "|---|---|---|---|---|---|",
    ]
    for shape, hidden, r in rows:
        b, a = r["before"], r["after"]
        lines.append(
            f"| {shape} | {'AVX-512 hidden' if hidden else 'as is'} | {b['decide_s']:.1f} / {b['total_s']:.1f} s | "
            f"{a['decide_s']:.1f} / {a['total_s']:.1f} s | {a['total_s'] / b['total_s']:.2f} | "
            f"{'yes' if r['flip']['flip'] else 'no'}: {r['flip']['flip_reason']} |"
        )
    lines += [
        "",
        '"deciding" is the time until the clean-up is known. After the change it includes predicting the',
        'painted volumes, which the server keeps as their masks, so "all" is the whole wait after training.',
        "",
    ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
