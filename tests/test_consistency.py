"""Consistency on unpainted slices (`consistency_weight`): confident weak-view predictions teach the strong view."""

from __future__ import annotations

import math

import pytest
import torch
from test_model_train import sparse_dataset

from model.augment import random_cutout
from model.config import TrainConfig, preset
from model.device import runtime_for
from model.losses import confident_ce
from model.train import Trainer, load_data, train


def _naive_confident_ce(logits: torch.Tensor, probs: torch.Tensor, threshold: float) -> float:
    """Pixel by pixel: -log softmax(student)[teacher's argmax] where the teacher is sure enough, else 0;
    the mean over every pixel."""
    b, k, h, w = logits.shape
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                p = [float(probs[i, c, y, x]) for c in range(k)]
                if max(p) < threshold:
                    continue
                target = p.index(max(p))
                scores = [float(logits[i, c, y, x]) for c in range(k)]
                lse = math.log(sum(math.exp(s) for s in scores))
                total += lse - scores[target]
    return total / (b * h * w)


@pytest.mark.parametrize("threshold", [0.4, 0.6, 0.9])
def test_confident_ce_matches_a_per_pixel_loop(threshold):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, 4, generator=g)
    probs = torch.softmax(2 * torch.randn(2, 3, 5, 4, generator=g), dim=1)
    assert float(confident_ce(logits, probs, threshold)) == pytest.approx(
        _naive_confident_ce(logits, probs, threshold), rel=1e-5
    )


def test_unconfident_pixels_get_no_gradient_and_none_confident_gives_zero():
    logits = torch.zeros(1, 2, 2, 2, requires_grad=True)
    probs = torch.tensor([[[[0.95, 0.5], [0.5, 0.5]], [[0.05, 0.5], [0.5, 0.5]]]])
    confident_ce(logits, probs, 0.9).backward()
    grad = logits.grad.abs().sum(dim=1)[0]
    assert grad[0, 0] > 0 and float(grad.flatten()[1:].sum()) == 0.0
    nothing = confident_ce(logits, torch.full((1, 2, 2, 2), 0.5), 0.9)
    assert float(nothing.detach()) == 0.0 and nothing.requires_grad


def test_confident_ce_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        confident_ce(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 4), 0.5)


def test_cutout_hides_one_box_per_slice_with_the_slice_mean():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    out = random_cutout(x, g=torch.Generator().manual_seed(0), max_side=0.5)
    for i in range(2):
        changed = (out[i, 0] != x[i, 0]).nonzero()
        assert len(changed) > 0
        (top, left), (bottom, right) = changed.min(dim=0).values.tolist(), changed.max(dim=0).values.tolist()
        assert bottom - top + 1 <= 8 and right - left + 1 <= 8  # at most half of each side
        box = out[i, 0, top : bottom + 1, left : right + 1]
        assert torch.allclose(box, x[i].mean().expand_as(box))  # one filled rectangle
    again = random_cutout(x, g=torch.Generator().manual_seed(0), max_side=0.5)
    assert torch.equal(out, again)


@pytest.mark.parametrize(
    "bad", [dict(consistency_weight=-1.0), dict(consistency_threshold=0.0), dict(consistency_batch=0)]
)
def test_bad_consistency_settings_are_refused(bad):
    with pytest.raises(ValueError, match="consistency"):
        preset("quick", **bad)


def test_consistency_reads_unpainted_volumes_and_leaves_the_global_stage_alone():
    assert preset("quick", global_stage=False, consistency_weight=1.0).reads_unpainted
    assert not preset("quick", global_stage=False).reads_unpainted
    assert not any(f.startswith("consistency") for f in TrainConfig.fields_shaping_global())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sparse_dataset(tmp_path_factory.mktemp("hippo"), painted=2)


def _trainer(data, tmp_path, **changes):
    images, labels = data
    cfg = preset(
        "quick",
        images=images[:1],
        labels=labels[:1],
        unlabeled=images[1:],
        out_dir=str(tmp_path / "m"),
        device="cpu",
        consistency_weight=1.0,
        **changes,
    )
    return Trainer(cfg, load_data(cfg), runtime_for("cpu", "off", "off", "off"))


class Recorder(torch.nn.Module):
    """Wraps the U-Net and keeps every batch it was given."""

    def __init__(self, net):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x, **kw):
        self.inputs.append(x.detach().clone())
        return self.net(x, **kw)


def test_the_loss_is_the_strong_views_ce_against_the_weak_views_confident_pixels(data, tmp_path):
    trainer = _trainer(data, tmp_path, consistency_threshold=0.4)
    trainer.net = Recorder(trainer.net)
    loss = trainer.consistency_loss(4)
    weak, strong = trainer.net.inputs
    assert weak.shape == strong.shape and weak.shape[0] == 4 and not torch.equal(weak, strong)
    with torch.no_grad():
        expected = confident_ce(trainer.unet(strong), torch.softmax(trainer.unet(weak), dim=1), 0.4)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.unet.parameters())
    assert 0 < trainer.consistency_seen[-1] <= 1


def test_an_unsure_teacher_teaches_nothing(data, tmp_path):
    trainer = _trainer(data, tmp_path, consistency_threshold=1.0)
    trainer.net = lambda x, **kw: torch.zeros(x.shape[0], 3, *x.shape[-2:], requires_grad=True)
    assert float(trainer.consistency_loss(2)) == 0.0 and trainer.consistency_seen == [0.0]


def test_fine_tune_and_self_training_report_the_confident_share(data, tmp_path):
    images, labels = data
    common = dict(
        images=images[:1],
        labels=labels[:1],
        unlabeled=images[1:],
        device="cpu",
        global_stage=False,
        local_stage=False,
        pseudo_stage=True,
    )
    metrics = train(preset("quick", out_dir=str(tmp_path / "on"), consistency_weight=1.0, **common))
    for stage in ("finetune", "pseudo"):
        assert 0 <= metrics["stages"][stage]["consistency_confident"] <= 1
    assert (tmp_path / "on" / "model.pt").is_file()
    off = train(preset("quick", out_dir=str(tmp_path / "off"), **common))
    assert "consistency_confident" not in off["stages"]["finetune"]
