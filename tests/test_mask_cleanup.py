"""3D clean-up against naive flood-fill references on small random volumes."""

from collections import deque
from itertools import product

import numpy as np
import pytest

from data.mask_cleanup import Cleanup, choose_cleanup, class_dice, clean_labels, fill_holes, largest_component

FACES = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]


def naive_components(mask):
    """Face-connected components by breadth-first search, in C order of their first voxel."""
    seen = np.zeros(mask.shape, bool)
    found = []
    for start in product(*map(range, mask.shape)):
        if not mask[start] or seen[start]:
            continue
        component, queue = [], deque([start])
        seen[start] = True
        while queue:
            v = queue.popleft()
            component.append(v)
            for d in FACES:
                n = tuple(a + b for a, b in zip(v, d))
                if all(0 <= n[i] < mask.shape[i] for i in range(3)) and mask[n] and not seen[n]:
                    seen[n] = True
                    queue.append(n)
        found.append(component)
    return found


def naive_largest(mask):
    out = np.zeros(mask.shape, bool)
    components = naive_components(mask)
    if components:
        for v in max(components, key=len):
            out[v] = True
    return out


def naive_fill(mask):
    """Background voxels not reachable from the border through background faces become foreground."""
    outside = np.zeros(mask.shape, bool)
    queue = deque()
    for v in product(*map(range, mask.shape)):
        on_border = any(v[i] in (0, mask.shape[i] - 1) for i in range(3))
        if on_border and not mask[v]:
            outside[v] = True
            queue.append(v)
    while queue:
        v = queue.popleft()
        for d in FACES:
            n = tuple(a + b for a, b in zip(v, d))
            if all(0 <= n[i] < mask.shape[i] for i in range(3)) and not mask[n] and not outside[n]:
                outside[n] = True
                queue.append(n)
    return ~outside


@pytest.mark.parametrize("seed", range(12))
def test_largest_component_matches_naive(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((6, 7, 5)) < 0.35
    expected = naive_largest(mask)
    got = largest_component(mask)
    # ties between equal-sized components may be broken differently: compare sizes then, exact otherwise
    sizes = sorted((len(c) for c in naive_components(mask)), reverse=True)
    if len(sizes) > 1 and sizes[0] == sizes[1]:
        assert got.sum() == expected.sum() and (got <= mask).all()
        assert any(set(zip(*np.nonzero(got))) == set(c) for c in naive_components(mask))
    else:
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seed", range(12))
def test_fill_holes_matches_naive(seed):
    rng = np.random.default_rng(100 + seed)
    mask = rng.random((7, 6, 6)) < 0.6
    np.testing.assert_array_equal(fill_holes(mask), naive_fill(mask))


def test_edge_connected_voxels_are_separate_components():
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, 0] = mask[1, 1, 0] = True  # touch along an edge only
    mask[2, 2, 2] = mask[2, 2, 1] = True  # two face-connected voxels: the largest
    got = largest_component(mask)
    assert got.sum() == 2 and got[2, 2, 2] and got[2, 2, 1]


def test_empty_masks_stay_empty():
    empty = np.zeros((4, 4, 4), bool)
    assert not largest_component(empty).any() and not fill_holes(empty).any()


def test_clean_labels_removes_specks_fills_holes_and_never_takes_another_class():
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[2:7, 2:7, 2:7] = 1
    labels[4, 4, 4] = 0  # a hole inside class 1
    labels[3, 4, 4] = 2  # class 2 inside class 1: a "hole" of 1 that must stay 2
    labels[0, 0, 8] = 1  # a speck of class 1
    labels[8, 8, 0] = 2  # a second, separate part of class 2, which gets no steps here
    out = clean_labels(labels, {1: ("largest", "fill")})
    assert out[0, 0, 8] == 0
    assert out[4, 4, 4] == 1
    assert out[3, 4, 4] == 2
    assert out[8, 8, 0] == 2  # class 2 had no steps
    assert ((out == 1) <= ((labels == 1) | (labels == 0))).all()


def test_choose_cleanup_keeps_a_step_only_when_it_helps():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    truth[0:2, 6:8, 6:8] = 2  # class 2 truly has two parts
    truth[6:8, 0:2, 0:1] = 2
    pred = truth.copy()
    pred[0, 0, 7] = 1  # a false speck of class 1: "largest" helps class 1
    cleanup, report = choose_cleanup([pred], [truth], num_classes=3)
    assert "largest" in cleanup.steps[1]
    assert "largest" not in cleanup.steps[2]  # would delete a true part of class 2
    assert report["1"]["dice_after"] > report["1"]["dice_before"]
    assert class_dice(cleanup.apply(pred), truth, 1) == 1.0
    assert class_dice(cleanup.apply(pred), truth, 2) == 1.0


def test_cleanup_round_trips_and_refuses_unknown_steps():
    c = Cleanup({1: ("largest",), 2: ("largest", "fill")})
    assert Cleanup.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown clean-up step"):
        Cleanup.from_dict({"1": ["erode"]})
    with pytest.raises(ValueError, match="at least one pair"):
        choose_cleanup([], [], 2)


def naive_dice_on_annotated(pred, truth, label):
    inter = total = 0
    for p, t in zip(pred.ravel(), truth.ravel()):
        if t == 255:
            continue
        inter += int(p == label and t == label)
        total += int(p == label) + int(t == label)
    return 1.0 if total == 0 else 2.0 * inter / total


def test_class_dice_counts_only_annotated_voxels():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 3, (6, 7, 5)).astype(np.uint8)
    truth = rng.integers(0, 3, (6, 7, 5)).astype(np.uint8)
    truth[:, :, 1:4] = 255  # only slices 0 and 4 along the last axis are painted
    for label in (1, 2):
        assert class_dice(pred, truth, label) == pytest.approx(naive_dice_on_annotated(pred, truth, label))
    sparse = np.full((6, 7, 5), 255, np.uint8)
    sparse[:, :, 2] = pred[:, :, 2]
    assert class_dice(pred, sparse, 1) == 1.0  # what is predicted off the painted slice does not count


def test_choose_cleanup_on_painted_slices_keeps_the_step_they_support():
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    pred = truth.copy()
    pred[0:2, 0:2, 3] = 1  # a speck on a painted slice
    painted = np.full(truth.shape, 255, np.uint8)
    painted[:, :, 3] = truth[:, :, 3]
    cleanup, report = choose_cleanup([pred], [painted], num_classes=2)
    assert "largest" in cleanup.steps[1]
    assert report["1"]["dice_after"] == 1.0 > report["1"]["dice_before"]
