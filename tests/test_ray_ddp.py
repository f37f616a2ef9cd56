"""One training run as 2 DDP ranks through Ray Train's TorchTrainer (`python -m model.ray_ddp --cpu`), on a
loopback Ray cluster (a head without CPUs, two worker nodes with one CPU each): the ranks train in their own
folder from the copies Ray sent them, and the model comes back into the run's out_dir through rank 0's
sender."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from helpers_ray import ray_cluster
from helpers_retrain import synthetic_nifti
from model.config import preset
from model.inference import load_predictor

pytestmark = pytest.mark.slow


def test_two_cpu_workers_train_one_model_that_comes_back(tmp_path_factory):
    pytest.importorskip("ray")
    import ray.train.torch  # noqa: F401  (slicewise's ray extra has Ray Train: without it the install is broken)

    folder = tmp_path_factory.mktemp("ddp")
    image, label = synthetic_nifti(folder / "image.nii.gz")
    sparse = np.full_like(label, 255)
    sparse[[4, 7]] = label[[4, 7]]
    nib.save(nib.Nifti1Image(sparse, nib.load(image).affine), folder / "label.nii.gz")
    out = folder / "out"
    array = np.asarray(nib.load(image).dataobj)  # read now: a node that is not the run's own removes its input copies
    config = preset(
        "quick",
        images=[str(image)],
        labels=[str(folder / "label.nii.gz")],
        out_dir=str(out),
        widths=[4, 8],
        max_size=16,
        patch_size=None,
        threads=1,
        global_steps=2,
        local_steps=2,
        finetune_epochs=2,
        finetune_steps=3,
        budget_s=None,
        cleanup="off",
    )
    (folder / "config.json").write_text(json.dumps(config.to_dict()))

    with ray_cluster(workers=2, cpus=1) as cluster:
        done = subprocess.run(
            [sys.executable, "-m", "model.ray_ddp", str(folder / "config.json"), "--workers", "2", "--cpu"],
            capture_output=True,
            text=True,
            timeout=240,
            env={**cluster.env, "RAY_ADDRESS": cluster.address},
        )
    log = done.stdout[-4000:] + done.stderr[-4000:]
    assert done.returncode == 0, log

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert set(metrics["stages"]) == {"global", "local", "finetune"}
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    assert {e["stage"] for e in events if e["event"] == "epoch"} == {"global", "local", "finetune"}
    for name in ("checkpoint.pt", "global.pt", "config.json"):
        assert (out / name).is_file(), name
    labels, _ = load_predictor(out / "model.pt", device="cpu").predict(array, (1.1, 0.9, 2.0))
    assert labels.shape == label.shape
    assert not (folder / "ddp-out").exists()  # the ranks' own out_dir is gone once everything came back
