"""Time-budgeted schedules (model/schedule.py) under a fake clock, and a budgeted model.train run."""

from __future__ import annotations

import json

import pytest
import torch
from test_model_train import sparse_dataset

from model.config import preset
from model.schedule import Budget, StageClock, lr_factor
from model.train import scale_lr, train


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_stage(clock: FakeClock, stage: StageClock, step_time) -> int:
    """Steps a stage the way model.train does; step_time(i) = seconds of step i -> steps run."""
    done, total = 0, stage.total()
    while done < total:
        clock.now += step_time(done)
        done += 1
        planned = stage.after_step(done)
        if planned is not None:
            total = planned
        if stage.over():
            break
    return done


def test_budgeted_stage_fits_its_seconds_even_with_slow_first_steps():
    clock = FakeClock()
    stage = StageClock(10.0, nominal_steps=10_000, clock=clock, probe=5)
    # warm-up: the first steps are 5x slower than the rest (0.1 s)
    done = run_stage(clock, stage, lambda i: 0.5 if i < 3 else 0.1)
    assert clock.now - 1000.0 <= 10.0 + 0.1
    assert 85 <= done <= 100  # the plan follows the real step time, not the warm-up
    assert stage.planned == done and stage.step_s == pytest.approx(0.1)


def test_a_fast_machine_stops_at_the_nominal_steps():
    clock = FakeClock()
    stage = StageClock(10.0, nominal_steps=50, clock=clock)
    assert run_stage(clock, stage, lambda i: 0.01) == 50 and clock.now - 1000.0 == pytest.approx(0.5)


def test_a_machine_that_slows_down_mid_stage_still_ends_on_time():
    clock = FakeClock()
    stage = StageClock(10.0, nominal_steps=10_000, clock=clock, probe=5)
    done = run_stage(clock, stage, lambda i: 0.05 if i < 100 else 1.0)  # another job takes the cores
    assert clock.now - 1000.0 <= 10.0 + 1.0 and done < 200


def test_budget_is_shared_among_the_stages_left_and_the_whole_run_fits():
    clock = FakeClock()
    shares = {"global": 0.3, "local": 0.25, "finetune": 0.3, "pseudo": 0.15}
    budget = Budget(60.0, shares, clock)
    stages = [("global", 0.2), ("local", 0.4), ("finetune", 0.1), ("pseudo", 0.15)]
    seconds = {}
    for i, (name, step_s) in enumerate(stages):
        later = [s for s, _ in stages[i + 1 :]]
        stage = budget.stage(name, later, nominal_steps=100_000)
        if name == "global":
            assert stage.seconds == pytest.approx(60.0 * 0.3)
            assert budget.later_eta(stage, later) == pytest.approx(60.0 * 0.7)
        start = clock.now
        run_stage(clock, stage, lambda _: step_s)
        seconds[name] = clock.now - start
    assert clock.now - 1000.0 <= 60.0 + 0.4  # at most one step past the budget
    assert seconds["finetune"] > seconds["pseudo"] > 0
    assert budget.left() == pytest.approx(0.0, abs=0.4)


def test_a_stage_that_ends_early_leaves_its_time_to_the_next():
    clock = FakeClock()
    budget = Budget(40.0, {"global": 0.5, "finetune": 0.5}, clock)
    first = budget.stage("global", ["finetune"], nominal_steps=10)
    run_stage(clock, first, lambda _: 0.1)  # 1 s of its 20
    assert budget.stage("finetune", [], nominal_steps=10).seconds == pytest.approx(39.0)


def test_budgeted_training_run_stops_before_the_nominal_steps(tmp_path):
    images, labels = sparse_dataset(tmp_path / "data", painted=2)
    nominal = 100_000
    cfg = preset(
        "quick",
        images=images,
        labels=labels,
        out_dir=str(tmp_path / "m"),
        device="cpu",
        global_stage=False,
        local_stage=False,
        finetune_epochs=2,
        finetune_steps=nominal // 2,
        budget_s=10.0,
        lr_decay="poly",
    )
    metrics = train(cfg)
    stage = metrics["stages"]["finetune"]
    assert 1 <= stage["steps_run"] < nominal and 0 < stage["budget_s"] <= 10.0
    # the decay follows the steps the budget plans (from the 5th step on), not the nominal 100,000
    if stage["steps_run"] >= 10:
        assert stage["final_lr"] < 0.5 * cfg.finetune_lr
    assert stage.get("stopped_by_budget") or stage["planned_steps"] == stage["steps_run"]
    events = [json.loads(line) for line in (tmp_path / "m" / "progress.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    assert all(e["eta_s"] is not None and e["eta_s"] <= 10.0 for e in steps)
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and events[-1]["event"] == "done" and events[-1]["progress"] == 1.0
    assert (tmp_path / "m" / "model.pt").exists()


def test_poly_decay_is_nnunets_formula_and_constant_is_one():
    total = 40
    for done in range(total):
        assert lr_factor("poly", done, total) == pytest.approx((1 - done / total) ** 0.9)
        assert lr_factor("constant", done, total) == 1.0
    assert lr_factor("poly", 0, total) == 1.0 and 0 < lr_factor("poly", total - 1, total) < 0.05


def test_scale_lr_keeps_each_groups_starting_rate():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-2}])
    assert scale_lr(opt, 0.5) == pytest.approx(5e-4)
    assert scale_lr(opt, 0.25) == pytest.approx(2.5e-4)  # of the start, not of the last rate
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.5e-4, 2.5e-3])
    again = torch.optim.Adam([{"params": [a], "lr": 9.0}, {"params": [b], "lr": 9.0}])
    again.load_state_dict(opt.state_dict())  # a resumed stage goes on from the same start
    assert scale_lr(again, 1.0) == pytest.approx(1e-3)


def test_a_decayed_run_ends_each_segmenting_stage_on_its_last_factor(tmp_path):
    images, labels = sparse_dataset(tmp_path / "data", painted=2)
    common = dict(
        images=images,
        labels=labels,
        device="cpu",
        global_stage=False,
        local_stage=False,
        pseudo_stage=True,
        finetune_epochs=2,
        finetune_steps=5,
        pseudo_epochs=1,
        pseudo_steps=4,
    )
    cfg = preset("quick", out_dir=str(tmp_path / "poly"), lr_decay="poly", **common)
    stages = train(cfg)["stages"]
    assert stages["finetune"]["final_lr"] == pytest.approx(cfg.finetune_lr * lr_factor("poly", 9, 10))
    assert stages["pseudo"]["final_lr"] == pytest.approx(cfg.pseudo_lr * lr_factor("poly", 3, 4))
    constant = train(preset("quick", out_dir=str(tmp_path / "constant"), **common))["stages"]
    assert "final_lr" not in constant["finetune"] and "final_lr" not in constant["pseudo"]
