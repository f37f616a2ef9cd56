"""Volumes to slices and back: adaptive size, exact crop round trip, axis choice, label checks."""

import numpy as np
import pytest
import torch

from data.errors import InvalidInput
from model import slices

IGNORE = 255


@pytest.mark.parametrize("shape, axis", [((35, 50, 35), 0), ((7, 33, 20), 1), ((30, 41, 3), 2)])
def test_pad_and_crop_round_trip_is_exact(shape, axis):
    rng = np.random.default_rng(0)
    volume = rng.normal(size=shape).astype(np.float32)
    where = slices.placement(shape, axis, max_size=256, multiple=8)
    assert all(s % 8 == 0 for s in where.size)
    x = slices.to_network(slices.slab(volume, axis), where, fill=-5.0)
    assert x.shape[-2:] == where.size
    back = slices.from_network(x, where)[:, 0].numpy()
    np.testing.assert_array_equal(back, slices.slab(volume, axis))
    # padding is the fill value, nothing else
    assert (x == -5.0).sum() == x.numel() - volume.size


def test_training_size_adapts_to_the_data():
    assert slices.training_size([(35, 50, 35), (36, 48, 33)], 0, 256, 16) == 64
    assert slices.training_size([(160, 100, 10)], 2, 256, 16) == 160
    assert slices.training_size([(512, 512, 300)], 2, 256, 16) == 256  # resized, never above the cap


def test_large_planes_are_resized_and_come_back_at_full_size():
    shape = (300, 520, 4)
    where = slices.placement(shape, 2, max_size=256, multiple=16)
    assert max(where.resized) == 256 and where.plane == (300, 520)
    volume = np.tile(np.linspace(0, 1, 520, dtype=np.float32), (300, 1))[..., None].repeat(4, axis=2)
    x = slices.to_network(slices.slab(volume, 2), where, fill=0.0)
    back = slices.from_network(x, where)[:, 0].numpy()
    assert back.shape == (4, 300, 520)
    assert np.abs(back - slices.slab(volume, 2))[:, 2:-2, 2:-2].max() < 0.01
    labels = (volume > 0.5).astype(np.uint8)
    y = slices.to_network(slices.slab(labels, 2), where, fill=IGNORE, labels=True)
    assert set(torch.unique(y).tolist()) == {0, 1, IGNORE}


def test_placement_uses_the_training_size_when_the_volume_fits():
    assert slices.placement((20, 30, 40), 0, 256, 16, size=64).size == (64, 64)
    assert slices.placement((20, 100, 40), 0, 256, 16, size=64).size == (112, 48)


def sparse(shape, painted, axis=0, value=1):
    lab = np.full(shape, IGNORE, np.uint8)
    for i in painted:
        idx = [slice(None)] * 3
        idx[axis] = i
        lab[tuple(idx)] = 0
        idx2 = list(idx)
        idx2[(axis + 1) % 3] = slice(0, 3)
        lab[tuple(idx2)] = value
    return lab


def test_axis_is_the_one_with_most_painted_slices():
    labs = [sparse((10, 12, 14), [2, 5], axis=1), sparse((10, 12, 14), [7], axis=2)]
    assert slices.choose_axis(labs) == 1
    assert slices.choose_axis(labs, 2) == 2


def test_build_slices_separates_painted_from_unlabeled():
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(10, 12, 14)).astype(np.float32), rng.normal(size=(8, 20, 9)).astype(np.float32)]
    labels = [sparse((10, 12, 14), [2, 5], axis=0, value=4), None]
    s = slices.build_slices(images, labels, axis=0, max_size=256, multiple=8)
    assert len(s) == 18 and s.size == 24
    assert s.labeled.tolist() == [2, 5]
    assert len(s.unlabeled) == 16
    assert s.images.shape == (18, 1, 24, 24) and s.labels.shape == (18, 24, 24)
    painted = s.labels[2]
    assert set(torch.unique(painted).tolist()) == {0, 4, IGNORE}  # IGNORE only in the padding
    assert (painted != IGNORE).sum() == 12 * 14
    # each volume normalised on its own: the unlabeled one (8 x 20 x 9, rows 2..21, cols 7..15) too
    assert abs(float(s.images[10:, 0, 2:22, 7:16].float().mean())) < 0.2


def test_normalisation_is_robust_to_outliers():
    a = np.random.default_rng(0).normal(100, 10, size=(20, 20, 20))
    a[0, 0, 0] = 1e9
    out = slices.intensity_stats(a).apply(a)
    assert abs(out.mean()) < 0.1 and 0.8 < out.std() < 1.2


def test_check_labels_errors_are_clear():
    img = np.zeros((6, 7, 8), np.float32)
    ok = sparse((6, 7, 8), [1], value=2)
    assert slices.check_labels([img], [ok], ["a"], None) == 3
    with pytest.raises(InvalidInput, match=r"values \[2\] outside the label map"):
        slices.check_labels([img], [ok], ["a"], 2)
    with pytest.raises(InvalidInput, match="nothing is painted"):
        slices.check_labels([img], [np.full((6, 7, 8), IGNORE, np.uint8)], ["a"], None)
    with pytest.raises(InvalidInput, match="shape"):
        slices.check_labels([img], [ok[:, :6]], ["a"], None)
    with pytest.raises(InvalidInput, match="only background"):
        slices.check_labels([img], [sparse((6, 7, 8), [1], value=0)], ["a"], None)


def test_check_labels_without_a_stage_that_needs_paint():
    """require_painted=False (a global-only run): nothing painted is fine, bad label volumes are still refused."""
    img = np.zeros((6, 7, 8), np.float32)
    empty = np.full((6, 7, 8), IGNORE, np.uint8)
    assert slices.check_labels([img], [None], ["a"], None, require_painted=False) == 2
    assert slices.check_labels([img], [empty], ["a"], None, require_painted=False) == 2
    assert slices.check_labels([img], [empty], ["a"], 4, require_painted=False) == 4
    assert slices.check_labels([img], [sparse((6, 7, 8), [1], value=0)], ["a"], None, require_painted=False) == 2
    with pytest.raises(InvalidInput, match="shape"):
        slices.check_labels([img], [empty[:, :6]], ["a"], None, require_painted=False)
    with pytest.raises(InvalidInput, match=r"values \[2\] outside the label map"):
        slices.check_labels([img], [sparse((6, 7, 8), [1], value=2)], ["a"], 2, require_painted=False)


def _painted_batch(n=6, side=96):
    images = torch.randn(n, 1, side, side)
    labels = torch.zeros(n, side, side, dtype=torch.uint8)
    for i in range(n):  # a small structure near a corner of each slice, the rest painted background
        labels[i, 80 + i % 3 : 84 + i % 3, 5:9] = 1 + i % 2
    labels[-1] = slices.IGNORE  # a slice with nothing painted: crops sit anywhere
    return images, labels


def test_patches_are_exact_crops_of_image_and_label():
    images, labels = _painted_batch()
    g = torch.Generator().manual_seed(0)
    x, y, corners = slices.sample_patches(images, labels, 32, 0.5, g)
    assert x.shape == (6, 1, 32, 32) and y.shape == (6, 32, 32)
    for i, (top, left) in enumerate(corners):
        assert 0 <= top <= 64 and 0 <= left <= 64
        assert torch.equal(x[i], images[i, :, top : top + 32, left : left + 32])
        assert torch.equal(y[i], labels[i, top : top + 32, left : left + 32])  # painted pixels kept as painted


def test_foreground_oversampling_keeps_the_painted_structure_in_the_patch():
    images, labels = _painted_batch()
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        _, y, _ = slices.sample_patches(images, labels, 32, 1.0, g)
        for i in range(5):
            assert int((y[i] == 1 + i % 2).sum()) >= 1
    # without oversampling a structure near a corner is mostly missed
    hits = 0
    for _ in range(20):
        _, y, _ = slices.sample_patches(images, labels, 32, 0.0, g)
        hits += int(((y[:5] > 0) & (y[:5] != slices.IGNORE)).flatten(1).any(1).sum())
    assert hits < 30


def test_slices_that_fit_the_patch_are_left_whole():
    images, labels = _painted_batch(side=32)
    x, y, corners = slices.sample_patches(images, labels, 64, 1.0, torch.Generator())
    assert x is images and y is labels and corners == [(0, 0)] * 6
    x, y, _ = slices.sample_patches(images, None, None, 1.0, torch.Generator())
    assert x is images and y is None
