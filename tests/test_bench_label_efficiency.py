"""bench/label_efficiency.py and its protocol: the split, the painted slices and the job plan (no training here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import label_efficiency_protocol as protocol
from bench.common import split_volumes

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_label_efficiency", ROOT / "bench" / "label_efficiency.py")
le = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = le  # dataclasses look their module up here
_spec.loader.exec_module(le)

NAMES = [f"hippocampus_{i:03d}.nii.gz" for i in range(201)]


def test_split_is_deterministic_and_disjoint():
    a = split_volumes(NAMES, seed=0, n_val=20, n_test=40)
    b = split_volumes(list(reversed(NAMES)), seed=0, n_val=20, n_test=40)  # input order does not matter
    assert a == b
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (141, 20, 40)
    assert set(a["train"]) | set(a["val"]) | set(a["test"]) == set(NAMES)
    assert not set(a["test"]) & (set(a["train"]) | set(a["val"]))
    assert not set(a["val"]) & set(a["train"])
    assert split_volumes(NAMES, seed=1, n_val=20, n_test=40)["test"] != a["test"]


def test_labelled_volumes_come_from_train_and_nest():
    split = split_volumes(NAMES, seed=0, n_val=20, n_test=40)
    order = protocol.labeled_order(split["train"], seed=2)
    assert order == protocol.labeled_order(split["train"], seed=2)
    assert sorted(order) == split["train"]
    assert [protocol.paper_count(f, 141) for f in (0.05, 0.10, 0.20)] == [7, 14, 28]


def _structure(extent: tuple[int, int], shape=(30, 12, 10), axis=0) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    view = np.moveaxis(label, axis, 0)
    view[extent[0] : extent[1] + 1, 3:8, 2:6] = 1
    view[extent[0] : extent[1] + 1, 5:8, 2:6] = 2
    return label


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("extent", [(8, 27), (0, 29), (11, 15)])
@pytest.mark.parametrize("axis", [0, 2])
def test_even_slices_are_evenly_spaced_through_the_structure(k, extent, axis):
    shape = (30, 12, 30)
    label = _structure(extent, shape, axis)
    idx = protocol.even_slices(label, axis, k)
    lo, hi = extent
    assert len(idx) == k and idx == sorted(set(idx))
    assert all(lo <= i <= hi for i in idx)
    steps = np.diff(idx)
    if k > 1:
        assert steps.max() - steps.min() <= 1  # equal spacing up to rounding
    assert abs((idx[0] - lo) - (hi - idx[-1])) <= 1  # as far from the first slice as from the last
    if k == 1:
        assert abs(idx[0] - (lo + hi) / 2) <= 0.5


def test_even_slices_ignore_255_and_need_foreground():
    label = _structure((8, 27))
    label[29] = 255  # not annotated: not structure
    assert protocol.even_slices(label, 0, 3) == protocol.even_slices(_structure((8, 27)), 0, 3)
    with pytest.raises(ValueError):
        protocol.even_slices(np.zeros((5, 5, 5), np.uint8), 0, 2)


def test_sparse_label_paints_only_the_chosen_slices():
    label = _structure((8, 27))
    sparse = protocol.sparse_label(label, 0, [10, 20])
    assert (sparse[10] == label[10]).all() and (sparse[20] == label[20]).all()
    others = np.ones(30, bool)
    others[[10, 20]] = False
    assert (sparse[others] == 255).all()


@pytest.mark.parametrize("axis", [0, 2])
def test_end_slices_are_the_empty_slices_next_to_the_structure(axis):
    label = _structure((8, 27), (30, 12, 30), axis)
    assert protocol.end_slices(label, axis) == [7, 28]
    ends = protocol.sparse_label(label, axis, protocol.end_slices(label, axis))
    assert (np.take(ends, 7, axis) == 0).all() and (np.take(ends, 28, axis) == 0).all()
    touching = _structure((0, 29), (30, 12, 30), axis)  # structure through the whole volume: no end inside it
    assert protocol.end_slices(touching, axis) == []
    with pytest.raises(ValueError):
        protocol.end_slices(np.zeros((5, 5, 5), np.uint8), 0)


def test_an_extra_budget_round_trips_and_keeps_its_own_key():
    ends = protocol.EXTRA_BUDGETS[0]
    assert ends.ends and ends.key == "sparse-10x3-ends" != protocol.TEN_BY_THREE.key
    for budget in protocol.EXTRA_BUDGETS:  # every field travels to the job's process
        job = protocol.Job("row", 1, budget, "full+pseudo")
        assert protocol.job_from_json(protocol.job_to_json(job)) == job
    grid = protocol.make_grid("cpu", None, None)
    keys = [b.key for b in protocol.EXTRA_BUDGETS]
    assert keys == ["sparse-10x3-ends", "sparse-10x5", "sparse-10x7", "sparse-10x3+across"]
    assert not set(keys) & {b.key for b in grid.budgets}  # run only when --budgets names them
    grid.budgets.append(ends)
    picked = protocol.select_jobs(protocol.plan_jobs(grid), "sparse-10x3-ends", "full+pseudo")
    assert [j.name for j in picked if j.kind == "row"] == [f"seed{s}/sparse-10x3-ends/full+pseudo" for s in range(3)]


def test_plan_puts_every_global_before_the_rows_that_need_it():
    for which in ("cpu", "full", "quick"):
        grid = protocol.make_grid(which, None, None)
        jobs = protocol.plan_jobs(grid)
        names = [j.name for j in jobs]
        assert len(names) == len(set(names))
        seen_global = set()
        for job in jobs:
            if job.kind == "global":
                seen_global.add(job.seed)
            elif protocol.ROW_STAGES[job.row][0]:
                assert job.seed in seen_global, job.name
        assert protocol.job_from_json(protocol.job_to_json(jobs[-1])) == jobs[-1]
    cpu = protocol.plan_jobs(protocol.make_grid("cpu", None, None))
    head = [j.name for j in cpu[:6]]
    assert head == [
        "seed0/global",
        "seed0/sparse-10x3/supervised",
        "seed0/sparse-10x3/full",
        "seed1/global",
        "seed1/sparse-10x3/supervised",
        "seed1/sparse-10x3/full",
    ]


def test_no_stage_sees_a_test_volume(shared_data, tmp_path):
    data = shared_data / "hippocampus"
    if not (data / "imagesTr").is_dir():
        pytest.skip("no hippocampus data")
    args = le.parse_args(["--data", str(data), "--out", str(tmp_path), "--md", str(tmp_path / "t.md")])
    bench = le.Bench(args, protocol.make_grid("cpu", None, None))
    test = {str(data / "imagesTr" / n) for n in bench.split["test"]} | {
        str(data / "labelsTr" / n) for n in bench.split["test"]
    }
    val = {str(data / "imagesTr" / n) for n in bench.split["val"]}
    for budget in (protocol.Budget("sparse", volumes=5, slices=2), protocol.Budget("paper", fraction=0.05)):
        images, labels, unlabeled, painted = bench.labels_for(0, budget)
        used = set(images) | set(unlabeled) | {p for p in labels}
        assert not used & test and not used & val
        assert len(images) + len(unlabeled) == 141
    # a painted sparse label volume really is 255 outside its evenly spaced slices
    images, labels, _, painted = bench.labels_for(0, protocol.Budget("sparse", volumes=5, slices=2))
    name = Path(images[0]).name
    sparse = np.asarray(bench.read_volume(labels[0]).array)
    painted_slices = [i for i in range(sparse.shape[0]) if (sparse[i] != 255).all()]
    assert painted_slices == painted[name] and len(painted_slices) == 2
    # "+across": the same slices along axis 0, and the structure's middle slice along axis 1 over them
    across = protocol.Budget("sparse", volumes=5, slices=2, across=True)
    images, labels, _, painted = bench.labels_for(0, across)
    crossed = np.asarray(bench.read_volume(labels[0]).array)
    truth = np.asarray(bench.read_volume(bench.label(name)).array)
    assert painted[name] == {"axis": painted_slices, "across": [1, protocol.even_slices(truth, 1, 1)[0]]}
    assert [i for i in range(crossed.shape[0]) if (crossed[i] != 255).all()] == painted_slices
    middle = painted[name]["across"][1]
    assert (crossed[:, middle] == truth[:, middle]).all()
    elsewhere = np.ones(crossed.shape, bool)
    elsewhere[painted_slices] = False
    elsewhere[:, middle] = False
    assert (crossed[elsewhere] == 255).all() and (crossed[painted_slices] == truth[painted_slices]).all()


def test_select_jobs_keeps_the_global_stages_its_rows_need():
    jobs = protocol.plan_jobs(protocol.make_grid("cpu", None, None))
    chosen = protocol.select_jobs(jobs, "sparse-10x3", "supervised,full+cpc")
    rows = [j for j in chosen if j.kind == "row"]
    assert {j.row for j in rows} == {"supervised", "full+cpc"}
    assert {j.budget.key for j in rows} == {"sparse-10x3"}
    assert {j.seed for j in chosen if j.kind == "global"} == {0, 1, 2}  # full+cpc starts from each seed's global
    only_sup = protocol.select_jobs(jobs, "sparse-10x3", "supervised")
    assert not [j for j in only_sup if j.kind == "global"]
    assert [j for j in chosen if j.kind == "global"][0] == next(j for j in jobs if j.kind == "global")
    with pytest.raises(SystemExit, match="unknown"):
        protocol.select_jobs(jobs, None, "supervised,typo")


def test_extra_rows_add_the_cpc_branch_or_the_pseudo_stage_to_a_base_row():
    assert (
        set(protocol.ROW_BRANCH) | protocol.ROW_PSEUDO == set(protocol.BRANCH_ROWS)
        and not set(protocol.ROW_BRANCH) & protocol.ROW_PSEUDO
    )
    for extra in ("cpc", "pseudo"):
        assert protocol.ROW_STAGES[f"ft+{extra}"] == protocol.ROW_STAGES["supervised"]
        assert protocol.ROW_STAGES[f"full+{extra}"] == protocol.ROW_STAGES["full"]
    jobs = [j for j in protocol.plan_jobs(protocol.make_grid("cpu", None, None)) if j.kind == "row"]
    assert set(protocol.BRANCH_ROWS) <= {j.row for j in jobs}
    # the product's pipeline is also measured on the paper protocol, after every sparse row
    paper = [i for i, j in enumerate(jobs) if j.row == "full+pseudo" and j.budget.protocol == "paper"]
    assert len(paper) == 3 * 3 and min(paper) > max(i for i, j in enumerate(jobs) if j.budget.protocol == "sparse")


def test_set_overrides_parse_json_and_refuse_unknown_keys():
    assert le.parse_overrides(["finetune_epochs=32", "local_mode=block", "widths=[8,16]"]) == {
        "finetune_epochs": 32,
        "local_mode": "block",
        "widths": [8, 16],
    }
    with pytest.raises(SystemExit, match="not a training config key"):
        le.parse_overrides(["finetune_epoch=3"])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        le.parse_overrides(["finetune_epochs"])


def test_append_keeps_earlier_runs_and_skips_their_jobs(tmp_path, shared_data):
    out = tmp_path / "out"
    out.mkdir()
    args = le.parse_args(
        ["--quick", "--data", str(shared_data / "hippocampus"), "--out", str(out), "--md", str(out / "t.md")]
    )
    grid = protocol.make_grid("quick", None, None)
    first = le.Bench(args, grid)
    first.results = [
        {
            "job": "seed0/sparse-10x3/supervised",
            "kind": "row",
            "seed": 0,
            "stages": {"finetune": {"wall_s": 10.0, "epochs": 2, "steps_per_epoch": 10}},
            "train_wall_s": 12.0,
            "eval_wall_s": 1.0,
        },
        {"job": "seed0/global", "kind": "global", "seed": 0, "stages": {}, "train_wall_s": 1.0, "eval_wall_s": 0.0},
    ]
    (out / "results.json").write_text(le.json.dumps({"meta": first.meta(), "runs": first.results}))
    again = le.Bench(
        le.parse_args(["--quick", "--append", "--data", str(shared_data / "hippocampus"), "--out", str(out)]), grid
    )
    assert [r["job"] for r in again.results] == ["seed0/sparse-10x3/supervised", "seed0/global"]
    assert again.done_jobs() == {"seed0/sparse-10x3/supervised"}  # the global's global.pt is gone
    assert again.rates["finetune"] == [0.5]
    assert again.history and again.history[0]["command"] == first.meta()["command"]
    fresh = le.Bench(le.parse_args(["--quick", "--data", str(shared_data / "hippocampus"), "--out", str(out)]), grid)
    assert fresh.results == []
    other = tmp_path / "other.json"
    other.write_text(
        le.json.dumps({"runs": [dict(first.results[0]), {**first.results[0], "job": "seed1/sparse-10x3/supervised"}]})
    )
    merged = le.Bench(
        le.parse_args(
            [
                "--quick",
                "--append",
                "--merge",
                str(other),
                "--data",
                str(shared_data / "hippocampus"),
                "--out",
                str(out),
            ]
        ),
        grid,
    )
    assert [r["job"] for r in merged.results] == [
        "seed0/sparse-10x3/supervised",
        "seed0/global",
        "seed1/sparse-10x3/supervised",
    ]


def test_seeds_can_be_a_count_a_range_or_a_list_and_a_range_plans_only_its_seeds():
    assert protocol.parse_seeds("3") == [0, 1, 2]
    assert protocol.parse_seeds("3-5") == [3, 4, 5]
    assert protocol.parse_seeds("0,4") == [0, 4]
    for bad in ("", "x", "5-3", "1,1", "-1", "0-"):
        with pytest.raises(ValueError, match="--seeds"):
            protocol.parse_seeds(bad)
    jobs = protocol.select_jobs(
        protocol.plan_jobs(protocol.make_grid("cpu", [3, 4, 5], None)), "sparse-10x3", "full+pseudo"
    )
    assert {j.seed for j in jobs} == {3, 4, 5}
    assert [j.name for j in jobs if j.kind == "global"] == ["seed3/global", "seed4/global", "seed5/global"]
