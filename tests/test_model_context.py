"""2.5D input (`context_slices`): each slice goes into the network between its neighbours of the same volume."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from model import checkpoint, slices
from model.config import TrainConfig, context_offsets, preset
from model.device import runtime_for
from model.inference import load_predictor, predict_array
from model.train import train
from model.unet import UNet
from tests.test_model_train import CASES, HIPPO, sparse_dataset


def naive_neighbours(volume_slices: list[torch.Tensor], context: int, far: int = 0) -> torch.Tensor:
    """For each slice of each volume, the stack of its neighbours (and, with `far`, of the slices that far
    away first and last), index clamped to the volume, by loops."""
    out = []
    offsets = [-far] * bool(far) + list(range(-context, context + 1)) + [far] * bool(far)
    for images in volume_slices:
        n = len(images)
        for i in range(n):
            out.append(torch.stack([images[min(max(i + d, 0), n - 1), 0] for d in offsets]))
    return torch.stack(out)


def test_a_slice_gets_its_own_volumes_neighbours_repeated_at_the_ends():
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(5, 8, 8)).astype(np.float32), rng.normal(size=(3, 8, 8)).astype(np.float32)]
    plain = slices.build_slices(images, [None, None], axis=0, max_size=64, multiple=8)
    s = slices.build_slices(images, [None, None], axis=0, max_size=64, multiple=8, context=2)
    expected = naive_neighbours([plain.images[:5], plain.images[5:]], 2)
    idx = torch.tensor([0, 4, 5, 7, 2])
    assert s.stack(idx).shape == (5, 5, s.size, s.size)
    torch.testing.assert_close(s.stack(idx), expected[idx])
    torch.testing.assert_close(plain.stack(idx), plain.images[idx])  # no context: the slice alone


def test_far_slices_come_first_and_last_and_are_clamped_to_their_own_volume():
    rng = np.random.default_rng(3)
    images = [rng.normal(size=(9, 8, 8)).astype(np.float32), rng.normal(size=(4, 8, 8)).astype(np.float32)]
    plain = slices.build_slices(images, [None, None], axis=0, max_size=64, multiple=8)
    s = slices.build_slices(images, [None, None], axis=0, max_size=64, multiple=8, context=1, far=3)
    expected = naive_neighbours([plain.images[:9], plain.images[9:]], 1, far=3)
    idx = torch.tensor([0, 4, 8, 9, 12, 10])
    assert s.stack(idx).shape == (6, 5, s.size, s.size)
    torch.testing.assert_close(s.stack(idx), expected[idx])
    assert context_offsets(1, 3) == (-3, -1, 0, 1, 3) and context_offsets(2) == (-2, -1, 0, 1, 2)


def test_far_context_sets_the_networks_width_and_is_checked():
    assert TrainConfig(context_slices=1, context_far=5).in_channels == 5
    assert TrainConfig(context_slices=1, context_far=5, position_channel=True).in_channels == 6
    for bad in (1, 40, -2):  # not beyond the near neighbours, too far, negative
        with pytest.raises(ValueError, match="context_far"):
            TrainConfig(context_slices=1, context_far=bad)


@pytest.mark.parametrize("start,stop,far", [(0, 3, 0), (2, 6, 0), (4, 7, 0), (0, 3, 4), (2, 6, 4), (5, 7, 4)])
def test_inference_cuts_the_same_neighbours_chunk_by_chunk(start, stop, far):
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(7, 8, 8)).astype(np.float32)
    whole = slices.build_slices([volume], [None], axis=0, max_size=64, multiple=8, context=1, far=far)
    lo, hi = slices.context_range(start, stop, 7, 1, far)
    where = slices.placement(volume.shape, 0, 64, 8, whole.size)
    stats = slices.intensity_stats(volume)
    x = slices.to_network(stats.apply(slices.slab(volume, 0, lo, hi)), where, stats.background)
    got = slices.with_context(x, lo, start, stop, 7, 1, far)
    torch.testing.assert_close(got, whole.stack(torch.arange(start, stop)).float(), atol=2e-3, rtol=0)


@pytest.mark.parametrize("far", [0, 3])
def test_chunked_prediction_equals_whole_volume_prediction_with_context(far):
    torch.manual_seed(0)
    net = UNet(3 + 2 * bool(far), 2, (4, 8)).eval()
    volume = np.random.default_rng(2).normal(size=(9, 16, 16)).astype(np.float32)
    info = {"axis": 0, "size": 16, "max_size": 64, "multiple": 4, "context": 1, "context_far": far}
    rt = runtime_for("cpu", "off", "off", "off")
    whole = predict_array(net, volume, info, rt, 2, chunk_pixels=10**9, return_probs=True)[1]
    chunked = predict_array(net, volume, info, rt, 2, chunk_pixels=2 * 16 * 16, return_probs=True)[1]
    np.testing.assert_allclose(chunked.astype(np.float32), whole.astype(np.float32), atol=2e-3)


@pytest.mark.parametrize("far", [0, 4])
def test_a_model_trained_with_context_predicts_and_keeps_its_width(tmp_path, far):
    if not HIPPO.is_dir():
        pytest.skip("hippocampus data not found")
    images, labels = sparse_dataset(tmp_path / "data", cases=CASES[:2])
    cfg = preset(
        "quick",
        images=images,
        labels=labels,
        out_dir=str(tmp_path / "run"),
        device="cpu",
        context_slices=1,
        context_far=far,
        global_stage=False,
        local_stage=True,
        local_epochs=1,
        local_steps=2,
        pseudo_stage=False,
        finetune_epochs=1,
        finetune_steps=2,
        budget_s=None,
        cleanup="off",
    )
    train(cfg)
    predictor = load_predictor(tmp_path / "run", device="cpu")
    assert predictor.config.in_channels == (5 if far else 3) and predictor.info["context"] == 1
    assert predictor.info["context_far"] == far
    image = np.asarray(nib.load(HIPPO / "imagesTr" / CASES[2]).dataobj, dtype=np.float32)
    labels_out, _ = predictor.predict(image)
    assert labels_out.shape == image.shape


def test_context_is_part_of_the_network():
    with pytest.raises(ValueError, match="context_slices"):
        TrainConfig(context_slices=-1)
    from model.config import ARCHITECTURE_FIELDS

    assert "context_slices" in ARCHITECTURE_FIELDS and "context_far" in ARCHITECTURE_FIELDS


def test_a_model_file_from_before_context_existed_loads_as_one_slice_in(tmp_path):
    cfg = preset("quick", num_classes=3)
    assert cfg.context_slices >= 1  # today's default takes neighbours
    old_config = {k: v for k, v in cfg.to_dict().items() if k not in ("context_slices", "context_far")}
    checkpoint.save(
        {
            "format": checkpoint.MODEL_FORMAT,
            "state_dict": checkpoint.cpu_state(UNet(1, 3, cfg.widths, cfg.bottleneck)),
            "config": old_config,
            "num_classes": 3,
            "slices": {"axis": 0, "size": 32, "max_size": 128, "multiple": 8},
        },
        tmp_path / "model.pt",
    )
    predictor = load_predictor(tmp_path, device="cpu")
    assert predictor.config.context_slices == 0 and predictor.config.in_channels == 1
    assert predictor.config.context_far == 0  # nor far slices
    labels, _ = predictor.predict(np.random.rand(4, 20, 22).astype(np.float32))
    assert labels.shape == (4, 20, 22)
    # a config given by hand still gets today's default
    assert TrainConfig.from_dict({}).context_slices == cfg.context_slices
