"""bench/sparse_3d.py: patches that always hold paint, mirrored predictions, the paired table and a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench import sparse_3d as s3
from bench.common import SHARED_DATA
from data.volume import IGNORE


def test_a_patch_holds_its_centre_and_never_leaves_the_volume():
    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = tuple(int(n) for n in rng.integers(5, 60, 3))
        centre = np.array([rng.integers(n) for n in shape])
        window = s3.patch_around(shape, centre, 32)
        for n, c, w in zip(shape, centre, window):
            assert 0 <= w.start <= c < w.stop <= n and w.stop - w.start == min(n, 32)


def test_every_training_patch_holds_painted_voxels_and_has_the_patch_size():
    label = np.full((20, 40, 12), IGNORE, np.uint8)
    label[:, 7] = 0
    label[5:9, 7, 3:6] = 1  # one painted slice along axis 1
    image = np.random.default_rng(1).normal(size=label.shape).astype(np.float32)
    volumes = [(image, label, np.argwhere(label != IGNORE))]
    x, y = s3.training_batch(volumes, np.random.default_rng(2), 8, 16)
    assert x.shape == (8, 1, 16, 16, 16) and y.shape == (8, 16, 16, 16)
    assert all(((y[i] != IGNORE).sum() > 0) for i in range(8))
    assert set(torch.unique(y).tolist()) <= {0, 1, IGNORE}


class Bright(torch.nn.Module):
    """Class 1 where the voxel is bright, the same answer for a volume and its mirrors."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 3, *x.shape[2:])
        logits[:, 1] = 8.0 * (x[:, 0] > 0.5)
        return logits


def test_mirrored_prediction_of_a_mirror_symmetric_network_is_the_plain_one():
    image = np.random.default_rng(3).random((6, 7, 5)).astype(np.float32)
    plain, mirrored = s3.predict_3d(Bright(), image)
    np.testing.assert_array_equal(plain, (image > 0.5).astype(np.uint8))
    np.testing.assert_array_equal(mirrored, plain)


def test_the_table_pairs_seeds_with_the_baseline(tmp_path):
    results = [
        {
            "axis": 1,
            "seed": s,
            "train_s": 10.0,
            "test": {"plain": 0.5, "flip+auto": 0.7 + s / 100},
            "labelled": {"plain": 0.6, "flip+auto": 0.8},
        }
        for s in (0, 1)
    ]
    base = {
        "runs": [
            {
                "kind": "row",
                "row": "full+pseudo",
                "seed": s,
                "variants": {"flip+auto": {"test_dice_mean": 0.65, "labelled_dice_mean": 0.7}},
            }
            for s in (0, 1)
        ]
    }
    (tmp_path / "axis1.json").write_text(json.dumps(base))
    row = s3.table(results, str(tmp_path / "axis{axis}.json")).splitlines()[-1]
    assert row.startswith("| 1 | 2 |") and "0.055 ± 0.007 / 0.100 ± 0.000" in row
    assert "| - | -" in s3.table(results, None)


@pytest.mark.skipif(not (SHARED_DATA / "hippocampus").is_dir(), reason="needs ../shared/data/hippocampus")
def test_a_tiny_run_writes_results_and_the_table(tmp_path):
    argv = [
        "--axes",
        "2",
        "--seeds",
        "1",
        "--steps",
        "2",
        "--volumes",
        "2",
        "--widths",
        "4,8",
        "--patch",
        "16",
        "--n-val",
        "1",
        "--n-test",
        "2",
        "--out",
        str(tmp_path),
        "--md",
        str(tmp_path / "t.md"),
        "--threads",
        "1",
    ]
    assert s3.main(argv) == 0
    run = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert (run["axis"], run["seed"]) == (2, 0) and 0 <= run["test"]["flip+auto"] <= 1
    assert "| 2 | 1 |" in (tmp_path / "t.md").read_text()
    with pytest.raises(SystemExit, match="--axes"):
        s3.main(["--axes", "3"])
