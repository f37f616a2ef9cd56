"""Reading volumes (NIfTI, DICOM series folder, zip of one DICOM series) and writing masks in their exact geometry.

The public face of the readers and writers; the work is done in
- data.nifti       NIfTI reading and NIfTI mask writing
- data.dicom       DICOM series reading (the only LPS->RAS conversion: `lps_to_ras_affine`)
- data.dicom_zip   safe extraction of a zip of one DICOM series
- data.uploads     validating and reading a file a user uploaded
- data.dicom_seg   DICOM-SEG mask writing

Geometry conventions:
- Volume.affine maps voxel (i, j, k) of Volume.array to world RAS+ millimetres.
- NIfTI: the affine is the one the NIfTI standard says to use (sform if sform_code > 0, else qform if
  qform_code > 0, else the pixdim-only fallback); the header is kept so masks are written back with it.
- DICOM: SimpleITK reads the series in LPS; its array (z, y, x) is transposed to (x, y, z) = (i, j, k) and
  the LPS->RAS flip happens in exactly one place, `lps_to_ras_affine`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.dicom import lps_to_ras_affine, read_dicom_dir
from data.dicom_seg import write_mask_dicom_seg
from data.dicom_zip import MAX_ZIP_MEMBERS, extract_dicom_zip, read_dicom_zip
from data.errors import InvalidInput
from data.formats import NOT_SUPPORTED, kind_from_name
from data.itk_image import read_itk_volume
from data.nifti import read_nifti, write_nifti_mask
from data.uploads import read_upload
from data.volume import Volume

__all__ = [
    "MAX_ZIP_MEMBERS",
    "NOT_SUPPORTED",
    "extract_dicom_zip",
    "lps_to_ras_affine",
    "read_upload",
    "read_volume",
    "write_mask",
    "write_mask_dicom_seg",
]


def read_volume(path: str | Path) -> Volume:
    """Read a .nii / .nii.gz / .nrrd / .nhdr / .mha / .mhd file, a DICOM series folder, or a .zip of one DICOM
    series (trusted path, no size limit)."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_dir(path)
    if not path.exists():
        raise InvalidInput(f"{path.name}: file not found")
    kind = kind_from_name(path.name)
    if kind in ("itk", "itk-header"):
        return read_itk_volume(path, path.name, max_bytes_expanded=None)
    if kind == "zip":
        return read_dicom_zip(path, max_bytes_expanded=None)
    return read_nifti(path, path.name, max_bytes_expanded=None)


def write_mask(mask: np.ndarray, like: Volume, path: str | Path, format: str = "nifti") -> Path:
    """Write a label mask in the exact geometry of `like`, atomically."""
    if format == "dicom-seg":
        return write_mask_dicom_seg(mask, like, path)
    if format != "nifti":
        raise InvalidInput(f"unknown mask format {format!r}; use 'nifti' or 'dicom-seg'")
    return write_nifti_mask(mask, like, path)
