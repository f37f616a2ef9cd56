"""bench.painted_slices: the painted volumes' masks with the paint kept, scored as the script says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import painted_slices
from bench.common import SHARED_DATA
from data.volume import IGNORE
from helpers_kept_models import kept_untrained_run
from model.train import dice_per_class


def test_unpainted_dice_leaves_the_painted_slices_out_of_both_masks():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=(6, 5, 4)).astype(np.uint8)
    pred = truth.copy()
    painted = np.full(truth.shape, IGNORE, np.uint8)
    painted[2] = truth[2]
    pred[2] = (truth[2] + 1) % 3  # wrong only where painted
    assert painted_slices.unpainted_dice(pred, truth, painted, 3) == pytest.approx(1.0)
    pred[4, 0, 0] = (truth[4, 0, 0] + 1) % 3
    kept = [i for i in range(6) if i != 2]
    assert painted_slices.unpainted_dice(pred, truth, painted, 3) == pytest.approx(
        float(np.mean(dice_per_class(pred[kept], truth[kept], 3)))
    )


@pytest.mark.skipif(not (SHARED_DATA / "hippocampus").is_dir(), reason="needs ../shared/data/hippocampus")
def test_keeping_true_paint_never_lowers_the_dice_and_changes_nothing_elsewhere(tmp_path, capsys):
    data = SHARED_DATA / "hippocampus"
    names = sorted(p.name for p in (data / "labelsTr").glob("*.nii.gz"))[:2]
    folder = tmp_path / "bench"
    kept_untrained_run(data, names, folder, prefix="painted_")
    assert painted_slices.main([str(folder), "--json", str(tmp_path / "p.json")]) == 0
    scores = json.loads((tmp_path / "p.json").read_text())[str(folder)]["runs/seed0/sparse-2x1/full+pseudo"]
    # the paint is the truth here: setting it can only mend voxels, and outside it nothing moves
    assert scores["kept"]["all"] > scores["model"]["all"]
    assert scores["kept"]["unpainted"] == pytest.approx(scores["model"]["unpainted"], abs=1e-12)
    out = capsys.readouterr().out
    assert "| all | kept |" in out and "| unpainted | certain |" in out
    assert painted_slices.mean_std([-0.02, -0.01], "+") == "-0.015 ± 0.007"
    assert painted_slices.mean_std([0.02, 0.01], "+") == "+0.015 ± 0.007"
