"""Enhanced (multi-frame) DICOM: one file whose frames are the slices, geometry in its functional groups.

Each frame's position comes from its Plane Position; orientation and pixel spacing from Plane Orientation and
Pixel Measures (per frame or shared). Frames are sorted along the slice normal and must form one regular
stack (no repeated positions from echoes or time points). The LPS->RAS flip goes through
data.dicom.lps_to_ras_affine, as for a series of single-frame files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from data.errors import InvalidInput
from data.volume import Volume

MAX_VOXELS = 1 << 30


def is_multiframe(path: str | Path) -> bool:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.get("NumberOfFrames", 1) or 1) > 1
    except Exception:
        return False


def _group(ds, index: int, keyword: str, name: str):
    """The functional group item `keyword` of frame `index` (its own, else the shared one)."""
    per_frame = ds.PerFrameFunctionalGroupsSequence[index]
    if keyword in per_frame and len(per_frame[keyword].value):
        return per_frame[keyword][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0] and len(shared[0][keyword].value):
        return shared[0][keyword][0]
    raise InvalidInput(f"{name}: frame {index + 1} has no {keyword}, so its geometry is unknown")


def read_multiframe(path: Path, name: str, relative_to: Path | None = None) -> Volume:
    from data.dicom import _check_regular_slices, lps_to_ras_affine

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InvalidInput(f"{name}: {Path(path).name} is not a readable DICOM file ({exc})") from exc
    frames, rows, cols = int(ds.get("NumberOfFrames") or 1), int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InvalidInput(f"{name}: colour DICOM images are not supported")
    if frames < 2 or rows < 2 or cols < 2 or frames * rows * cols > MAX_VOXELS:
        raise InvalidInput(f"{name}: a multi-frame image of {frames} x {rows} x {cols} pixels is not a usable volume")
    if len(ds.get("PerFrameFunctionalGroupsSequence") or []) != frames:
        raise InvalidInput(
            f"{name}: the multi-frame image does not describe each of its {frames} frames (Per-frame Functional Groups)"
        )
    try:
        positions = np.array(
            [
                [float(v) for v in _group(ds, f, "PlanePositionSequence", name).ImagePositionPatient]
                for f in range(frames)
            ]
        )
        orientations = np.array(
            [
                [float(v) for v in _group(ds, f, "PlaneOrientationSequence", name).ImageOrientationPatient]
                for f in range(frames)
            ]
        )
        spacings = np.array(
            [[float(v) for v in _group(ds, f, "PixelMeasuresSequence", name).PixelSpacing] for f in range(frames)]
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{name}: the frames' position, orientation or pixel spacing is unreadable ({exc})") from exc
    if positions.shape != (frames, 3) or orientations.shape != (frames, 6) or spacings.shape != (frames, 2):
        raise InvalidInput(f"{name}: the frames' position, orientation or pixel spacing is malformed")
    if not np.allclose(orientations, orientations[0], atol=1e-4) or not np.allclose(spacings, spacings[0], atol=1e-6):
        raise InvalidInput(f"{name}: the frames do not share one orientation and pixel spacing; not one volume")
    row_cos, col_cos = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row_cos, col_cos)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    if (steps < 1e-3).any():
        raise InvalidInput(
            f"{name}: several frames lie at the same position (several stacks, echoes or time "
            "points); slicewise needs one 3D volume"
        )
    slice_spacing = float(np.mean(steps))
    direction = np.column_stack([row_cos, col_cos, normal])
    spacing = (spacings[0][1], spacings[0][0], slice_spacing)
    affine = lps_to_ras_affine(direction.ravel(), spacing, positions[order[0]])
    _check_regular_slices(affine, [list(p) for p in positions[order]], slice_spacing, name)

    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise InvalidInput(f"{name}: cannot decode the pixel data ({exc})") from exc
    if pixels.shape != (frames, rows, cols):
        raise InvalidInput(f"{name}: the pixel data has shape {pixels.shape}, expected {(frames, rows, cols)}")
    array = pixels[order]
    slopes, intercepts = [], []
    for f in order:
        try:
            transform = _group(ds, int(f), "PixelValueTransformationSequence", name)
            slopes.append(float(transform.get("RescaleSlope", 1)))
            intercepts.append(float(transform.get("RescaleIntercept", 0)))
        except InvalidInput:
            slopes.append(1.0)
            intercepts.append(0.0)
    if any(s != 1 for s in slopes) or any(i != 0 for i in intercepts):
        array = (
            array.astype(np.float32) * np.array(slopes, np.float32)[:, None, None]
            + np.array(intercepts, np.float32)[:, None, None]
        )
    array = np.ascontiguousarray(array.transpose(2, 1, 0))  # (k, j, i) -> (i, j, k)

    source = Path(path).relative_to(relative_to).as_posix() if relative_to is not None else str(Path(path).resolve())
    meta = {
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")),
        "modality": str(ds.get("Modality", "")),
        "series_description": str(ds.get("SeriesDescription", "")),
        "multiframe": True,
        "slice_positions": [list(p) for p in positions[order]],
        "sop_instance_uids": [str(ds.get("SOPInstanceUID", ""))],
        "frame_numbers": [int(f) + 1 for f in order],
        "source_files": [source],
    }
    return Volume(array=array, affine=affine, source="dicom", meta=meta)
