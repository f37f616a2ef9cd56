"""bench.error_split: foreground Dice, class Dice and confusion, against counts made by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bench.error_split import (
    POSITION_EDGES,
    class_strip,
    classes_in_one_cut,
    cut_to_extent,
    position_errors,
    position_table,
    split_scores,
)


def test_a_prediction_with_the_right_outline_but_swapped_classes_is_all_confusion():
    truth = np.zeros((4, 4, 4), dtype=np.uint8)
    truth[1:3, 1:3, :2], truth[1:3, 1:3, 2:] = 1, 2
    swapped = np.where(truth > 0, 3 - truth, 0).astype(np.uint8)
    scores = split_scores(swapped, truth, 3)
    assert scores == {"foreground": 1.0, "classes": 0.0, "confused": 1.0}


def test_a_prediction_missing_half_of_one_class_loses_foreground_not_classes():
    truth = np.zeros((2, 2, 4), dtype=np.uint8)
    truth[:, :, :2], truth[:, :, 2:] = 1, 2  # 8 voxels of each class
    pred = truth.copy()
    pred[:, :, 3] = 0  # 4 voxels of class 2 missed
    scores = split_scores(pred, truth, 3)
    assert scores["foreground"] == pytest.approx(2 * 12 / (12 + 16))
    assert scores["classes"] == pytest.approx((1.0 + 2 * 4 / (4 + 8)) / 2)
    assert scores["confused"] == 0.0


def test_wrong_voxels_are_counted_by_the_slices_place_in_the_structure():
    truth = np.zeros((11, 3, 3), dtype=np.uint8)
    truth[2:7, 1, 1] = 1  # the structure spans slices 2..6 along axis 0: places (i - 2) / 4
    truth[5:7, 1, 1] = 2
    pred = truth.copy()
    pred[8, :, :2] = 1  # 6 false positives at place 1.5 (above the last edge)
    pred[2, 1, 1] = 0  # 1 missed at place 0 (bin -0.1 .. 0.1)
    pred[6, 1, 1] = 1  # 1 confused at place 1 (bin 0.9 .. 1.1)
    counts = position_errors(pred, truth, axis=0)
    last = len(POSITION_EDGES)
    assert counts["false positive"][last] == 6 and counts["false positive"].sum() == 6
    assert counts["missed"][2] == 1 and counts["missed"].sum() == 1
    assert counts["confused"][7] == 1 and counts["confused"].sum() == 1
    assert counts["truth"].sum() == 5
    table = position_table(counts)
    assert "| > 1.3 | 0 | 6 | 0 | 0 | 0.75 |" in table
    with pytest.raises(ValueError):
        position_errors(pred, np.zeros_like(truth), axis=0)


def test_a_class_strip_names_each_slices_majority_class():
    labels = np.zeros((3, 2, 5), dtype=np.uint8)
    labels[:, :, 1] = 2
    labels[:, :, 2] = 1
    labels[0, 0, 2] = 2  # one voxel of the other class does not change the slice's majority
    labels[:, :, 4] = 1
    assert class_strip(labels, axis=2) == ".21.1"
    assert class_strip(labels[1:], axis=0) == "11"  # per slice: 4 voxels of class 1 against 2 of class 2


def test_cutting_to_the_true_extent_removes_only_the_slices_outside_it():
    truth = np.zeros((3, 8, 3), dtype=np.uint8)
    truth[1, 2:6, 1] = 1
    pred = np.ones_like(truth)
    pred[0, 4, 0] = 2
    cut = cut_to_extent(pred, truth, axis=1)
    assert (cut[:, :2] == 0).all() and (cut[:, 6:] == 0).all()
    assert np.array_equal(cut[:, 2:6], pred[:, 2:6])
    assert cut.dtype == pred.dtype


def _one_cut_by_brute_force(pred, axis):
    """Every order and every cut tried, relabelled, and the one keeping most predicted labels returned."""
    best, best_kept = None, -1
    for first in (1, 2):
        for cut in range(pred.shape[axis] + 1):
            index = np.arange(pred.shape[axis]).reshape([-1 if a == axis else 1 for a in range(pred.ndim)])
            relabelled = np.where(pred > 0, np.where(index < cut, first, 3 - first), 0)
            kept = int(((relabelled == pred) & (pred > 0)).sum())
            if kept > best_kept:
                best, best_kept = relabelled, kept
    return best, best_kept


@pytest.mark.parametrize("seed", range(6))
def test_classes_in_one_cut_keep_as_many_labels_as_the_best_cut_found_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 3, size=(4, 7, 5)).astype(np.uint8)
    axis = seed % 3
    relabelled = classes_in_one_cut(pred, axis)
    _, best_kept = _one_cut_by_brute_force(pred, axis)
    assert int(((relabelled == pred) & (pred > 0)).sum()) == best_kept
    assert np.array_equal(relabelled > 0, pred > 0)
    strip = class_strip(relabelled, axis).replace(".", "")
    changes = sum(1 for a, b in zip(strip, strip[1:]) if a != b)
    assert changes <= 1


def test_classes_already_in_one_cut_are_left_as_they_are():
    pred = np.zeros((2, 6, 2), dtype=np.uint8)
    pred[:, 1:3], pred[:, 3:5] = 2, 1
    assert np.array_equal(classes_in_one_cut(pred, axis=1), pred)
