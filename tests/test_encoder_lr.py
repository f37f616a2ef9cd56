"""`finetune_encoder_lr_scale`: fine-tune and self-training move the pretrained encoder at a share of the
stage's learning rate, the decoder and head at the full rate."""

from __future__ import annotations

import pytest
import torch
from test_model_train import sparse_dataset

from model.config import TrainConfig, preset
from model.device import runtime_for
from model.train import ENCODER_PREFIXES, Trainer, load_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sparse_dataset(tmp_path_factory.mktemp("hippo"), painted=2)


def trainer(data, tmp_path, **changes) -> Trainer:
    images, labels = data
    cfg = preset("quick", images=images[:2], labels=labels[:2], out_dir=str(tmp_path / "m"), device="cpu", **changes)
    return Trainer(cfg, load_data(cfg), runtime_for("cpu", "off", "off", "off"))


def test_by_default_every_parameter_trains_at_the_stages_rate_in_the_networks_order(data, tmp_path):
    t = trainer(data, tmp_path)
    for stage, lr in (("finetune", t.cfg.finetune_lr), ("pseudo", t.cfg.pseudo_lr)):
        groups = t.optimizer(stage).param_groups
        assert len(groups) == 1 and groups[0]["lr"] == lr
        assert [id(p) for p in groups[0]["params"]] == [id(p) for p in t.unet.parameters()]


@pytest.mark.parametrize("stage", ["finetune", "pseudo"])
def test_the_encoder_takes_its_share_of_the_rate_and_the_rest_the_whole(data, tmp_path, stage):
    t = trainer(data, tmp_path, finetune_encoder_lr_scale=0.1, weight_decay=0.0)
    lr = t.cfg.pseudo_lr if stage == "pseudo" else t.cfg.finetune_lr
    opt = t.optimizer(stage)
    before = {n: p.detach().clone() for n, p in t.unet.named_parameters()}
    for p in t.unet.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    # Adam's first step moves every weight by lr * g / (|g| + eps): by its group's rate, for a gradient of 1
    for name, p in t.unet.named_parameters():
        expected = lr * (0.1 if name.startswith(ENCODER_PREFIXES) else 1.0)
        moved = (before[name] - p.detach()).abs()
        torch.testing.assert_close(moved, torch.full_like(moved, expected), rtol=1e-3, atol=1e-9)
    trained = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(trained) == sorted(id(p) for p in t.unet.parameters())  # each one, once


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_a_share_outside_zero_to_one_is_refused(bad):
    with pytest.raises(ValueError, match="finetune_encoder_lr_scale"):
        TrainConfig(finetune_encoder_lr_scale=bad)
