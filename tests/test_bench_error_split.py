"""bench.error_split: foreground Dice, class Dice and confusion, against counts made by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bench.error_split import split_scores


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
