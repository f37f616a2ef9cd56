"""bench/retrain_timing.py: its volume choice, extra slice, Dice and table (no server, no training here).

The end-to-end smoke run is `python -m bench.retrain_timing --quick` (about a minute on an idle 2-core CPU);
test_quick_run runs it when asked for the slow tests with the hippocampus data present."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_retrain_timing", ROOT / "bench" / "retrain_timing.py")
rt = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = rt
_spec.loader.exec_module(rt)

NAMES = [f"hippocampus_{i:03d}.nii.gz" for i in range(201)]


def test_volumes_are_train_volumes_of_the_label_efficiency_split():
    from bench.label_efficiency import split_volumes

    chosen = rt.choose_volumes(NAMES, 20)
    split = split_volumes(NAMES, seed=0, n_val=20, n_test=40)
    assert len(chosen) == len(set(chosen)) == 20 and set(chosen) <= set(split["train"])
    assert rt.choose_volumes(list(reversed(NAMES)), 3) == chosen[:3]  # nested, independent of the input order


def _label(extent=(8, 27), shape=(30, 12, 10)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[extent[0] : extent[1] + 1, 3:8, 2:6] = 1
    label[extent[0] : extent[1] + 1, 5:8, 2:6] = 2
    return label


def test_extra_slice_fills_the_widest_gap_inside_the_structure():
    label = _label()
    painted = rt.even_slices(label, 0, 3)
    extra = rt.extra_slice(label, 0, painted)
    assert extra not in painted and painted[0] < extra < painted[-1]
    assert rt.extra_slice(label, 0, [10, 12, 20]) == 16
    assert rt.extra_slice(label, 0, []) == rt.even_slices(label, 0, 1)[0]
    with pytest.raises(ValueError):
        rt.extra_slice(label, 0, [10, 11])


def test_dice_3d():
    truth = _label()
    assert rt.dice_3d(truth, truth) == 1.0
    assert rt.dice_3d(np.zeros_like(truth), truth) == 0.0
    half = truth.copy()
    half[half == 2] = 0  # class 1 perfect, class 2 missed
    assert rt.dice_3d(half, truth) == pytest.approx(0.5)
    assert rt.dice_3d(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 2), np.uint8)) == 1.0


def test_markdown_table_has_the_targets_and_the_refresh_cost():
    meta = {
        "commit": "abc1234",
        "dirty": True,
        "machine": "AMD EPYC, 2 cores",
        "torch": "2.x",
        "started_utc": "2026-11-25 18:00 UTC",
        "elapsed_s": 600.0,
        "load_start": "0.10 / 0.20 / 0.30",
        "load_end": "2.00 / 1.50 / 1.00",
        "busy_note": "",
        "command": "python bench/retrain_timing.py",
        "n_volumes": 20,
        "slices": 3,
        "preset": "cpu",
        "n_test": 40,
    }
    rows = [
        {
            "phase": "a",
            "request": "mode=full",
            "mode": "full",
            "mode_reason": "full retrain requested",
            "global_stage": "trained",
            "seconds": 400.0,
            "predict_s": 10.0,
            "stages": {"global": 150.0, "local": 120.0, "finetune": 100.0},
            "dice_train": 0.8,
            "dice_test": 0.78,
        },
        {
            "phase": "b",
            "request": "auto",
            "mode": "refresh",
            "mode_reason": "auto: 2 painted slices ...",
            "global_stage": "off",
            "seconds": 70.0,
            "predict_s": 8.0,
            "stages": {"finetune": 50.0},
            "dice_train": 0.79,
            "dice_test": 0.77,
        },
        {
            "phase": "c",
            "request": "mode=full",
            "mode": "full",
            "mode_reason": "full retrain requested",
            "global_stage": "reused",
            "seconds": 250.0,
            "predict_s": 9.0,
            "stages": {"local": 120.0, "finetune": 100.0},
            "dice_train": 0.81,
            "dice_test": 0.8,
        },
    ]
    text = rt.render_markdown(meta, rows)
    assert "abc1234 + uncommitted changes" in text and "0.10 / 0.20 / 0.30" in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "< 600 s: met" in lines[1] and "< 60 s: **missed**" in lines[2] and "| 12.0 |" in lines[2]
    assert "-0.020 on the painted volumes, -0.030 on the test volumes" in text
    assert "- b: auto: 2 painted slices" in text


@pytest.mark.slow
def test_quick_run(shared_data, tmp_path):
    if not (shared_data / "hippocampus" / "imagesTr").is_dir():
        pytest.skip("no hippocampus data")
    md = tmp_path / "quick.md"
    assert rt.main(["--quick", "--volumes", "2", "--test-volumes", "1", "--md", str(md)]) == 0
    text = md.read_text()
    assert "| b | auto after 1 new slice on 2 volumes | refresh | off |" in text
    assert "| c | mode=full again, same paint as b | full | reused |" in text


def test_synthetic_projects_have_both_structures_inside_the_body():
    from bench.retrain_grid import painted_slices, synthetic_volume

    for kind, shape, spacing in (("mr", (64, 64, 12), (4.8, 4.8, 8.0)), ("ct", (64, 64, 40), (6.4, 6.4, 7.5))):
        image, label = synthetic_volume(shape, spacing, kind, seed=3)
        assert image.shape == label.shape == shape and image.dtype == np.int16
        assert set(np.unique(label)) == {0, 1, 2}
        assert image[label == 2].mean() > image[label == 1].mean() > image[(label == 0)].mean()
        assert not np.array_equal(label, synthetic_volume(shape, spacing, kind, seed=4)[1])
        picks = painted_slices(label, 2, 2)
        assert len(picks) == 2 and all(label[:, :, i].any() for i in picks)


def test_grid_table_shows_a_stopped_fixed_run_by_its_eta():
    from bench.retrain_grid import render_grid

    meta = {
        "commit": "abc1234",
        "dirty": False,
        "machine": "m, 2 cores",
        "cpu_model": "Test CPU",
        "torch": "2.x",
        "started_utc": "now",
        "elapsed_s": 60.0,
        "load_start": "1 / 1 / 1",
        "load_end": "2 / 2 / 2",
        "command": "python bench/retrain_timing.py --grid",
    }
    base = {"project": "ct", "volumes": 5, "painted": 3, "plane": "512 x 512", "mode": "full", "isa": "as-is"}
    rows = [
        {
            **base,
            "schedule": "budget",
            "bf16": "on",
            "steps": "10/8/20/5",
            "train_s": 230.0,
            "wall_s": 260.0,
            "budget_s": 240.0,
            "size": "256, patches 128",
            "dice": 0.71,
            "stopped": False,
        },
        {
            **base,
            "schedule": "fixed",
            "bf16": "on",
            "steps": "–",
            "wall_s": 90.0,
            "eta_total_s": 1234.0,
            "budget_s": None,
            "size": "–",
            "dice": None,
            "stopped": True,
        },
    ]
    text = render_grid(meta, rows)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 3 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 230.0 | 260.0 | 240 | 0.710 |" in lines[1] and "~1234 (ETA)" in lines[2] and "Test CPU" in text
