"""bench.class_order: kept models' masks with and without the classes put in order, as the product decides it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import class_order
from bench.common import SHARED_DATA
from data.io import read_volume, write_mask
from data.volume import IGNORE
from helpers_kept_models import kept_untrained_run

DATA = SHARED_DATA / "hippocampus"


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/hippocampus")
def test_paint_across_axis_1_puts_the_hippocampus_classes_in_order_along_it(tmp_path, capsys):
    names = sorted(p.name for p in (DATA / "labelsTr").glob("*.nii.gz"))[:4]
    folder = tmp_path / "bench"
    run_dir = kept_untrained_run(DATA, names[:2], folder, prefix="middle_")
    config = json.loads((run_dir / "config.json").read_text())
    labels = []
    for name in names[:2]:  # the middle slice along axis 0 instead: it crosses the head-body boundary
        truth = read_volume(str(DATA / "labelsTr" / name))
        sparse = np.full(truth.array.shape, IGNORE, np.uint8)
        middle = truth.array.shape[0] // 2
        sparse[middle] = np.asarray(truth.array)[middle]
        write_mask(sparse, truth, run_dir / f"across_{name}")
        labels.append(str(run_dir / f"across_{name}"))
    (run_dir / "config.json").write_text(json.dumps({**config, "labels": labels}))
    split = {"train": names[:2], "val": names[2:3], "test": names[3:4]}
    (folder / "results.json").write_text(json.dumps({"meta": {"split": split}}))

    assert class_order.main([str(folder), "--json", str(tmp_path / "c.json")]) == 0
    scores = json.loads((tmp_path / "c.json").read_text())[str(folder)]["seed0/sparse-2x1/full+pseudo"]
    assert scores["axis"] == 1 and scores["shares"]["1"] >= 0.98
    for which in class_order.SETS:
        assert set(scores[which]) == {"off", "on"} and all(0 <= v <= 1 for v in scores[which].values())
    out = capsys.readouterr().out
    assert "| val |" in out and "| test |" in out and "| painted |" in out and "on − off" in out


def test_no_kept_model_of_the_rows_asked_is_an_error(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"meta": {"split": {"val": [], "test": []}}}))
    with pytest.raises(SystemExit):
        class_order.main([str(tmp_path)])


def _scores(val_on: float) -> dict:
    return {"axis": 1, "shares": {}, **{s: {"off": 0.5, "on": val_on if s == "val" else 0.6} for s in class_order.SETS}}


def test_pair_reads_two_json_files_by_seed_and_budget_whatever_the_row(tmp_path, capsys):
    base = {"b": {f"seed{i}/sparse-10x3/supervised": _scores(0.70 + i / 100) for i in range(3)}}
    variant = {"v": {f"seed{i}/sparse-10x3/full+pseudo": _scores(0.80) for i in (1, 2, 3)}}
    (tmp_path / "b.json").write_text(json.dumps(base))
    (tmp_path / "v.json").write_text(json.dumps(variant))
    assert class_order.main(["--pair", str(tmp_path / "b.json"), str(tmp_path / "v.json")]) == 0
    out = capsys.readouterr().out
    assert "2 paired models (seed1/sparse-10x3, seed2/sparse-10x3)" in out  # seed 0 and seed 3 have no pair
    assert "| val | on | 0.715 ± 0.007 | 0.800 ± 0.000 | +0.085 ± 0.007 | +0.090, +0.080 |" in out
    assert "| test | off | 0.500 ± 0.000 | 0.500 ± 0.000 | +0.000 ± 0.000 | +0.000, +0.000 |" in out


def test_pair_refuses_a_file_with_two_models_of_one_seed(tmp_path):
    two_rows = {"b": {"seed0/sparse-10x3/supervised": _scores(0.7), "seed0/sparse-10x3/full+pseudo": _scores(0.8)}}
    (tmp_path / "b.json").write_text(json.dumps(two_rows))
    with pytest.raises(SystemExit):
        class_order.main(["--pair", str(tmp_path / "b.json"), str(tmp_path / "b.json")])
