"""bench.product_val: validation Dice of kept models with the product's inference, paired by job."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import product_val
from bench.common import SHARED_DATA
from data.io import read_volume
from helpers_kept_models import kept_untrained_run
from model.inference import load_predictor
from model.train import dice_per_class

DATA = SHARED_DATA / "hippocampus"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/hippocampus")


def _folder(tmp_path, name, val, **config):
    folder = tmp_path / name
    names = sorted(p.name for p in (DATA / "labelsTr").glob("*.nii.gz"))[:1]
    run = kept_untrained_run(DATA, names, folder, **config)
    (folder / "results.json").write_text(json.dumps({"meta": {"split": {"train": names, "val": val, "test": []}}}))
    return run


def test_scores_are_the_products_masks_against_the_truth_and_pair_by_job(tmp_path, capsys):
    val = sorted(p.name for p in (DATA / "labelsTr").glob("*.nii.gz"))[1:3]
    run = _folder(tmp_path, "base", val)
    _folder(tmp_path, "variant", val)
    predictor = load_predictor(run, device="cpu")
    expected = []
    for name in val:
        volume = read_volume(str(DATA / "imagesTr" / name))
        truth = np.asarray(read_volume(str(DATA / "labelsTr" / name)).array)
        pred = predictor.predict(np.asarray(volume.array), volume.spacing)[0]
        expected.append(np.mean(dice_per_class(pred, truth, 3)))
    out = tmp_path / "scores.json"
    assert product_val.main([str(tmp_path / "base"), str(tmp_path / "variant"), "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert scores["jobs"] == ["seed0/sparse-2x1/full+pseudo"]
    assert scores["base"] == pytest.approx([float(np.mean(expected))], abs=1e-12)
    assert scores["variant"] == scores["base"]  # the same model: the paired difference is exactly 0
    assert "| +0.000 | +0.000 |" in capsys.readouterr().out
    (tmp_path / "base" / "results.json").write_text(
        json.dumps({"meta": {"split": {"train": [], "val": val, "test": val[:1]}}})
    )
    (tmp_path / "variant" / "results.json").write_text((tmp_path / "base" / "results.json").read_text())
    assert (
        product_val.main([str(tmp_path / "base"), str(tmp_path / "variant"), "--volumes", "test", "--json", str(out)])
        == 0
    )
    assert json.loads(out.read_text())["base"] == pytest.approx([expected[0]], abs=1e-12)
    assert "held-out test, product inference" in capsys.readouterr().out


def test_folders_of_different_splits_are_refused(tmp_path, capsys):
    names = sorted(p.name for p in (DATA / "labelsTr").glob("*.nii.gz"))
    _folder(tmp_path, "base", names[1:2])
    _folder(tmp_path, "variant", names[2:3])
    assert product_val.main([str(tmp_path / "base"), str(tmp_path / "variant")]) == 2
    assert "different splits" in capsys.readouterr().err
