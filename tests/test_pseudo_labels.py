"""Self-training (the optional `pseudo` stage): confident pixels of unpainted slices become labels."""

from __future__ import annotations

import pytest
import torch
from test_model_train import sparse_dataset

from model import checkpoint
from model.config import TrainConfig, preset
from model.device import runtime_for
from model.pseudo_labels import paint_orders_classes, volume_pseudo_labels
from model.slices import SliceSet
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


@pytest.mark.parametrize("lines", [True, False])
def test_slices_painted_along_another_axis_are_self_training_targets_where_they_cross(data, tmp_path, lines):
    import nibabel as nib
    import numpy as np

    images, labels = data
    first = nib.load(labels[0])
    crossed = np.asarray(first.dataobj).copy()
    crossed[:, :, 5] = 2  # a slice along axis 2 painted over volume 0's two axis-0 slices
    other = np.full(nib.load(images[1]).shape, IGNORE, np.uint8)
    other[:, 7, :] = 0  # volume 1: one slice along axis 1 cleared, nothing along axis 0
    for path, array in ((tmp_path / "crossed.nii.gz", crossed), (tmp_path / "other.nii.gz", other)):
        nib.save(nib.Nifti1Image(array, first.affine), path)
    cfg = preset(
        "quick",
        images=images[:2],
        labels=[str(tmp_path / "crossed.nii.gz"), str(tmp_path / "other.nii.gz")],
        unlabeled=images[2:],
        out_dir=str(tmp_path / "m"),
        device="cpu",
        pseudo_stage=True,
        pseudo_paint_lines=lines,
    )
    trainer = Trainer(cfg, load_data(cfg), runtime_for("cpu", "off", "off", "off"))
    trainer.net = FixedLogits()
    trainer.make_pseudo_labels()
    s = trainer.data.slices
    assert s.axis == 0 and len(s.labeled) == 2  # volume 0's two slices, the only fully painted ones
    pool, targets = trainer.pseudo
    painted = s.labels[pool]
    crossing = painted != IGNORE
    left = torch.zeros_like(crossing)
    left[:, :, : s.size // 2] = True  # where the network is sure of class 1
    assert (crossing & left).any()
    if not lines:
        assert set(s.volume_index[pool].tolist()) == {0}
        assert (targets[crossing & left] == 1).all()  # the network's guesses, not the paint
        return
    assert set(s.volume_index[pool].tolist()) == {0, 1}  # volume 1's paint crosses its axis-0 slices
    assert crossing.flatten(1).any(dim=1).all()  # every unpainted axis-0 slice of both crosses their paint
    assert torch.equal(targets[crossing], painted[crossing])  # as painted, though the network says class 1
    assert (targets[crossing] != 1).all()
    assert (targets[~crossing & left] == 1).all()  # elsewhere the network's confident pixels, as before


def test_a_batch_mixes_painted_and_pseudo_labelled_slices(data, tmp_path):
    trainer = _trainer(data, tmp_path, pseudo_batch=8, pseudo_fraction=0.25)
    trainer.net = FixedLogits()
    trainer.make_pseudo_labels()
    x, y = trainer._pseudo_batch()
    assert x.shape[0] == y.shape[0] == 8
    half = trainer.data.slices.size // 2
    pseudo_pattern = (y[:, :, :half] == 1).flatten(1).all(dim=1) & (y[:, :, half:] == IGNORE).flatten(1).all(dim=1)
    assert pseudo_pattern.tolist() == [False] * 6 + [True] * 2  # 6 painted slices, then 8 x 0.25 pseudo ones


def _fine_tune_then_self_train(data, out_dir, **changes):
    """The quick preset's fine-tune and a 3-step self-training stage, nothing before them."""
    images, labels = data
    return preset(
        "quick",
        images=images,
        labels=labels,
        out_dir=str(out_dir),
        device="cpu",
        global_stage=False,
        local_stage=False,
        pseudo_stage=True,
        pseudo_epochs=1,
        pseudo_steps=3,
        pseudo_threshold=0.5,
        **changes,
    )


def test_the_pseudo_stage_runs_after_fine_tune_and_is_reported(data, tmp_path):
    cfg = _fine_tune_then_self_train(data, tmp_path / "m")
    assert [p[0] for p in stage_plan(cfg, load_data(cfg).slices)] == ["finetune", "pseudo"]
    metrics = train(cfg)
    assert metrics["stages"]["pseudo"]["epochs"] == 1 and metrics["stages"]["pseudo"]["steps_per_epoch"] == 3
    assert metrics["pseudo"]["pool_slices"] > 0 and 0 <= metrics["pseudo"]["confident_fraction"] <= 1
    assert (tmp_path / "m" / "model.pt").is_file()


@pytest.mark.parametrize("bad", [dict(pseudo_threshold=0), dict(pseudo_fraction=1.5), dict(pseudo_scope="every")])
def test_bad_pseudo_settings_are_refused(bad):
    with pytest.raises(ValueError, match="pseudo"):
        preset("quick", **bad)


def test_auto_scope_keeps_the_painted_volumes_while_they_leave_enough_to_label(data, tmp_path):
    trainer = _trainer(data, tmp_path, pseudo_scope="auto")
    trainer.net = FixedLogits()
    s = trainer.data.slices
    unpainted_of_painted = int((s.volume_index == 0).sum()) - len(s.labeled)
    assert unpainted_of_painted >= len(s.labeled)  # 2 painted slices, the rest of volume 0 unpainted
    info = trainer.make_pseudo_labels()
    assert info["scope"] == "painted" and info["pool_slices"] == unpainted_of_painted
    assert set(s.volume_index[trainer.pseudo[0]].tolist()) == {0}


def test_auto_scope_turns_to_every_volume_when_the_painted_ones_are_painted_whole(data, tmp_path):
    # every slice of volume 0 crosses paint (partial_slices across the painted axis): nothing of the painted
    # volume is left to label, so "auto" labels the volumes nobody painted instead of training on paint alone
    trainer = _trainer(data, tmp_path, axis=1, partial_slices=True, pseudo_scope="auto")
    trainer.net = FixedLogits()
    s = trainer.data.slices
    assert len(s.labeled) == int((s.volume_index == 0).sum())
    info = trainer.make_pseudo_labels()
    assert info["scope"] == "all"
    assert info["pool_slices"] == len(s.unlabeled) == int((s.volume_index != 0).sum()) > 0
    assert set(s.volume_index[trainer.pseudo[0]].tolist()) == {1, 2}


def test_auto_scope_reads_the_unpainted_volumes():
    assert preset("quick", global_stage=False, pseudo_stage=True, pseudo_scope="auto").reads_unpainted
    assert not preset("quick", global_stage=False, pseudo_stage=True, pseudo_scope="painted").reads_unpainted


def test_nothing_left_to_pseudo_label_gives_painted_only_batches(data, tmp_path):
    # trained across the painted slices (partial_slices), every slice of the painted volume has a painted
    # line: the "painted" scope has no unpainted slice to label, and the stage trains on paint alone
    trainer = _trainer(data, tmp_path, axis=1, partial_slices=True, pseudo_batch=4)
    trainer.net = FixedLogits()
    s = trainer.data.slices
    assert len(s.labeled) == int((s.volume_index == 0).sum()) > 0  # every slice of volume 0 crosses paint
    assert trainer.make_pseudo_labels() == {
        "scope": "painted",
        "whole_volumes": False,
        "pool_slices": 0,
        "slices": 0,
        "confident_fraction": 0.0,
        "padding_share": 0.0,
    }
    x, y = trainer._pseudo_batch()
    assert x.shape[0] == y.shape[0] == 4
    assert set(trainer.data.slices.volume_index[s.labeled].tolist()) == {0}


# ---- pseudo_volumes: whole volumes, mirrors averaged, the 3D clean-up the paint chooses --------------
def _toy_set(painted_truth: torch.Tensor, pad: int = 0) -> SliceSet:
    """Two volumes of 6 slices (16 x 16): volume 0 painted on slices 1 and 4 with `painted_truth`
    (6, 16, 16), volume 1 without paint. `pad`: that many pixels around each slice are padding (IGNORE
    on the painted slices too), as SliceSet pads a volume smaller than the training square."""
    n, size = 6, 16
    labels = torch.full((2 * n, size, size), IGNORE, dtype=torch.uint8)
    labels[[1, 4]] = painted_truth[[1, 4]]
    if pad:
        inside = torch.zeros(size, size, dtype=torch.bool)
        inside[pad:-pad, pad:-pad] = True
        labels[:, ~inside] = IGNORE
    painted = torch.zeros(2 * n, dtype=torch.bool)
    painted[[1, 4]] = True
    owners = torch.arange(2).repeat_interleave(n)
    return SliceSet(
        images=torch.zeros(2 * n, 1, size, size, dtype=torch.float16),
        labels=labels,
        labeled=painted.nonzero(as_tuple=True)[0],
        unlabeled=(~painted).nonzero(as_tuple=True)[0],
        volume_index=owners,
        axis=0,
        size=size,
        first=owners * n,
        last=owners * n + n - 1,
        inside=torch.tensor([[pad, pad, size - 2 * pad, size - 2 * pad]] * 2) if pad else None,
    )


def _probabilities(labels: torch.Tensor, confidence: torch.Tensor):
    """A stand-in network: softmax with `confidence` on `labels` (both (N, S, S)), the rest shared out."""

    def probabilities(idx):
        lab, conf = labels[idx].long(), confidence[idx]
        p = ((1 - conf) / 2)[:, None].repeat(1, 3, 1, 1)
        return p.scatter(1, lab[:, None], conf[:, None])

    return probabilities


def _cube() -> torch.Tensor:
    truth = torch.zeros(6, 16, 16, dtype=torch.uint8)
    truth[1:5, 4:10, 4:10] = 1
    return truth


def test_volume_pseudo_labels_drop_islands_fill_holes_and_keep_the_unsure_out():
    s = _toy_set(_cube())
    predicted = torch.cat([_cube(), _cube()])
    predicted[2, 13:15, 13:15] = 1  # a confident island away from the structure
    predicted[3, 6:8, 6:8] = 0  # a confident hole inside it
    confidence = torch.full(predicted.shape, 0.95)
    confidence[8, 0:3, 0:3] = 0.5  # volume 1: an unsure corner
    idx, labels, report = volume_pseudo_labels(s, s.unlabeled, _probabilities(predicted, confidence), 3, 0.9)
    assert idx.tolist() == s.unlabeled.tolist()  # every unpainted slice of both volumes, none of the painted
    by_slice = dict(zip(idx.tolist(), labels))
    assert (by_slice[2][13:15, 13:15] == 0).all()  # the island became background
    assert (by_slice[3][6:8, 6:8] == 1).all()  # the hole became structure
    assert (by_slice[8][0:3, 0:3] == IGNORE).all() and (by_slice[8][3:, 3:] != IGNORE).all()
    assert report["cleanup"]["classes"]["1"]["steps"] == ["largest", "fill"]
    assert report["changed_by_cleanup"] == 4 + 4 and report["volumes"] == 2


def test_volume_pseudo_labels_keep_a_second_part_the_paint_shows():
    truth = _cube()
    truth[1:5, 12:15, 12:15] = 1  # the structure really has two parts, painted on slices 1 and 4
    s = _toy_set(truth)
    predicted = torch.cat([truth, truth])
    idx, labels, report = volume_pseudo_labels(
        s, s.unlabeled, _probabilities(predicted, torch.full(predicted.shape, 0.95)), 3, 0.9
    )
    assert "largest" not in report["cleanup"]["classes"]["1"]["steps"]
    assert (dict(zip(idx.tolist(), labels))[2][12:15, 12:15] == 1).all()


def test_volume_pseudo_labels_out_of_time_label_one_painted_volume():
    s = _toy_set(_cube())
    predicted = torch.cat([_cube(), _cube()])
    probabilities = _probabilities(predicted, torch.full(predicted.shape, 0.95))
    idx, _, report = volume_pseudo_labels(s, s.unlabeled, probabilities, 3, 0.9, max_seconds=0.0)
    assert set(s.volume_index[idx].tolist()) == {0} and report["volumes"] == 1


class MirrorEquivariant(torch.nn.Module):
    """Class 1 where the slice is bright: the same answer for a slice and its mirrors."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        logits[:, 1] = 8.0 * (x[:, x.shape[1] // 2] > 0.5)
        return logits


def test_the_trainer_labels_whole_volumes_with_pseudo_volumes(data, tmp_path):
    trainer = _trainer(data, tmp_path, pseudo_volumes=True, pseudo_threshold=0.9)
    trainer.net = MirrorEquivariant()
    info = trainer.make_pseudo_labels()
    s = trainer.data.slices
    pool, labels = trainer.pseudo
    assert set(s.volume_index[pool].tolist()) == {0} and not set(pool.tolist()) & set(s.labeled.tolist())
    assert info["volumes"] == 1 and info["cleanup"]["mode"] == "auto"
    bright = s.images[pool, 0].float() > 0.5
    moved = info["changed_by_cleanup"]
    assert int(((labels == 1) != bright).sum()) <= moved  # what the clean-up did not change is the network's


@pytest.mark.parametrize("flip", ["off", "on"])
def test_pseudo_volumes_average_the_mirrors_unless_flips_are_off(data, tmp_path, flip):
    trainer = _trainer(data, tmp_path, pseudo_volumes=True, pseudo_threshold=0.9, predict_flip=flip)
    trainer.net = FixedLogits()  # sure of the left half only, so its mirror disagrees
    trainer.make_pseudo_labels()
    _, labels = trainer.pseudo if len(trainer.pseudo[0]) else (None, torch.empty(0, 1, 1))
    half = trainer.data.slices.size // 2
    left_labelled = bool(len(labels)) and bool((labels[:, :, :half] == 1).any())
    assert left_labelled == (flip == "off")


@pytest.mark.parametrize("budget, mirrors", [(None, True), (60.0, False)])
def test_auto_flips_mirror_pseudo_labels_only_without_a_time_budget(data, tmp_path, budget, mirrors):
    trainer = _trainer(data, tmp_path, pseudo_volumes=True, predict_flip="auto")
    trainer.net = MirrorEquivariant()
    assert trainer.make_pseudo_labels(budget)["mirrors"] is mirrors


# ---- pseudo_volumes "auto": whole volumes exactly when the paint puts the classes in order ------------
def _head_then_body() -> torch.Tensor:
    """Class 1 then class 2 side by side along in-plane axis 2 on every slice of the structure."""
    truth = torch.zeros(6, 16, 16, dtype=torch.uint8)
    truth[1:5, 4:10, 4:7] = 1
    truth[1:5, 4:10, 7:10] = 2
    return truth


@pytest.mark.parametrize("pad", [0, 2])
def test_paint_orders_classes_in_padded_slices(pad):
    assert paint_orders_classes(_toy_set(_head_then_body(), pad), 3)


def test_volume_pseudo_labels_put_a_misnamed_patch_in_the_order_the_paint_shows():
    s = _toy_set(_head_then_body(), pad=2)
    predicted = torch.cat([_head_then_body(), _head_then_body()])
    predicted[2, 4:10, 9] = 1  # slice 2 calls a strip of body "head", far from their boundary, confidently
    idx, labels, report = volume_pseudo_labels(
        s, s.unlabeled, _probabilities(predicted, torch.full(predicted.shape, 0.95)), 3, 0.9
    )
    assert report["cleanup"]["classes"]["order"]["axis"] == 2
    assert (dict(zip(idx.tolist(), labels))[2][4:10, 9] == 2).all()


def test_volume_pseudo_labels_leave_the_padding_out_however_sure_the_network_is_there():
    s = _toy_set(_cube(), pad=2)
    predicted = torch.cat([_cube(), _cube()])
    frame = torch.ones(16, 16, dtype=torch.bool)
    frame[2:-2, 2:-2] = False
    predicted[:, frame] = 1  # structure all over the padding, in one piece larger than the real one
    idx, labels, report = volume_pseudo_labels(
        s, s.unlabeled, _probabilities(predicted, torch.full(predicted.shape, 0.95)), 3, 0.9
    )
    assert report["cleanup"]["classes"]["1"]["steps"] == ["largest", "fill"]
    assert (labels[:, frame] == IGNORE).all()
    by_slice = dict(zip(idx.tolist(), labels))
    assert (by_slice[2][4:10, 4:10] == 1).all() and (by_slice[8][4:10, 4:10] == 1).all()  # kept, both volumes


def test_a_sliceset_knows_where_each_volume_sits_inside_its_padding():
    import numpy as np

    from model.slices import build_slices

    images = [np.zeros((4, 20, 10), np.float32), np.zeros((4, 30, 30), np.float32)]
    s = build_slices(images, [None, None], axis=0, max_size=64, multiple=16)
    assert s.size == 32
    assert s.inside.tolist() == [[6, 11, 20, 10], [1, 1, 30, 30]]


def test_paint_orders_classes_only_where_painted_slices_show_two_classes_in_runs():
    assert not paint_orders_classes(_toy_set(_cube()), 3)  # one class painted: no order to see
    ring = _head_then_body()
    ring[1:5, 4:10, 4:10] = 2
    ring[1:5, 6:8, 6:8] = 1  # class 1 inside class 2, as a ventricle in its wall: no axis fits
    assert not paint_orders_classes(_toy_set(ring), 3)


def test_older_configs_with_true_or_false_read_as_on_or_off():
    assert TrainConfig(pseudo_volumes=True).pseudo_volumes == "on"
    assert TrainConfig(pseudo_volumes=False).pseudo_volumes == "off"
    with pytest.raises(ValueError, match="pseudo_volumes must be one of"):
        TrainConfig(pseudo_volumes="sometimes")


def _paint_every_painted_slice(trainer, pattern: torch.Tensor) -> None:
    s = trainer.data.slices
    s.labels[s.labeled] = pattern.to(torch.uint8)


def test_auto_pseudo_volumes_label_slice_by_slice_when_the_paint_shows_no_order(data, tmp_path):
    results = {}
    for mode in ("off", "auto"):
        trainer = _trainer(data, tmp_path / mode, pseudo_volumes=mode, pseudo_threshold=0.9)
        size = trainer.data.slices.size
        one_class = torch.zeros(size, size)
        one_class[size // 4 : size // 2, size // 4 : size // 2] = 1
        _paint_every_painted_slice(trainer, one_class)
        trainer.net = FixedLogits()
        info = trainer.make_pseudo_labels()
        results[mode] = (info, *trainer.pseudo)
    (_, pool_off, labels_off), (auto, pool_auto, labels_auto) = results["off"], results["auto"]
    assert not auto["whole_volumes"] and "volumes" not in auto
    assert torch.equal(pool_off, pool_auto) and torch.equal(labels_off, labels_auto)


def test_auto_pseudo_volumes_label_whole_volumes_when_the_paint_orders_the_classes(data, tmp_path):
    trainer = _trainer(data, tmp_path, pseudo_volumes="auto", pseudo_threshold=0.9)
    size = trainer.data.slices.size
    head_then_body = torch.zeros(size, size)
    head_then_body[size // 4 : size // 2, size // 4 : size // 2] = 1
    head_then_body[size // 4 : size // 2, size // 2 : 3 * size // 4] = 2
    _paint_every_painted_slice(trainer, head_then_body)
    trainer.net = MirrorEquivariant()
    info = trainer.make_pseudo_labels()
    assert info["whole_volumes"] and info["volumes"] == 1
    assert info["cleanup"]["classes"]["order"]["axis"] == 2  # the in-plane axis the classes follow


def test_pseudo_contrastive_weight_trains_the_local_head_on_painted_and_pseudo_pixels(data, tmp_path):
    heads = {}
    for weight in (0.0, 1.0):
        cfg = _fine_tune_then_self_train(data, tmp_path / f"w{weight}", pseudo_contrastive_weight=weight)
        fresh = Trainer(cfg, load_data(cfg), runtime_for("cpu", "off", "off", "off")).local_head.state_dict()
        train(cfg)
        trained = checkpoint.load(tmp_path / f"w{weight}" / "checkpoint.pt")["local_head"]
        heads[weight] = any(not torch.equal(fresh[k], trained[k]) for k in fresh)
    # with the local stage off only the self-training stage can move the local head, and only with a weight
    assert heads == {0.0: False, 1.0: True}


def test_negative_pseudo_contrastive_weight_is_refused():
    with pytest.raises(ValueError, match="pseudo_contrastive_weight"):
        preset("quick", pseudo_contrastive_weight=-0.5)


def test_within_volume_marks_each_slice_s_volume_and_not_its_padding():
    import numpy as np

    from model.slices import build_slices

    images = [np.zeros((2, 20, 10), np.float32), np.zeros((3, 30, 30), np.float32)]
    s = build_slices(images, [None, None], axis=0, max_size=64, multiple=16)
    mask = s.within_volume(torch.tensor([1, 2]))  # the last slice of volume 0, the first of volume 1
    expected = torch.zeros(2, 32, 32, dtype=torch.bool)
    expected[0, 6:26, 11:21] = True
    expected[1, 1:31, 1:31] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("keep_padding", [True, False])
def test_slice_by_slice_labels_leave_the_padding_out_unless_asked(data, tmp_path, keep_padding):
    trainer = _trainer(data, tmp_path, pseudo_threshold=0.9, pseudo_label_padding=keep_padding)
    trainer.net = FixedLogits()
    info = trainer.make_pseudo_labels()
    s = trainer.data.slices
    pool, labels = trainer.pseudo
    within = s.within_volume(pool)
    assert not within.all()  # these volumes are not square: their slices are padded
    half = s.size // 2
    left = torch.zeros_like(within)
    left[:, :, :half] = True
    expected_labelled = left if keep_padding else left & within
    assert torch.equal(labels != IGNORE, expected_labelled)
    assert (labels[expected_labelled] == 1).all()
    assert info["padding_share"] == pytest.approx(float((left & ~within).sum() / left.sum()), abs=1e-4)
