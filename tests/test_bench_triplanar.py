"""bench/triplanar.py: pseudo-label volumes, the per-axis geometry, multi-planar training and a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench import triplanar as tp
from bench.common import SHARED_DATA
from data.volume import IGNORE
from helpers_kept_models import paint_middle_slices, save_untrained_model
from model.config import preset
from model.device import runtime_for
from model.unet import UNet


def test_pseudo_volume_keeps_confident_voxels_and_the_paint():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=(4, 5, 6)).transpose(3, 0, 1, 2).astype(np.float32)
    painted = np.full((4, 5, 6), IGNORE, np.uint8)
    painted[2] = rng.integers(0, 3, (5, 6))
    out = tp.pseudo_volume(probs, painted, 0.6)
    for idx in np.ndindex(painted.shape):
        if painted[idx] != IGNORE:
            expected = painted[idx]
        elif probs[(slice(None), *idx)].max() >= 0.6:
            expected = probs[(slice(None), *idx)].argmax()
        else:
            expected = IGNORE
        assert out[idx] == expected


def test_axis_info_sizes_the_square_for_the_axis():
    info = {"axis": 1, "size": 64, "max_size": 256, "multiple": 8, "context": 1}
    shapes = [(35, 50, 30), (33, 48, 41)]
    along0 = tp.axis_info(info, 0, shapes)
    assert along0["axis"] == 0 and along0["size"] == 56  # max in-plane extent 50 rounded up to 8
    assert tp.axis_info(info, 2, shapes)["size"] == 56 and along0["context"] == 1


def test_multiplanar_training_learns_a_structure_from_pseudo_labelled_volumes():
    rng = np.random.default_rng(1)
    images, labels = [], []
    for _ in range(2):
        label = np.zeros((16, 16, 16), np.uint8)
        label[4:12, 5:11, 3:13] = 1
        images.append((label * 2.0 + rng.normal(0, 0.3, label.shape)).astype(np.float32))
        label[::2] = IGNORE  # half the voxels unlabelled, as a pseudo-label volume leaves the unsure ones
        labels.append(label)
    cfg = preset("quick", num_classes=2, widths=(4, 8), pseudo_batch=4, bf16="off")
    torch.manual_seed(0)
    net = UNet(cfg.in_channels, 2, cfg.widths, cfg.bottleneck)
    runtime = runtime_for("cpu", "off", "off", "off")
    info = {"axis": 0, "size": 16, "max_size": 256, "multiple": 2, "context": cfg.context_slices}
    losses = tp.train_multiplanar(net, cfg, info, images, labels, 60, 1e-2, 0, runtime)
    assert len(losses) == 60 and np.mean(losses[-10:]) < 0.75 * np.mean(losses[:5])
    infos = [tp.axis_info(info, a, [im.shape for im in images]) for a in range(3)]
    probs = tp.mean_probs(net, images[0], infos, runtime, 2)
    truth = np.zeros((16, 16, 16), np.uint8)
    truth[4:12, 5:11, 3:13] = 1
    assert probs.shape == (2, 16, 16, 16) and np.allclose(probs.sum(0), 1, atol=1e-2)
    assert (probs.argmax(0) == truth).mean() > 0.9


@pytest.mark.skipif(not (SHARED_DATA / "hippocampus").is_dir(), reason="needs ../shared/data/hippocampus")
def test_a_tiny_run_on_a_kept_model_writes_results_and_the_table(tmp_path):
    data = SHARED_DATA / "hippocampus"
    names = sorted(p.name for p in (data / "labelsTr").glob("*.nii.gz"))[:4]
    folder = tmp_path / "bench"
    label_dir = folder / "labels" / "seed0" / "sparse-2x1"
    label_dir.mkdir(parents=True)
    _, _, middles = paint_middle_slices(data, names[:2], label_dir)
    painted = {name: [middle] for name, middle in zip(names[:2], middles)}
    cfg = preset("quick", num_classes=3, axis=1, widths=(4, 8), bf16="off")
    info = {"axis": 1, "size": 48, "max_size": cfg.max_size, "multiple": 2, "context": cfg.context_slices}
    (folder / "runs" / "seed0-run").mkdir(parents=True)
    save_untrained_model(folder / "runs" / "seed0-run" / "model.pt", cfg, info)
    run = {
        "job": "seed0-run",
        "kind": "row",
        "seed": 0,
        "budget": "sparse-2x1",
        "labeled_volumes": painted,
        "variants": {"flip+auto": {"test_dice_mean": 0.0}},
    }
    split = {"train": names[:2], "val": names[2:3], "test": names[3:4]}
    (folder / "results.json").write_text(json.dumps({"meta": {"split": split}, "runs": [run]}))
    out = tmp_path / "out"
    argv = ["--runs", str(folder), "--steps", "3", "--out", str(out), "--md", str(tmp_path / "t.md"), "--threads", "1"]
    assert tp.main(argv) == 0
    result = json.loads((out / "results.json").read_text())["runs"][0]
    assert set(result["variants"]) == set(tp.VARIANTS) and result["axis"] == 1
    assert all(0 <= v[part] <= 1 for v in result["variants"].values() for part in ("test", "val", "labelled"))
    assert "| 1 | 3 x 1 | 1 | mp 3 axes |" in (tmp_path / "t.md").read_text()
    assert tp.main(argv) == 0  # a second call skips the run it has
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 1
