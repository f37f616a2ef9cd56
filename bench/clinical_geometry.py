"""A clinical-geometry copy of the hippocampus data, so accuracy is not judged on one geometry alone.

    python -m bench.clinical_geometry                       # -> bench/out/clinical_geometry/{imagesTr,labelsTr}
    python -m bench.label_efficiency --data bench/out/clinical_geometry ...

The MSD volumes are 1 mm isotropic; a clinical MR series has thick slices (4-6 mm) and a finer, larger
in-plane matrix. Each volume is resampled to `--spacing` (default 0.5 x 0.5 x 4 mm: voxel axes 0 and 1
in-plane, axis 2 the slice direction) over the same field of view:
- image: smoothed along the slice direction with a Gaussian of FWHM = the new slice thickness (a thick
  slice averages the tissue it covers), then linear interpolation;
- labels: each class's indicator goes through the same smoothing and interpolation and every voxel takes
  the class with the largest share (a partial-volume majority, not nearest neighbour, so thin parts are
  neither invented nor always dropped).
Direction cosines are kept; the origin moves so the field of view's outer edges stay where they were.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from bench.common import ROOT, SHARED_DATA

SOURCE = SHARED_DATA / "hippocampus"
OUT = ROOT / "bench" / "out" / "clinical_geometry"
FWHM_TO_SIGMA = 1 / (2 * np.sqrt(2 * np.log(2)))


def target_grid(image: sitk.Image, spacing: tuple[float, float, float]) -> dict:
    """Size, spacing, origin and direction of the resampled volume over the same field of view."""
    old_spacing = np.array(image.GetSpacing())
    new_spacing = np.array(spacing, dtype=float)
    extent = np.array(image.GetSize()) * old_spacing
    size = np.maximum(1, np.round(extent / new_spacing)).astype(int)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    # voxel centres sit half a voxel inside the field of view's corner
    corner = np.array(image.GetOrigin()) - direction @ (old_spacing / 2)
    origin = corner + direction @ (new_spacing / 2)
    return {
        "size": [int(s) for s in size],
        "spacing": [float(s) for s in new_spacing],
        "origin": [float(o) for o in origin],
        "direction": image.GetDirection(),
    }


def _thick_slices(image: sitk.Image, grid: dict) -> sitk.Image:
    """Average along each axis that gets coarser (Gaussian, FWHM = the new spacing), then interpolate."""
    smoothed = sitk.Cast(image, sitk.sitkFloat32)
    for axis, (old, new) in enumerate(zip(image.GetSpacing(), grid["spacing"], strict=True)):
        if new > old * 1.01:
            variance = [0.0, 0.0, 0.0]
            variance[axis] = float((new * FWHM_TO_SIGMA) ** 2)  # mm^2: the filter works in image spacing
            smoothed = sitk.DiscreteGaussian(smoothed, variance, 64, 0.001, True)
    return sitk.Resample(
        smoothed,
        grid["size"],
        sitk.Transform(),
        sitk.sitkLinear,
        grid["origin"],
        grid["spacing"],
        grid["direction"],
        0.0,
        sitk.sitkFloat32,
    )


def resample_pair(image: sitk.Image, labels: sitk.Image, spacing: tuple[float, float, float]):
    """(image, labels) on the clinical grid; the image keeps its pixel type, labels stay uint8."""
    grid = target_grid(image, spacing)
    moved = _thick_slices(image, grid)
    pixel = image.GetPixelID()
    if pixel in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkInt32, sitk.sitkUInt32):
        moved = sitk.Cast(sitk.Round(moved), pixel)
    label_array = sitk.GetArrayFromImage(labels)
    classes = [int(c) for c in np.unique(label_array)]
    shares = []
    for c in classes:
        indicator = sitk.GetImageFromArray((label_array == c).astype(np.float32))
        indicator.CopyInformation(labels)
        shares.append(sitk.GetArrayFromImage(_thick_slices(indicator, grid)))
    winner = np.asarray(classes, dtype=np.uint8)[np.argmax(np.stack(shares), axis=0)]
    out_labels = sitk.GetImageFromArray(winner)
    out_labels.CopyInformation(moved)
    return moved, out_labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=SOURCE)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--spacing", default="0.5,0.5,4", help="mm along voxel axes 0,1,2 (default 0.5,0.5,4)")
    args = p.parse_args()
    spacing = tuple(float(s) for s in args.spacing.split(","))
    if len(spacing) != 3 or min(spacing) <= 0:
        p.error("--spacing takes three positive numbers, e.g. 0.5,0.5,4")
    images = sorted((args.source / "imagesTr").glob("*.nii.gz"))
    if not images:
        raise SystemExit(f"no volumes in {args.source / 'imagesTr'}")
    for folder in ("imagesTr", "labelsTr"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(images):
        image = sitk.ReadImage(str(path))
        labels = sitk.ReadImage(str(args.source / "labelsTr" / path.name))
        moved, moved_labels = resample_pair(image, labels, spacing)
        sitk.WriteImage(moved, str(args.out / "imagesTr" / path.name))
        sitk.WriteImage(moved_labels, str(args.out / "labelsTr" / path.name))
        if i % 50 == 0:
            print(f"{i + 1}/{len(images)} {path.name}: {image.GetSize()} -> {moved.GetSize()}", flush=True)
    record = {"source": str(args.source), "spacing_mm": list(spacing), "volumes": len(images)}
    (args.out / "geometry.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{len(images)} volumes at {spacing} mm -> {args.out}")


if __name__ == "__main__":
    main()
