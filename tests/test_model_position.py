"""`position_channel`: a slice's place along the axis in its volume goes into the network as one more channel."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from model import slices
from model.config import TrainConfig, preset
from model.device import runtime_for
from model.inference import _network_input, load_predictor, predict_array
from model.train import Trainer, load_data, train
from model.unet import POSITION_BINS, UNet, place_features


def _volumes():
    rng = np.random.default_rng(0)
    return [rng.normal(size=(5, 8, 8)).astype(np.float32), rng.normal(size=(1, 8, 8)).astype(np.float32)]


def test_the_channel_runs_from_minus_one_at_the_first_slice_to_one_at_the_last():
    s = slices.build_slices(_volumes(), [None, None], axis=0, max_size=64, multiple=8, context=1, position=True)
    x = s.stack(torch.arange(6)).float()
    assert x.shape == (6, 4, s.size, s.size)  # 3 context channels + the position
    expected = [-1.0, -0.5, 0.0, 0.5, 1.0, 0.0]  # a volume of one slice sits in the middle
    for i, value in enumerate(expected):
        assert torch.all(x[i, -1] == value), i
    plain = slices.build_slices(_volumes(), [None, None], axis=0, max_size=64, multiple=8, context=1)
    torch.testing.assert_close(x[:, :-1], plain.stack(torch.arange(6)).float())  # the images are unchanged


def test_slices_stack_inside_a_bf16_autocast_region():
    # self-training labels its slices with the batch cut inside autocast (the stored slices are float16)
    s = slices.build_slices(_volumes(), [None, None], axis=0, max_size=64, multiple=8, context=1, position=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = s.stack(torch.arange(6))
    assert x.shape == (6, 4, s.size, s.size) and torch.all(x[4, -1] == 1.0)


@pytest.mark.parametrize("start,stop", [(0, 2), (1, 5), (3, 5)])
def test_inference_gives_each_chunk_the_places_training_gave(start, stop):
    volume = _volumes()[0]
    whole = slices.build_slices([volume], [None], axis=0, max_size=64, multiple=8, context=1, position=True)
    where = slices.placement(volume.shape, 0, 64, 8, whole.size)
    info = {"axis": 0, "context": 1, "position": True}
    got = _network_input(volume, info, start, stop, where, slices.intensity_stats(volume))
    torch.testing.assert_close(got, whole.stack(torch.arange(start, stop)).float(), atol=2e-3, rtol=0)


def test_chunked_prediction_equals_whole_volume_prediction_with_the_position():
    torch.manual_seed(0)
    net = UNet(4, 2, (4, 8), position=True).eval()
    volume = np.random.default_rng(2).normal(size=(9, 16, 16)).astype(np.float32)
    info = {"axis": 0, "size": 16, "max_size": 64, "multiple": 4, "context": 1, "position": True}
    rt = runtime_for("cpu", "off", "off", "off")
    whole = predict_array(net, volume, info, rt, 2, chunk_pixels=10**9, return_probs=True)[1]
    chunked = predict_array(net, volume, info, rt, 2, chunk_pixels=3 * 16 * 16, return_probs=True)[1]
    np.testing.assert_allclose(chunked.astype(np.float32), whole.astype(np.float32), atol=2e-3)


def _write_stack(folder, name, n=12, size=24):
    """A volume whose slices along axis 0 all show the same disc; label 1 in the first half, 2 in the second.
    Only a slice's place tells its class."""
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2).astype(np.float32)
    image = np.repeat(disc[None], n, axis=0) * 100 + 10
    label = np.repeat(disc[None], n, axis=0).astype(np.uint8)
    label[n // 2 :] *= 2
    nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), folder / f"{name}_label.nii.gz")
    return str(folder / f"{name}.nii.gz"), str(folder / f"{name}_label.nii.gz"), label


@pytest.mark.parametrize("position", [False, True])
def test_only_the_position_tells_identical_slices_apart(tmp_path, position):
    image, label_path, label = _write_stack(tmp_path, "stack")
    cfg = preset(
        "quick",
        images=[image],
        labels=[label_path],
        out_dir=str(tmp_path / f"m{position}"),
        device="cpu",
        axis=0,
        global_stage=False,
        local_stage=False,
        context_slices=0,
        position_channel=position,
        augment=False,
        finetune_epochs=1,
        finetune_steps=150,
        finetune_batch=8,
        finetune_lr=3e-3,
    )
    train(cfg)
    p = load_predictor(tmp_path / f"m{position}", device="cpu")
    pred, _ = predict_array(p.net, np.asarray(nib.load(image).dataobj), p.info, p.runtime, p.num_classes)
    right = float(((pred == label) | (label == 0)).all(axis=(1, 2)).mean())
    # without the place the two halves look the same, so at most one of them can come out right
    assert right == 1.0 if position else right <= 0.75


def test_intensity_augmentation_leaves_the_position_channel_alone(tmp_path):
    image, label_path, _ = _write_stack(tmp_path, "stack")
    cfg = preset(
        "quick", images=[image], labels=[label_path], out_dir=str(tmp_path / "m"), device="cpu", axis=0,
        position_channel=True, consistency_weight=1.0,
    )  # fmt: skip
    trainer = Trainer(cfg, load_data(cfg), runtime_for("cpu", "off", "off", "off"))
    x = trainer.data.slices.stack(torch.arange(12)).float()
    out = trainer._intensity(x)
    assert torch.equal(out[:, -1], x[:, -1]) and not torch.equal(out[:, :-1], x[:, :-1])
    assert cfg.in_channels == 4
    # the encoder takes the 3 image channels, the 1 x 1 head the decoder's features and the place's bumps
    assert trainer.unet.encoder[0][0].in_channels == 3
    assert trainer.unet.seg_head.in_channels == trainer.unet.widths[0] + POSITION_BINS


def test_only_the_head_sees_the_place_so_the_global_stage_is_unchanged():
    torch.manual_seed(0)
    net = UNet(4, 3, (4, 8), position=True).eval()
    x = torch.randn(2, 4, 16, 16)
    moved = x.clone()
    moved[:, -1] = -x[:, -1] + 0.5
    with torch.no_grad():
        assert torch.equal(net.encode(x)[1], net.encode(moved)[1])  # what the global stage trains on
        (a, fa), (b, fb) = net(x, return_features=True), net(moved, return_features=True)
    assert torch.equal(fa["decoder"], fb["decoder"]) and not torch.allclose(a, b)
    assert "position_channel" not in TrainConfig.fields_shaping_global()


def test_place_features_are_gaussian_bumps_on_evenly_spaced_centres():
    place = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    f = place_features(place)
    assert f.shape == (3, POSITION_BINS, 2, 2)
    centres = [-1 + 2 * k / (POSITION_BINS - 1) for k in range(POSITION_BINS)]
    sigma = 2 / (POSITION_BINS - 1)
    for i, p in enumerate([-1.0, 0.0, 1.0]):
        expected = torch.tensor([math.exp(-0.5 * ((p - c) / sigma) ** 2) for c in centres])
        torch.testing.assert_close(f[i, :, 0, 0], expected)
