"""The clinical-geometry copy of the hippocampus data: same field of view, thick slices, labels kept."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from bench.clinical_geometry import resample_pair
from tests.test_model_train import CASES, HIPPO

pytestmark = pytest.mark.skipif(not HIPPO.is_dir(), reason="../shared/data/hippocampus is not here")


def corners(image: sitk.Image) -> np.ndarray:
    """The physical positions of the field of view's 8 outer corners (voxel edges, not centres)."""
    size = np.array(image.GetSize())
    out = []
    for mask in range(8):
        edge = np.array([(-0.5 if not (mask >> a) & 1 else size[a] - 0.5) for a in range(3)])
        out.append(image.TransformContinuousIndexToPhysicalPoint(edge.tolist()))
    return np.array(out)


def test_thick_slices_cover_the_same_field_of_view_and_keep_the_structure():
    image = sitk.ReadImage(str(HIPPO / "imagesTr" / CASES[0]))
    labels = sitk.ReadImage(str(HIPPO / "labelsTr" / CASES[0]))
    moved, moved_labels = resample_pair(image, labels, (0.5, 0.5, 4.0))
    assert moved.GetSpacing() == moved_labels.GetSpacing() == (0.5, 0.5, 4.0)
    assert moved.GetDirection() == image.GetDirection() and moved_labels.GetOrigin() == moved.GetOrigin()
    assert moved.GetSize()[:2] == tuple(2 * s for s in image.GetSize()[:2])
    assert moved.GetSize()[2] == round(image.GetSize()[2] / 4)
    # voxel edges: the extent along axis 2 rounds to whole 4 mm slices, at most half a slice each side
    np.testing.assert_allclose(corners(moved), corners(image), atol=2.0 + 1e-6)
    before, after = sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(moved_labels)
    assert set(np.unique(after)) == set(np.unique(before))
    for c in (1, 2):  # the volume of each class in mm^3, within the partial-volume error of 4 mm slices
        assert abs((after == c).sum() * 0.5 * 0.5 * 4 - (before == c).sum()) < 0.2 * (before == c).sum()
    mean_before = sitk.GetArrayFromImage(image).mean()
    assert abs(sitk.GetArrayFromImage(moved).astype(float).mean() - mean_before) < 0.05 * mean_before
    assert moved.GetPixelID() == image.GetPixelID() and moved_labels.GetPixelID() == sitk.sitkUInt8


def test_the_command_writes_a_dataset_the_benchmarks_read(tmp_path):
    source = tmp_path / "source"
    for folder in ("imagesTr", "labelsTr"):
        (source / folder).mkdir(parents=True)
        for case in CASES[:2]:
            (source / folder / case).symlink_to(HIPPO / folder / case)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench.clinical_geometry", "--source", str(source), "--out", str(out)]
    subprocess.run([*cmd, "--spacing", "1,1,4"], check=True, capture_output=True)
    for case in CASES[:2]:
        img, lab = nib.load(out / "imagesTr" / case), nib.load(out / "labelsTr" / case)
        assert img.shape == lab.shape and np.allclose(img.header.get_zooms(), (1, 1, 4))
        np.testing.assert_allclose(img.affine, lab.affine)
    bad = subprocess.run([*cmd, "--spacing", "1,4"], capture_output=True, text=True)
    assert bad.returncode == 2 and "three positive numbers" in bad.stderr
