"""Classes that follow each other along a voxel axis (the hippocampus's head then body): a clean-up step.

A 2D network labels each slice on its own, so on slices that cross the boundary between two such classes it
can call a patch of one class by the other's name far from the boundary. Where the paint shows that the
classes lie in runs along an axis, each predicted volume's structure is relabelled into one run per class
along it (`in_order`). Whether and along which axis is decided from the paint alone (`choose_axis`): only a
painted slice that crosses the axis shows where one class stops and the next begins. The axis is a voxel
axis taken to mean the same in every volume of a project, as the model's slicing axis already is.
(docs/benchmarks/classes_in_order.md)
"""

from __future__ import annotations

import numpy as np

from data.annotations import painted_mask
from data.volume import IGNORE

# the share of the painted structure that must lie in its class's run for the step to be chosen: a
# clinician's brush may stray by a voxel or two at a boundary, while the hippocampus's paint fits its two
# other axes at most 0.92 (docs/benchmarks/classes_in_order.md)
MIN_SHARE = 0.98


def best_runs(counts: np.ndarray) -> tuple[np.ndarray, int]:
    """counts (slices, K): voxels of each of K classes, in a fixed order, per slice along the axis. Returns the
    run index (0..K-1, never decreasing) of every slice that keeps the most voxels, and that number."""
    n, k = counts.shape
    score = np.zeros((n + 1, k), dtype=np.int64)  # score[i, j]: best over slices < i, slice i-1 in run j
    came = np.zeros((n, k), dtype=np.int64)
    for i in range(n):
        came[i] = [int(np.argmax(score[i, : j + 1])) for j in range(k)]  # the slice before: any run <= j
        score[i + 1] = score[i, came[i]] + counts[i]
    runs = np.zeros(n, dtype=np.int64)
    j = int(np.argmax(score[n]))
    kept = int(score[n, j])
    for i in range(n - 1, -1, -1):
        runs[i] = j
        j = int(came[i, j])
    return runs, kept


def _counts(labels: np.ndarray, axis: int, classes: tuple[int, ...]) -> np.ndarray:
    other = tuple(a for a in range(3) if a != axis)
    return np.stack([(labels == c).sum(axis=other) for c in classes], axis=1)


def _orders(counts: np.ndarray, classes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The classes by the mean position of their voxels along the axis, and the reverse (absent ones last)."""
    positions = np.arange(counts.shape[0])
    totals = counts.sum(axis=0)
    mean = [float(positions @ counts[:, j]) / totals[j] if totals[j] else np.inf for j in range(len(classes))]
    forward = tuple(int(j) for j in np.argsort(mean, kind="stable"))
    backward = tuple(j for j in reversed(forward) if totals[j]) + tuple(j for j in forward if not totals[j])
    return [forward, backward] if backward != forward else [forward]


def ordered_runs(counts: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """(the class of every slice, voxels kept): the order (by mean position or its reverse) and runs that
    keep the most of `counts`."""
    best = None
    for order in _orders(counts, classes):
        runs, kept = best_runs(counts[:, order])
        if best is None or kept > best[1]:
            best = (np.asarray([classes[order[r]] for r in runs], dtype=np.int64), kept)
    return best


def in_order(labels: np.ndarray, axis: int, classes: tuple[int, ...]) -> np.ndarray:
    """`labels` with every voxel of `classes` relabelled by its slice's run along `axis`: one run per class,
    order and runs those that keep most of the labels (other labels, background included, stay)."""
    labels = np.asarray(labels)
    ours = np.isin(labels, classes)
    if not ours.any():
        return labels.copy()
    per_slice, _ = ordered_runs(_counts(labels, axis, classes), classes)
    shape = [-1 if a == axis else 1 for a in range(3)]
    return np.where(ours, per_slice.reshape(shape).astype(labels.dtype), labels)


def evidence(painted: np.ndarray, axis: int) -> np.ndarray:
    """The voxels of the slices painted along another axis than `axis` (they cross it)."""
    seen = np.zeros(painted.shape, dtype=bool)
    for other in range(3):
        if other == axis:
            continue
        full = painted_mask(painted, other)
        seen |= full.reshape([-1 if a == other else 1 for a in range(3)])
    return seen


def _side_by_side(painted: np.ndarray, axis: int, classes: tuple[int, ...]) -> bool:
    """Some painted slice crossing `axis` holds two of `classes`: the paint shows a boundary inside a slice."""
    for other in range(3):
        if other == axis:
            continue
        for index in np.flatnonzero(painted_mask(painted, other)):
            found = np.take(painted, index, axis=other)
            if np.isin(classes, found).sum() >= 2:
                return True
    return False


def axis_share(painted_volumes: list[np.ndarray], axis: int, classes: tuple[int, ...]) -> dict:
    """How well the paint of all volumes fits one run per class along `axis` (order and runs per volume)."""
    kept = total = 0
    present = np.zeros(len(classes), dtype=bool)
    side_by_side = False
    for painted in painted_volumes:
        painted = np.asarray(painted)
        counts = _counts(np.where(evidence(painted, axis), painted, IGNORE), axis, classes)
        if not counts.any():
            continue
        present |= counts.sum(axis=0) > 0
        kept += ordered_runs(counts, classes)[1]
        total += int(counts.sum())
        side_by_side = side_by_side or _side_by_side(painted, axis, classes)
    return {
        "share": kept / total if total else 0.0,
        "voxels": total,
        "every_class": bool(present.all()),
        "side_by_side": side_by_side,
    }


def choose_axis(painted_volumes: list[np.ndarray], num_classes: int) -> tuple[int | None, dict]:
    """The voxel axis along which the painted classes lie in runs (or None) and a report per axis."""
    classes = tuple(range(1, num_classes))
    if len(classes) < 2:
        return None, {"reason": "fewer than two classes"}
    report = {str(a): axis_share(painted_volumes, a, classes) for a in range(3)}
    passing = [
        a
        for a in range(3)
        if report[str(a)]["share"] >= MIN_SHARE and report[str(a)]["every_class"] and report[str(a)]["side_by_side"]
    ]
    chosen = max(passing, key=lambda a: report[str(a)]["share"]) if passing else None
    for a in range(3):
        report[str(a)]["share"] = round(report[str(a)]["share"], 4)
    return chosen, report
