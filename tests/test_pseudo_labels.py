"""Self-training (the optional `pseudo` stage): confident pixels of unpainted slices become labels."""

from __future__ import annotations

import pytest
import torch
from test_model_train import sparse_dataset

from model.config import preset
from model.device import runtime_for
from model.train import IGNORE, Trainer, load_data, stage_plan, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    images, labels = sparse_dataset(tmp_path_factory.mktemp("hippo"), painted=2)
    return images, labels


def _trainer(data, tmp_path, **changes):
    images, labels = data
    cfg = preset(
        "quick",
        images=images[:2],
        labels=[labels[0], ""],
        unlabeled=images[2:],
        out_dir=str(tmp_path / "m"),
        device="cpu",
        pseudo_stage=True,
        **changes,
    )
    return Trainer(cfg, load_data(cfg), runtime_for("cpu", "off", "off", "off"))


class FixedLogits(torch.nn.Module):
    """Class 1 with probability ~0.95 in the left half of every slice, a near tie (~0.4) in the right half."""

    def forward(self, x):
        n, _, h, w = x.shape
        logits = torch.zeros(n, 3, h, w)
        logits[:, 1, :, : w // 2] = 4.0
        logits[:, 1, :, w // 2 :] = 0.2
        return logits


@pytest.mark.parametrize("scope", ["painted", "all"])
def test_only_confident_pixels_of_unpainted_slices_become_labels(data, tmp_path, scope):
    trainer = _trainer(data, tmp_path, pseudo_scope=scope, pseudo_threshold=0.9)
    trainer.net = FixedLogits()
    info = trainer.make_pseudo_labels()
    s = trainer.data.slices
    pool, labels = trainer.pseudo
    assert not set(pool.tolist()) & set(s.labeled.tolist())  # painted slices keep their paint
    owners = set(s.volume_index[pool].tolist())
    assert owners == ({0} if scope == "painted" else {0, 1, 2})  # volume 1 has no label file, 2 is unlabeled
    assert info["slices"] == len(pool) == info["pool_slices"]
    half = s.size // 2
    assert (labels[:, :, :half] == 1).all() and (labels[:, :, half:] == IGNORE).all()
    assert info["confident_fraction"] == pytest.approx(0.5)


def test_a_batch_mixes_painted_and_pseudo_labelled_slices(data, tmp_path):
    trainer = _trainer(data, tmp_path, pseudo_batch=8, pseudo_fraction=0.25)
    trainer.net = FixedLogits()
    trainer.make_pseudo_labels()
    x, y = trainer._pseudo_batch()
    assert x.shape[0] == y.shape[0] == 8
    half = trainer.data.slices.size // 2
    pseudo_pattern = (y[:, :, :half] == 1).flatten(1).all(dim=1) & (y[:, :, half:] == IGNORE).flatten(1).all(dim=1)
    assert pseudo_pattern.tolist() == [False] * 6 + [True] * 2  # 6 painted slices, then 8 x 0.25 pseudo ones


def test_the_pseudo_stage_runs_after_fine_tune_and_is_reported(data, tmp_path):
    images, labels = data
    cfg = preset(
        "quick",
        images=images,
        labels=labels,
        out_dir=str(tmp_path / "m"),
        device="cpu",
        global_stage=False,
        local_stage=False,
        pseudo_stage=True,
        pseudo_epochs=1,
        pseudo_steps=3,
        pseudo_threshold=0.5,
    )
    assert [p[0] for p in stage_plan(cfg, load_data(cfg).slices)] == ["finetune", "pseudo"]
    metrics = train(cfg)
    assert metrics["stages"]["pseudo"]["epochs"] == 1 and metrics["stages"]["pseudo"]["steps_per_epoch"] == 3
    assert metrics["pseudo"]["pool_slices"] > 0 and 0 <= metrics["pseudo"]["confident_fraction"] <= 1
    assert (tmp_path / "m" / "model.pt").is_file()


@pytest.mark.parametrize("bad", [dict(pseudo_threshold=0), dict(pseudo_fraction=1.5), dict(pseudo_scope="every")])
def test_bad_pseudo_settings_are_refused(bad):
    with pytest.raises(ValueError, match="pseudo"):
        preset("quick", **bad)


def test_nothing_left_to_pseudo_label_gives_painted_only_batches(data, tmp_path):
    # trained across the painted slices (partial_slices), every slice of the painted volume has a painted
    # line: the "painted" scope has no unpainted slice to label, and the stage trains on paint alone
    trainer = _trainer(data, tmp_path, axis=1, partial_slices=True, pseudo_batch=4)
    trainer.net = FixedLogits()
    s = trainer.data.slices
    assert len(s.labeled) == int((s.volume_index == 0).sum()) > 0  # every slice of volume 0 crosses paint
    assert trainer.make_pseudo_labels() == {"pool_slices": 0, "slices": 0, "confident_fraction": 0.0}
    x, y = trainer._pseudo_batch()
    assert x.shape[0] == y.shape[0] == 4
    assert set(trainer.data.slices.volume_index[s.labeled].tolist()) == {0}
