"""Classes put in order along an axis (data/class_order.py): runs against brute force, the paint's decision."""

import itertools

import numpy as np
import pytest

from app.views import cleanup_words
from data.class_order import MIN_SHARE, axis_share, best_runs, choose_axis, in_order
from data.mask_cleanup import Cleanup, choose_cleanup


def brute_force_runs(counts):
    """The most voxels any never-decreasing run assignment of the slices keeps, trying every one."""
    n, k = counts.shape
    best = 0
    for runs in itertools.product(range(k), repeat=n):
        if all(a <= b for a, b in zip(runs, runs[1:])):
            best = max(best, sum(int(counts[i, r]) for i, r in enumerate(runs)))
    return best


@pytest.mark.parametrize("k", [2, 3])
def test_best_runs_keeps_as_many_voxels_as_brute_force(k):
    rng = np.random.default_rng(k)
    for _ in range(20):
        counts = rng.integers(0, 9, (int(rng.integers(1, 7)), k))
        runs, kept = best_runs(counts)
        assert kept == brute_force_runs(counts)
        assert (np.diff(runs) >= 0).all() and runs.min() >= 0 and runs.max() < k
        assert kept == sum(int(counts[i, r]) for i, r in enumerate(runs))


def brute_force_in_order(labels, axis):
    """Most labels of classes 1 and 2 kept by relabelling them as one class before a cut, the other after."""
    other = tuple(a for a in range(3) if a != axis)
    ones, twos = (labels == 1).sum(axis=other), (labels == 2).sum(axis=other)
    n = labels.shape[axis]
    return max(
        max(int(first[:cut].sum() + second[cut:].sum()) for cut in range(n + 1))
        for first, second in ((ones, twos), (twos, ones))
    )


def test_in_order_keeps_as_many_labels_as_any_cut_and_leaves_background_alone():
    rng = np.random.default_rng(0)
    for axis in range(3):
        for _ in range(4):
            labels = rng.choice([0, 0, 1, 2], size=(5, 6, 7)).astype(np.uint8)
            out = in_order(labels, axis, (1, 2))
            assert ((out == 0) == (labels == 0)).all()
            assert int(((out == labels) & (labels > 0)).sum()) == brute_force_in_order(labels, axis)
            strip = [set(np.unique(np.take(out, i, axis=axis))) - {0} for i in range(out.shape[axis])]
            assert all(len(s) <= 1 for s in strip)  # one class per slice along the axis


def two_parts(shape=(12, 20, 14), boundary=10):
    """A box whose class 1 lies before `boundary` along axis 1 and class 2 from it on (head, then body)."""
    truth = np.zeros(shape, np.uint8)
    truth[2:10, 3:17, 2:12] = 1
    truth[2:10, boundary:17, 2:12] = 2
    return truth


def paint(truth, axis, indices):
    painted = np.full(truth.shape, 255, np.uint8)
    for i in indices:
        where = [slice(None)] * 3
        where[axis] = i
        painted[tuple(where)] = truth[tuple(where)]
    return painted


def test_the_paint_crossing_the_boundary_chooses_its_axis():
    truth = two_parts()
    along, report = choose_axis([paint(truth, 0, [3, 6, 8])], 3)
    assert along == 1
    assert report["1"]["share"] == 1.0 and report["1"]["side_by_side"]
    assert report["2"]["share"] < MIN_SHARE  # the two classes lie side by side across axis 2's slices too


def test_paint_along_the_axis_itself_shows_no_boundary_and_decides_nothing():
    truth = two_parts()
    along, report = choose_axis([paint(truth, 1, [5, 9, 14])], 3)
    assert along is None
    assert not report["1"]["side_by_side"]  # each painted slice holds one class
    assert report["1"]["voxels"] == 0  # and none crosses axis 1


def test_classes_that_do_not_follow_each_other_get_no_order():
    ring = np.zeros((10, 16, 16), np.uint8)
    ring[2:8, 3:13, 3:13] = 2  # a wall around a cavity, as myocardium around a ventricle
    ring[2:8, 5:11, 5:11] = 1
    along, report = choose_axis([paint(ring, 0, [3, 5, 7]), paint(ring, 2, [4, 8])], 3)
    assert along is None
    assert all(report[str(a)]["share"] < MIN_SHARE for a in range(3))


def test_paint_straying_past_the_threshold_decides_nothing():
    truth = two_parts()
    painted = paint(truth, 0, [3, 6, 8])
    painted[[3, 6, 8], 4, 2:6] = 2  # 12 of 420 painted voxels (2.9 %) called body far inside the head
    share = axis_share([painted], 1, (1, 2))["share"]
    assert share == pytest.approx(408 / 420) and share < MIN_SHARE
    assert choose_axis([painted], 3)[0] is None


def test_choose_cleanup_puts_a_misnamed_patch_back_and_reports_the_axis():
    truth = two_parts()
    pred = truth.copy()
    pred[5, 4:6, 4:6] = 2  # body called head's name far from the boundary, on an unpainted slice
    painted = paint(truth, 0, [3, 6, 8])
    cleanup, report = choose_cleanup([pred], [painted], 3)
    assert cleanup.classes_along == 1 and report["order"]["axis"] == 1
    assert (cleanup.apply(pred) == truth).all()
    unordered, report = choose_cleanup([pred], [painted], 3, order=False)
    assert unordered.classes_along is None and "order" not in report
    assert (unordered.apply(pred) != truth).any()
    words = cleanup_words({"mode": "auto", "volumes": 1, "classes": choose_cleanup([pred], [painted], 3)[1]})
    assert "classes put in order along voxel axis 1" in words and "label 2:" in words


def test_a_decision_with_an_order_round_trips_and_older_ones_still_load():
    c = Cleanup({1: ("largest",), 2: ("fill",)}, classes_along=1)
    assert Cleanup.from_dict(c.to_dict()) == c
    assert Cleanup.from_dict({"1": ["largest"]}) == Cleanup({1: ("largest",)})
    with pytest.raises(ValueError, match="voxel axis"):
        Cleanup.from_dict({"1": [], "classes_along": 3})
