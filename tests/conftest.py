"""Shared fixtures: the development data folder and tiny synthetic NIfTI files with oblique geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SHARED_DATA_MISSING = f"development data not found at {SHARED_DATA} (expected ../shared/data next to the repo)"


def oblique_affine() -> np.ndarray:
    """A rotated (about two axes), anisotropic, translated voxel->RAS affine: nothing about it is the identity."""
    a, b = np.deg2rad(17.0), np.deg2rad(-29.0)
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot_z @ rot_x @ np.diag([0.7, 1.3, 2.5])
    affine[:3, 3] = [-31.25, 17.5, 4.125]
    return affine


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(SHARED_DATA_MISSING)
    return SHARED_DATA


@pytest.fixture
def tiny_nifti(tmp_path):
    """Factory: tiny_nifti(shape=..., dtype=..., name=..., data=..., affine=..., qform_code=1, sform_code=2) -> Path.

    By default a 6x7x8 int16 volume with an oblique affine written into both qform and sform, with
    distinct non-zero codes so tests can tell them apart.
    """

    def make(
        shape=(6, 7, 8),
        dtype=np.int16,
        name="tiny.nii.gz",
        data=None,
        affine=None,
        qform_affine=None,
        qform_code=1,
        sform_code=2,
    ) -> Path:
        affine = oblique_affine() if affine is None else np.asarray(affine, dtype=float)
        if data is None:
            rng = np.random.default_rng(0)
            data = rng.integers(-500, 1500, size=shape).astype(dtype)
        image = nib.Nifti1Image(np.asarray(data), affine)
        image.set_qform(affine if qform_affine is None else qform_affine, code=qform_code)
        image.set_sform(affine, code=sform_code)
        path = tmp_path / name
        nib.save(image, path)
        return path

    return make
