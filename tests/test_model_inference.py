"""Inference: chunked over slices with bounded batches, exact output geometry, resize path for big planes."""

import numpy as np
import pytest
import torch

from helpers_kept_models import save_untrained_model
from model import checkpoint
from model.config import preset
from model.device import runtime_for
from model.inference import load_predictor, predict_array
from model.unet import UNet


class Spy(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.shapes = net, []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.net(x)


def info(axis, size, max_size=64, multiple=8):
    return {"axis": axis, "size": size, "max_size": max_size, "multiple": multiple}


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_chunks_are_bounded_and_the_result_does_not_depend_on_them(axis):
    torch.manual_seed(0)
    net = Spy(UNet(1, 4, (4, 8, 16)).eval())
    volume = np.random.default_rng(0).normal(size=(21, 30, 17)).astype(np.float32)
    rt = runtime_for("cpu", "off", "off", "off")
    whole, probs = predict_array(net, volume, info(axis, 32), rt, 4, chunk_pixels=10**9, return_probs=True)
    assert len(net.shapes) == 1
    net.shapes.clear()
    chunked, probs2 = predict_array(net, volume, info(axis, 32), rt, 4, chunk_pixels=3 * 32 * 32, return_probs=True)
    assert max(s[0] for s in net.shapes) <= 3 and sum(s[0] for s in net.shapes) == volume.shape[axis]
    assert whole.shape == volume.shape and whole.dtype == np.uint8
    np.testing.assert_array_equal(chunked, whole)
    # a batch of another size may take other kernels: the last bit of a float16 probability can differ
    np.testing.assert_allclose(probs2.astype(np.float32), probs.astype(np.float32), rtol=0, atol=1e-3)
    assert probs.shape == (4, *volume.shape)


def test_big_planes_are_resized_for_the_network_and_masks_come_back_full_size():
    net = Spy(UNet(1, 2, (4, 8)).eval())
    volume = np.zeros((150, 130, 3), np.float32)
    volume[40:110, 30:100] = 100.0
    rt = runtime_for("cpu", "off", "off", "off")
    labels, _ = predict_array(net, volume, info(2, 64), rt, 2, chunk_pixels=64 * 64)
    assert labels.shape == volume.shape
    assert all(s[-2:] == (64, 64) for s in net.shapes)  # 150x130 -> at most 64 wide, padded to the training size


def test_load_predictor_from_a_model_file(tmp_path):
    cfg = preset("quick")
    net = UNet(cfg.in_channels, 3, cfg.widths)
    checkpoint.save(
        {
            "format": checkpoint.MODEL_FORMAT,
            "state_dict": checkpoint.cpu_state(net),
            "config": cfg.to_dict(),
            "num_classes": 3,
            "slices": {**info(0, 24, 128, 8), "context": cfg.context_slices},
        },
        tmp_path / "model.pt",
    )
    predictor = load_predictor(tmp_path, device="cpu")
    labels, probs = predictor.predict(np.random.rand(5, 20, 22).astype(np.float32), spacing=(1, 1, 1))
    assert labels.shape == (5, 20, 22) and probs is None
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable slicewise model"):
        load_predictor(tmp_path / "junk")


@pytest.mark.parametrize("axis", [0, 2])
def test_slice_embeddings_are_one_per_slice_and_do_not_depend_on_chunks(axis):
    from model.inference import embed_array

    torch.manual_seed(0)
    net = UNet(1, 3, (4, 8, 16)).eval()
    volume = np.random.default_rng(1).normal(size=(9, 20, 13)).astype(np.float32)
    np.moveaxis(volume, axis, 0)[6] = np.moveaxis(volume, axis, 0)[2]  # two equal slices
    rt = runtime_for("cpu", "off", "off", "off")
    whole = embed_array(net, volume, info(axis, 24), rt, chunk_pixels=10**9)
    chunked = embed_array(net, volume, info(axis, 24), rt, chunk_pixels=2 * 24 * 24)
    assert whole.shape == (volume.shape[axis], net.bottleneck_channels) and whole.dtype == np.float32
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(whole[6], whole[2], rtol=1e-5, atol=1e-6)  # a slice's embedding is its own
    assert not np.allclose(whole[6], whole[3])


@pytest.mark.parametrize("axis", [0, 2])
def test_flip_averages_the_softmax_over_the_slice_and_its_two_mirrors(axis):
    torch.manual_seed(1)
    net = Spy(UNet(1, 3, (4, 8)).eval())
    volume = np.random.default_rng(1).normal(size=(16, 16, 16)).astype(np.float32)
    rt = runtime_for("cpu", "off", "off", "off")
    labels, probs = predict_array(net, volume, info(axis, 16), rt, 3, return_probs=True, flip=True)
    assert len(net.shapes) == 3  # one pass as it is, one per mirrored in-plane axis
    plain, plain_probs = predict_array(net, volume, info(axis, 16), rt, 3, return_probs=True)
    # naive reference: mirror the volume in each in-plane axis, predict, mirror back, average
    in_plane = [a for a in range(3) if a != axis]
    mirrored = [
        np.flip(predict_array(net, np.flip(volume, a).copy(), info(axis, 16), rt, 3, return_probs=True)[1], a + 1)
        for a in in_plane
    ]
    expected = (plain_probs.astype(np.float32) + sum(m.astype(np.float32) for m in mirrored)) / 3
    np.testing.assert_allclose(probs.astype(np.float32), expected, atol=2e-3)
    assert not np.array_equal(probs, plain_probs)  # the untrained net is not mirror-symmetric
    agree = labels == expected.argmax(axis=0)
    assert agree.mean() > 0.99  # ties within float16 rounding may break either way


def test_auto_flip_mirrors_only_within_the_time_budget():
    torch.manual_seed(1)
    net = UNet(1, 3, (4, 8)).eval()
    volume = np.random.default_rng(2).normal(size=(12, 16, 16)).astype(np.float32)
    rt = runtime_for("cpu", "off", "off", "off")
    run = dict(info=info(0, 16), runtime=rt, num_classes=3, chunk_pixels=4 * 16 * 16, return_probs=True)
    on = predict_array(net, volume, flip="on", **run)[1]
    off = predict_array(net, volume, flip="off", **run)[1]
    roomy, tight = {}, {}
    np.testing.assert_array_equal(
        predict_array(net, volume, flip="auto", flip_budget_s=1e6, report=roomy, **run)[1], on
    )
    np.testing.assert_array_equal(predict_array(net, volume, flip="auto", flip_budget_s=0, report=tight, **run)[1], off)
    assert roomy["flip"] and not tight["flip"] and "budget 0 s" in tight["flip_reason"]
    with pytest.raises(ValueError, match="flip must be"):
        predict_array(net, volume, flip="sometimes", **run)


def test_model_files_that_kept_flip_as_a_bool_still_load():
    from model.config import TrainConfig

    assert TrainConfig.from_dict({"predict_flip": True}).predict_flip == "auto"
    assert TrainConfig.from_dict({"predict_flip": False}).predict_flip == "off"
    with pytest.raises(ValueError, match="predict_flip must be one of"):
        TrainConfig(predict_flip="yes")


def naive_smoothed(probs: np.ndarray, axis: int, sigma: float) -> np.ndarray:
    """Each slice's softmax averaged with its neighbours' by a Gaussian cut at 3 sigma, end slices repeated."""
    import math

    radius = max(1, math.ceil(3 * sigma))
    weights = [math.exp(-0.5 * (d / sigma) ** 2) for d in range(-radius, radius + 1)]
    n = probs.shape[axis + 1]
    out = np.zeros(probs.shape, dtype=np.float64)
    for i in range(n):
        index = [slice(None)] * probs.ndim
        index[axis + 1] = i
        for d, w in zip(range(-radius, radius + 1), weights):
            out[tuple(index)] += w / sum(weights) * np.take(probs, min(n - 1, max(0, i + d)), axis=axis + 1)
    return out


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_smoothing_averages_each_slices_softmax_with_its_neighbours_across_chunks(axis):
    torch.manual_seed(0)
    net = Spy(UNet(1, 3, (4, 8, 16)).eval())
    volume = np.random.default_rng(1).normal(size=(13, 11, 9)).astype(np.float32)
    rt = runtime_for("cpu", "off", "off", "off")
    plain_labels, plain = predict_array(net, volume, info(axis, 16), rt, 3, chunk_pixels=10**9, return_probs=True)
    net.shapes.clear()
    # chunks of 2 slices: every chunk needs neighbours from the chunks beside it
    labels, smoothed = predict_array(
        net, volume, info(axis, 16), rt, 3, chunk_pixels=2 * 16 * 16, return_probs=True, smooth=1.0
    )
    expected = naive_smoothed(plain.astype(np.float64), axis, 1.0)
    np.testing.assert_allclose(smoothed.astype(np.float32), expected, rtol=0, atol=2e-3)
    assert (labels == expected.argmax(axis=0)).mean() > 0.99  # float16 ties aside
    # chunks stay bounded, and every slice went through the network once
    assert max(s[0] for s in net.shapes) <= 2 and sum(s[0] for s in net.shapes) == volume.shape[axis]
    np.testing.assert_array_equal(predict_array(net, volume, info(axis, 16), rt, 3, smooth=0.0)[0], plain_labels)
    # one slice a chunk, fewer than the neighbours a slice needs: slices wait for several chunks
    one = predict_array(net, volume, info(axis, 16), rt, 3, chunk_pixels=16 * 16, return_probs=True, smooth=1.0)[1]
    np.testing.assert_allclose(one.astype(np.float32), smoothed.astype(np.float32), rtol=0, atol=2e-3)


def test_a_models_predict_smooth_mm_is_sized_by_the_volumes_spacing_and_bad_values_are_refused(tmp_path):
    volume = np.random.default_rng(2).normal(size=(9, 20, 22)).astype(np.float32)
    cfg = preset("quick", predict_smooth_mm=3.0, predict_flip="off")
    save_untrained_model(tmp_path / "model.pt", cfg, {**info(0, 24, 128, 8), "context": cfg.context_slices})
    predictor = load_predictor(tmp_path, device="cpu")
    plain = predictor.predict(volume, return_probs=True)[1].astype(np.float64)  # no spacing: nothing smoothed
    unsmoothed = predict_array(predictor.net, volume, predictor.info, predictor.runtime, 3, return_probs=True)[1]
    np.testing.assert_array_equal(plain, unsmoothed.astype(np.float64))
    # 3 mm along the slicing axis (0): 1.5 slices of 2 mm, 0.5 of 6 mm; the in-plane spacing plays no part
    for slice_mm, in_plane in ((2.0, 0.5), (6.0, 9.0)):
        probs = predictor.predict(volume, (slice_mm, in_plane, in_plane), return_probs=True)[1]
        expected = naive_smoothed(plain, 0, 3.0 / slice_mm)
        np.testing.assert_allclose(probs.astype(np.float64), expected, rtol=0, atol=2e-3)
    for bad in (-1.0, 5.0):
        with pytest.raises(ValueError, match="predict_smooth_mm"):
            preset("quick", predict_smooth_mm=bad)


def painted_slices(shape, axis, indices, num_classes, seed=3) -> np.ndarray:
    """A sparse label volume (IGNORE elsewhere) whose slices `indices` along `axis` hold random classes."""
    from data.volume import IGNORE

    rng = np.random.default_rng(seed)
    painted = np.full(shape, IGNORE, dtype=np.uint8)
    moved = np.moveaxis(painted, axis, 0)
    for i in indices:
        moved[i] = rng.integers(0, num_classes, size=moved.shape[1:])
    return painted


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_painted_voxels_are_certain_before_the_smoothing_and_kept_exactly(axis):
    from data.volume import IGNORE

    torch.manual_seed(0)
    net = UNet(1, 3, (4, 8, 16)).eval()
    volume = np.random.default_rng(1).normal(size=(13, 11, 9)).astype(np.float32)
    rt = runtime_for("cpu", "off", "off", "off")
    plain = predict_array(net, volume, info(axis, 16), rt, 3, chunk_pixels=10**9, return_probs=True)[1]
    painted = painted_slices(volume.shape, axis, [0, 4, 5], 3)
    # a part of the paint with a value the model has no class for: kept in the labels, not in the softmax
    np.moveaxis(painted, axis, 0)[4][:2] = 7
    # the naive reference: one-hot at the painted voxels the model has a class for, then the Gaussian
    certain = plain.astype(np.float64)
    known = (painted != IGNORE) & (painted < 3)
    for c in range(3):
        certain[c][known] = (painted[known] == c).astype(np.float64)
    expected = naive_smoothed(certain, axis, 1.0)
    expected_labels = np.where(painted != IGNORE, painted, expected.argmax(axis=0))
    for chunk in (10**9, 2 * 16 * 16, 16 * 16):  # across chunk boundaries, one slice a chunk
        labels, probs = predict_array(
            net, volume, info(axis, 16), rt, 3, chunk_pixels=chunk, return_probs=True, smooth=1.0, painted=painted
        )
        np.testing.assert_allclose(probs.astype(np.float64), expected, rtol=0, atol=2e-3)
        np.testing.assert_array_equal(labels[painted != IGNORE], painted[painted != IGNORE])
        assert (labels == expected_labels).mean() > 0.99  # float16 ties aside
    # the neighbours of a painted slice move towards it: nothing painted, nothing moves
    unpainted = predict_array(net, volume, info(axis, 16), rt, 3, smooth=1.0, painted=np.full_like(painted, IGNORE))
    np.testing.assert_array_equal(unpainted[0], predict_array(net, volume, info(axis, 16), rt, 3, smooth=1.0)[0])
    with pytest.raises(ValueError, match="do not fit"):
        predict_array(net, volume, info(axis, 16), rt, 3, painted=painted[:-1])


def test_the_predictors_clean_up_never_removes_a_painted_voxel(tmp_path):
    from data.mask_cleanup import Cleanup
    from data.volume import IGNORE

    volume = np.random.default_rng(2).normal(size=(9, 20, 22)).astype(np.float32)
    cfg = preset("quick", predict_flip="off")
    save_untrained_model(tmp_path / "model.pt", cfg, {**info(0, 24, 128, 8), "context": cfg.context_slices})
    predictor = load_predictor(tmp_path, device="cpu")
    predictor.cleanup = Cleanup.everything(3)
    # two single voxels of class 1 on painted slices of class 2: the clean-up alone keeps one part of a class
    painted = np.full(volume.shape, IGNORE, dtype=np.uint8)
    painted[3:6] = 2
    painted[4, 1, 1] = painted[4, 18, 20] = 1
    cleaned_alone = predictor.cleanup.apply(np.where(painted != IGNORE, painted, predictor.predict(volume)[0]))
    assert (cleaned_alone[3:6] != painted[3:6]).any()
    labels = predictor.predict(volume, painted=painted)[0]
    np.testing.assert_array_equal(labels[3:6], painted[3:6])


def test_a_model_trained_without_mirrors_never_averages_mirrored_slices(tmp_path):
    volume = np.random.default_rng(3).normal(size=(9, 20, 22)).astype(np.float32)
    cfg = preset("quick", flip=False, predict_flip_budget_s=1e6)  # "auto" with room to mirror
    assert cfg.predict_flip == "auto" and cfg.prediction_mirrors == "off"
    assert preset("quick", predict_flip_budget_s=1e6).prediction_mirrors == "auto"
    save_untrained_model(tmp_path / "model.pt", cfg, {**info(0, 24, 128, 8), "context": cfg.context_slices})
    predictor = load_predictor(tmp_path, device="cpu")
    report = {}
    probs = predictor.predict(volume, return_probs=True, clean=False, report=report)[1]
    run = (predictor.net, volume, predictor.info, predictor.runtime, 3)
    np.testing.assert_array_equal(probs, predict_array(*run, return_probs=True, flip="off")[1])
    assert not np.array_equal(probs, predict_array(*run, return_probs=True, flip="on")[1])
    assert not report["flip"]
    with pytest.raises(ValueError, match='predict_flip "on" averages mirrored slices'):
        preset("quick", flip=False, predict_flip="on")


def test_predict_with_paint_gives_the_models_own_and_the_painted_labels_from_one_network_pass(tmp_path):
    from data.mask_cleanup import Cleanup

    volume = np.random.default_rng(4).normal(size=(11, 20, 22)).astype(np.float32)
    cfg = preset("quick", predict_flip="on", predict_smooth_mm=2.0, predict_chunk_pixels=3 * 24 * 24)
    save_untrained_model(tmp_path / "model.pt", cfg, {**info(0, 24, 128, 8), "context": cfg.context_slices})
    predictor = load_predictor(tmp_path, device="cpu")
    predictor.cleanup = Cleanup.everything(3)
    painted = painted_slices(volume.shape, 0, [2, 7], 3)
    spy = Spy(predictor.net)
    predictor.net = spy
    labels, certain, probs = predictor.predict_with_paint(volume, painted, spacing=(1.0, 1.0, 1.0), return_probs=True)
    passes = len(spy.shapes)
    alone = predictor.predict(volume, spacing=(1.0, 1.0, 1.0), return_probs=True)
    assert len(spy.shapes) == 2 * passes  # the plain prediction costs what both together did
    with_paint = predictor.predict(volume, spacing=(1.0, 1.0, 1.0), painted=painted)[0]
    np.testing.assert_array_equal(labels, alone[0])
    np.testing.assert_array_equal(probs, alone[1])  # the model's own softmax, not the painted one-hot
    np.testing.assert_array_equal(certain, with_paint)
    # the smoothing carries the paint into slices next to it
    changed = set(np.flatnonzero((certain != labels).any(axis=(1, 2))))
    assert {2, 7} < changed
