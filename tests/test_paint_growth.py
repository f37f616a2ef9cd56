"""Fine-tune and self-training epochs grow with the painted slices (TrainConfig.paint_growth, stage_plan)."""

from __future__ import annotations

import pytest
import torch

from model.config import preset
from model.slices import SliceSet
from model.train import stage_plan


def slice_set(painted: int, total: int = 400) -> SliceSet:
    return SliceSet(
        images=torch.zeros(total, 1, 8, 8, dtype=torch.float16),
        labels=torch.zeros(total, 8, 8, dtype=torch.uint8),
        labeled=torch.arange(painted),
        unlabeled=torch.arange(painted, total),
        volume_index=torch.zeros(total, dtype=torch.long),
        axis=0,
        size=8,
    )


@pytest.mark.parametrize(("painted", "growth"), [(1, 1.0), (30, 1.0), (120, 1.0), (180, 1.5), (240, 2.0), (5000, 2.0)])
def test_growth_is_one_up_to_the_reference_then_in_proportion_up_to_the_cap(painted, growth):
    assert preset("cpu", paint_growth_slices=120, paint_growth_max=2.0).paint_growth(painted) == pytest.approx(growth)


def test_without_a_reference_the_schedule_never_grows():
    assert preset("paper").paint_growth_slices is None and preset("paper").paint_growth(10_000) == 1.0


def test_the_plan_grows_only_the_fine_tune_and_self_training_epochs():
    cfg = preset("cpu", paint_growth_slices=120, paint_growth_max=3.0)
    few = {stage: (epochs, steps) for stage, epochs, steps in stage_plan(cfg, slice_set(30))}
    many = {stage: (epochs, steps) for stage, epochs, steps in stage_plan(cfg, slice_set(300))}
    assert few["finetune"] == (cfg.finetune_epochs, cfg.finetune_steps) and few["pseudo"][0] == cfg.pseudo_epochs
    assert many["finetune"] == (round(cfg.finetune_epochs * 2.5), cfg.finetune_steps)
    assert many["pseudo"][0] == round(cfg.pseudo_epochs * 2.5)
    assert many["global"] == few["global"] and many["local"] == few["local"]


def test_the_cpu_preset_quadruples_at_five_percent_of_the_volumes_and_keeps_ten_by_three():
    cfg = preset("cpu")
    assert cfg.paint_growth(30) == 1.0 and cfg.paint_growth(60) == 1.0 and cfg.paint_growth(249) == 4.0
    assert cfg.paint_growth(100) == pytest.approx(100 / 60)


@pytest.mark.parametrize("bad", [{"paint_growth_slices": 0}, {"paint_growth_max": 0.5}])
def test_a_bad_growth_setting_is_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        preset("cpu", **bad)
