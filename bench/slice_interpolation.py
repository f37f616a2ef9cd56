"""Would shape interpolation between painted slices beat the model between them? (issue 13; tried, it does not)

    python -m bench.slice_interpolation OUT_DIR [OUT_DIR ...] [--volumes val|painted] [--json FILE]

What 3D Slicer's "fill between slices" and ITK-SNAP's interpolation do, as a candidate for the masks of the
volumes a clinician painted: between two consecutive whole painted slices along the model's axis, each voxel
gets the shape interpolated from the two slices' signed distance maps (mm, negative inside, linear in the
slice's place between them). The foreground is where the interpolated distance of all classes together is
below 0; its class is the one with the lowest interpolated class distance. A class absent from a painted slice
has the slice's diagonal as its distance there, so a class that starts or stops between two slices hands over
to the next one midway and the structure does not vanish in between.

Each OUT_DIR is a `--keep-models` folder of bench.label_efficiency (sparse runs). `--volumes val` (the default,
the set to decide on): the split's validation volumes, unseen by the model, with slices painted from the truth
as the protocol paints them (`even_slices`, 3 per volume along the model's axis). `--volumes painted`: the
model's own painted train volumes. Per volume three masks are scored against the full truth (Dice, mean over
classes): `kept` = the model's mask (flips, smoothing, clean-up, as the product predicts) with the paint set;
`filled` = the same with the interpolated labels between the first and last painted slice; and both restricted
to that stretch (`kept inside`, `filled inside`). Printed per model and, per OUT_DIR, mean ± std over models
with `filled − kept` paired.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bench.label_efficiency_protocol import even_slices, sparse_label
from bench.painted_slices import mean_std, report_kept_models
from data.annotations import impose_paint
from data.io import read_volume
from data.volume import IGNORE
from model.inference import load_predictor
from model.train import dice_per_class

SLICES_PER_VOLUME = 3  # the 10 x 3 protocol's
VARIANTS = ("kept", "filled", "kept inside", "filled inside")


def signed_distance(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Signed distance in mm of a 2D mask: outside, to the nearest object pixel; inside, minus the distance to
    the nearest background pixel. So the same mask on both sides of a gap fills it with itself exactly. A mask
    with nothing (or only the object) in it is the slice's diagonal away (inside) everywhere."""
    mask = np.asarray(mask, bool)
    diagonal = float(np.hypot(*(np.array(mask.shape) * np.array(spacing))))
    if not mask.any():
        return np.full(mask.shape, diagonal, np.float32)
    if mask.all():
        return np.full(mask.shape, -diagonal, np.float32)
    return np.where(mask, -_distance_to(~mask, spacing), _distance_to(mask, spacing)).astype(np.float32)


def _distance_to(target: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """mm from each pixel centre to the nearest pixel of `target` (0 on it)."""
    image = sitk.GetImageFromArray(target.astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing[::-1]])  # SimpleITK's x is the array's last axis
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(distance), 0.0)


def whole_painted_slices(painted: np.ndarray, axis: int) -> list[int]:
    view = np.moveaxis(np.asarray(painted), axis, 0)
    return [i for i in range(view.shape[0]) if (view[i] != IGNORE).all()]


def fill_between(painted: np.ndarray, axis: int, spacing, num_classes: int) -> np.ndarray:
    """Labels interpolated on every slice strictly between two consecutive whole painted slices along `axis`;
    IGNORE on the painted slices and outside the first..last of them."""
    view = np.moveaxis(np.asarray(painted), axis, 0)
    in_plane = tuple(float(s) for i, s in enumerate(spacing) if i != axis)
    painted_at = whole_painted_slices(painted, axis)
    distances = {
        i: np.stack(
            [signed_distance(view[i] > 0, in_plane)]
            + [signed_distance(view[i] == c, in_plane) for c in range(1, num_classes)]
        )
        for i in painted_at
    }
    out = np.full(view.shape, IGNORE, np.uint8)
    for a, b in zip(painted_at[:-1], painted_at[1:]):
        for z in range(a + 1, b):
            t = (z - a) / (b - a)
            d = (1 - t) * distances[a] + t * distances[b]
            out[z] = np.where(d[0] < 0, np.argmin(d[1:], axis=0) + 1, 0)
    return np.moveaxis(out, 0, axis)


def stretch(shape: tuple[int, ...], axis: int, first: int, last: int) -> np.ndarray:
    inside = np.zeros(shape, bool)
    index = [slice(None)] * len(shape)
    index[axis] = slice(first, last + 1)
    inside[tuple(index)] = True
    return inside


def scores_of(kept: np.ndarray, filled: np.ndarray, truth: np.ndarray, inside: np.ndarray, k: int) -> dict:
    def dice(pred, where=None):
        if where is None:
            return float(np.mean(dice_per_class(pred, truth, k)))
        return float(np.mean(dice_per_class(np.where(where, pred, 0), np.where(where, truth, 0), k)))

    return {
        "kept": dice(kept),
        "filled": dice(filled),
        "kept inside": dice(kept, inside),
        "filled inside": dice(filled, inside),
    }


def volumes_of(config: dict, which: str) -> list[tuple[str, str | None]]:
    """(image, painted labels or None to paint from the truth) of the volumes to score."""
    if which == "painted":
        return [(image, label) for image, label in zip(config["images"], config["labels"]) if label]
    return [(image, None) for image in config["val_images"]]


def evaluate_model(run_dir: Path, truth_dir: Path, which: str) -> dict:
    predictor = load_predictor(run_dir, device="cpu")
    k, axis = predictor.num_classes, int(predictor.info["axis"])
    config = json.loads((run_dir / "config.json").read_text())
    per_volume = []
    for image_path, label_path in volumes_of(config, which):
        volume = read_volume(image_path)
        truth = np.asarray(read_volume(str(truth_dir / Path(image_path).name)).array)
        if label_path:
            painted = np.asarray(read_volume(label_path).array)
        else:
            painted = sparse_label(truth, axis, even_slices(truth, axis, SLICES_PER_VOLUME))
        kept = impose_paint(predictor.predict(np.asarray(volume.array), volume.spacing)[0], painted)
        between = fill_between(painted, axis, volume.spacing, k)
        filled = np.where(between != IGNORE, between, kept)
        painted_at = whole_painted_slices(painted, axis)
        inside = stretch(truth.shape, axis, painted_at[0], painted_at[-1])
        per_volume.append(scores_of(kept, filled, truth, inside, k))
    return {v: float(np.mean([s[v] for s in per_volume])) for v in VARIANTS}


def summary(per_model: dict) -> list[str]:
    rows = []
    for variant in VARIANTS:
        values = [m[variant] for m in per_model.values()]
        base = "kept inside" if "inside" in variant else "kept"
        paired = (
            "–" if variant.startswith("kept") else mean_std([m[variant] - m[base] for m in per_model.values()], "+")
        )
        rows.append(f"| {variant} | {mean_std(values)} | {paired} | {len(values)} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dirs", type=Path, nargs="+")
    parser.add_argument("--volumes", choices=("val", "painted"), default="val")
    parser.add_argument("--truth", type=Path, help="the full label volumes (default: the shared hippocampus labelsTr)")
    parser.add_argument("--json", type=Path, help="write every model's scores here")
    args = parser.parse_args(argv)
    from bench.common import SHARED_DATA

    truth_dir = args.truth or SHARED_DATA / "hippocampus" / "labelsTr"
    report_kept_models(
        args.out_dirs,
        lambda run_dir: evaluate_model(run_dir, truth_dir, args.volumes),
        lambda result: f"({args.volumes}): " + ", ".join(f"{v} {result[v]:.4f}" for v in VARIANTS),
        lambda out_dir: (
            f"{out_dir} ({args.volumes} volumes)\n\n| mask | Dice | minus kept (paired) | models |\n|---|---|---|---:|"
        ),
        summary,
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
