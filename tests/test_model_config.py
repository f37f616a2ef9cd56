"""TrainConfig: unknown keys refused by name, presets, JSON round trip, invalid values."""

import dataclasses
import json
from pathlib import Path

import pytest

from model.config import PRESETS, TrainConfig, preset


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="unknown config keys: fintune_epochs, lr"):
        TrainConfig.from_dict({"fintune_epochs": 3, "lr": 0.1, "seed": 1})


def test_preset_overrides_and_unknown_override():
    cfg = preset("cpu", seed=7, widths=[8, 16])
    assert cfg.seed == 7 and cfg.widths == (8, 16)
    with pytest.raises(ValueError, match="unknown config keys: bogus"):
        preset("quick", bogus=1)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_presets_are_ordered_by_size():
    quick, cpu, paper = (preset(n) for n in ("quick", "cpu", "paper"))
    assert PRESETS == ("quick", "cpu", "paper")
    assert paper.widths == (64, 128, 256, 512)
    assert (paper.global_epochs, paper.local_epochs, paper.finetune_epochs) == (100, 70, 120)
    assert (paper.global_lr, paper.local_lr, paper.local_batch, paper.finetune_batch) == (3e-4, 1e-4, 4, 8)
    assert max(quick.widths) < max(cpu.widths) < max(paper.widths)


def test_json_round_trip_is_exact():
    cfg = preset("quick", images=["a.nii.gz"], labels=["b.nii.gz"], out_dir="/tmp/x", axis=2)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().seed = 3


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"local_mode": "tiles"}, "local_mode"),
        ({"device": "tpu"}, "device"),
        ({"axis": 3}, "axis"),
        ({"images": ["a"], "labels": ["a", "b"]}, "label volumes"),
        ({"num_classes": 1}, "num_classes"),
        ({"finetune_steps": 0}, "finetune_steps"),
        ({"elastic": -0.1}, "elastic"),
        ({"lr_decay": "cosine"}, "lr_decay"),
        ({"elastic": 0.9}, "elastic"),
    ],
)
def test_invalid_values(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(bad)


def test_load_reports_bad_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainConfig.load(path)


def test_retrain_config_reuses_the_previous_run(tmp_path):
    from model.retrain import retrain_config

    cfg = preset("cpu", out_dir=str(tmp_path / "v2"))
    assert retrain_config(cfg, tmp_path / "v1") == cfg  # nothing to reuse yet
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "global.pt").touch()
    shared = retrain_config(cfg, tmp_path / "v1")
    assert shared.init_from == str(tmp_path / "v1" / "global.pt") and not shared.global_stage and shared.local_stage
    (tmp_path / "v1" / "model.pt").touch()
    refresh = retrain_config(cfg, tmp_path / "v1", refresh=True)
    assert refresh.init_from.endswith("model.pt") and (refresh.global_stage, refresh.local_stage) == (False, False)
    assert cfg.pseudo_stage and shared.pseudo_stage and not refresh.pseudo_stage  # the refresh stays short


def test_every_preset_keeps_its_values():
    """The presets' values as measured in docs/benchmarks/; a change to one is a decision, so it shows here."""
    snapshot = json.loads((Path(__file__).parent / "snapshots" / "presets.json").read_text())
    assert sorted(snapshot) == sorted(PRESETS)
    for name in PRESETS:
        assert json.loads(json.dumps(preset(name).to_dict())) == snapshot[name], name
