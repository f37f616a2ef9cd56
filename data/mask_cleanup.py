"""3D clean-up of a predicted label volume, the way nnU-Net post-processes: per class, keep only the
largest connected component and fill the holes inside it.

A 2D network predicts slice by slice, so it leaves specks on slices far from the structure and holes
where one slice disagrees with its neighbours; both are cheap to remove in 3D. Whether a step helps is
decided per class on volumes with a known answer (`choose_cleanup`): a step is kept only when it does
not lower that class's mean Dice there. The answer may be partial (painted slices, the rest IGNORE):
Dice then counts only the annotated voxels, which is how the app decides without a labelled set.

Before those steps, a structure whose classes follow each other along an axis, as the paint shows them,
is relabelled into one run of slices per class along it (data/class_order.py).

Connectivity is face-only (6 neighbours in 3D): two voxels touching along an edge or a corner are
separate components, and a hole is background not reachable from the border through faces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from data.class_order import choose_axis, in_order
from data.volume import IGNORE

STEPS = ("largest", "fill")
ALONG_KEY = "classes_along"  # in a stored decision, beside the class numbers


def _image(mask: np.ndarray) -> sitk.Image:
    return sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean mask (ties: the one met first in C order)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(_image(mask), False))
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """A boolean mask with every background region that does not reach the volume's border filled."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(_image(mask), False, 1)).astype(bool)


@dataclass(frozen=True)
class Cleanup:
    """Which steps run for which class; classes not named are left as predicted. With `classes_along` set, the
    named classes are first put in one run each along that voxel axis (data/class_order.py)."""

    steps: dict[int, tuple[str, ...]]
    classes_along: int | None = None

    def to_dict(self) -> dict:
        out: dict = {str(c): list(s) for c, s in sorted(self.steps.items())}
        if self.classes_along is not None:
            out[ALONG_KEY] = self.classes_along
        return out

    @classmethod
    def from_dict(cls, d: dict | None) -> Cleanup:
        d = dict(d or {})
        along = d.pop(ALONG_KEY, None)
        if along is not None and along not in (0, 1, 2):
            raise ValueError(f"{ALONG_KEY} must be a voxel axis 0, 1 or 2, got {along!r}")
        steps = {}
        for key, names in d.items():
            bad = [n for n in names if n not in STEPS]
            if bad:
                raise ValueError(f"unknown clean-up step(s) {bad} for class {key}; known: {', '.join(STEPS)}")
            steps[int(key)] = tuple(n for n in STEPS if n in names)
        return cls(steps, along)

    @classmethod
    def everything(cls, num_classes: int) -> Cleanup:
        return cls({c: STEPS for c in range(1, num_classes)})

    def apply(self, labels: np.ndarray) -> np.ndarray:
        if self.classes_along is not None:
            labels = in_order(labels, self.classes_along, tuple(sorted(self.steps)))
        return clean_labels(labels, self.steps)


def clean_labels(labels: np.ndarray, steps: dict[int, tuple[str, ...]]) -> np.ndarray:
    """Apply the steps class by class (in increasing label order). Voxels a class loses become background;
    a filled hole takes the class only where it was background, so one class never eats another."""
    labels = np.asarray(labels)
    out = labels.copy()
    for label in sorted(steps):
        names = steps[label]
        if not names:
            continue
        mask = labels == label
        kept = largest_component(mask) if "largest" in names else mask
        out[mask & ~kept] = 0
        if "fill" in names:
            holes = fill_holes(kept) & ~kept & (out == 0)
            out[holes] = label
    return out


def class_dice(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice of one class over the voxels the truth annotates (IGNORE voxels do not count)."""
    annotated = truth != IGNORE
    p, t = (pred == label) & annotated, truth == label
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def choose_cleanup(
    predictions: list[np.ndarray], truths: list[np.ndarray], num_classes: int, order: bool = True
) -> tuple[Cleanup, dict]:
    """Per class, try the steps in order on the validation pairs and keep each one that does not lower
    the class's mean Dice. Returns the decision and the Dice before and after for each class. With `order`,
    the truths first decide whether the classes are put in order along an axis (data/class_order.py);
    the report's "order" then says along which axis (or none) and how well each axis fits."""
    if len(predictions) != len(truths) or not predictions:
        raise ValueError("choose_cleanup needs one truth per prediction and at least one pair")
    along, order_report = choose_axis(truths, num_classes) if order else (None, None)
    if along is not None:
        classes = tuple(range(1, num_classes))
        predictions = [in_order(p, along, classes) for p in predictions]
    chosen: dict[int, tuple[str, ...]] = {}
    report: dict = {}
    for label in range(1, num_classes):
        kept: tuple[str, ...] = ()
        before = float(np.mean([class_dice(p, t, label) for p, t in zip(predictions, truths)]))
        best = before
        for step in STEPS:
            trial = (*kept, step)
            score = float(
                np.mean([class_dice(clean_labels(p, {label: trial}), t, label) for p, t in zip(predictions, truths)])
            )
            if score >= best:
                kept, best = trial, score
        chosen[label] = kept
        report[str(label)] = {"dice_before": round(before, 4), "dice_after": round(best, 4), "steps": list(kept)}
    if order:
        report["order"] = {"axis": along, "axes": order_report}
    return Cleanup(chosen, along), report
