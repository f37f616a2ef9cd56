"""DICOM series (a folder of single-frame images, or one enhanced multi-frame file: data.dicom_multiframe):
reading one series into a Volume in RAS+.

SimpleITK reads the series in LPS; its array (z, y, x) is transposed to (x, y, z) = (i, j, k) and the
LPS->RAS flip of the affine happens in exactly one place, `lps_to_ras_affine`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from data.dicom_multiframe import is_multiframe, read_multiframe
from data.errors import InvalidInput
from data.volume import Volume

# Slices may deviate this fraction of the slice spacing from a regular grid before we refuse the series.
_SLICE_POSITION_TOLERANCE = 0.1


def lps_to_ras_affine(direction, spacing, origin) -> np.ndarray:
    """4x4 voxel (i, j, k) -> RAS+ affine from an ITK/DICOM (LPS) direction (9 values, row-major), spacing, origin.

    The only place in slicewise where LPS becomes RAS.
    """
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(spacing, dtype=np.float64).reshape(3)
    origin = np.asarray(origin, dtype=np.float64).reshape(3)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
    affine[:3, 3] = lps_to_ras @ origin
    return affine


def _find_series(folder: Path) -> dict[str, list[str]]:
    """Series instance UID -> file names sorted along the slice normal (GDCM), across all subfolders."""
    series_ids: list[str] = []
    for directory, _, files in os.walk(folder):
        if files:
            for series_id in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory):
                if series_id not in series_ids:
                    series_ids.append(series_id)
    return {
        sid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid, False, True)) for sid in series_ids
    }


def _describe_series(series: dict[str, list[str]]) -> str:
    parts = []
    for sid, files in series.items():
        description = ""
        try:
            description = str(pydicom.dcmread(files[0], stop_before_pixels=True).get("SeriesDescription", ""))
        except Exception:
            pass
        parts.append(f"{sid} {description!r} ({len(files)} files)".replace(" ''", ""))
    return "; ".join(parts)


def _scan_dicom_headers(folder: Path) -> list[tuple[str, str, bool]]:
    """(path, series UID, has pixel data) for every file pydicom recognises as DICOM; other files are ignored."""
    found = []
    for directory, _, files in os.walk(folder):
        for file in files:
            path = os.path.join(directory, file)
            try:
                ds = pydicom.dcmread(path, defer_size=256)
            except Exception:
                continue
            has_pixels = any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
            found.append((path, str(ds.get("SeriesInstanceUID", "")), has_pixels))
    return found


def _check_no_file_left_out(folder: Path, series: dict[str, list[str]], name: str) -> None:
    """GDCM silently drops DICOM files it cannot use (e.g. without pixel data); say so instead of reading a gap."""
    listed = {os.path.normpath(f) for files in series.values() for f in files}
    for path, series_uid, has_pixels in _scan_dicom_headers(folder):
        if os.path.normpath(path) in listed or (series and series_uid not in series):
            continue
        if not has_pixels and series_uid:
            raise InvalidInput(f"{name}: {Path(path).name} has no pixel data")
        if series_uid in series:
            raise InvalidInput(f"{name}: {Path(path).name} belongs to the series but cannot be read as an image")


def _is_dicomdir(path: str) -> bool:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        return sop_class == "1.2.840.10008.1.3.10" or "DirectoryRecordSequence" in ds
    except Exception:
        return False


def _check_before_gdcm(folder: Path, name: str) -> None:
    """GDCM trusts the lengths in a file's header: a corrupt DICOM file (found by fuzzing: a truncated one
    with a mangled meta header) made it allocate gigabytes while scanning for series. Every file pydicom
    recognises as DICOM must therefore hold pixel data that matches its Rows x Columns before GDCM sees it."""
    for path, series_uid, has_pixels in _scan_dicom_headers(folder):
        short = Path(path).name
        if not series_uid:
            if _is_dicomdir(path):
                continue  # the index of an exported disc: not an image, GDCM leaves it out too
            raise InvalidInput(
                f"{name}: {short} is a DICOM file without a series (SeriesInstanceUID); it is corrupt or not an image"
            )
        if not has_pixels:
            raise InvalidInput(f"{name}: {short} has no pixel data")
        try:
            ds = pydicom.dcmread(path, defer_size=256)
        except Exception as exc:
            raise InvalidInput(f"{name}: {short} is not a readable DICOM file ({exc})") from exc
        _check_pixel_size(ds, short, name)


def read_dicom_dir(folder: Path, name: str | None = None, relative_to: Path | None = None) -> Volume:
    name = name or folder.name
    _check_before_gdcm(folder, name)
    series = _find_series(folder)
    _check_no_file_left_out(folder, series, name)
    if not series:
        raise InvalidInput(f"{name}: no DICOM series found")
    if len(series) > 1:
        raise InvalidInput(f"{name}: holds {len(series)} DICOM series, expected one: {_describe_series(series)}")
    files = next(iter(series.values()))
    if len(files) == 1 and is_multiframe(files[0]):
        return read_multiframe(Path(files[0]), name, relative_to)
    headers = [_read_slice_header(f, name) for f in files]

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InvalidInput(f"{name}: cannot read the DICOM series ({str(exc).strip().splitlines()[-1]})") from exc
    if image.GetDimension() != 3 or image.GetSize()[2] < 2 or min(image.GetSize()) < 2:
        raise InvalidInput(f"{name}: the DICOM series is 2D (size {image.GetSize()}); slicewise needs a 3D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInput(f"{name}: colour DICOM images are not supported")

    affine = lps_to_ras_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
    positions = [h["position"] for h in headers]
    _check_regular_slices(affine, positions, image.GetSpacing()[2], name)
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{name}: the series contains NaN or infinite voxel values")

    first = headers[0]["dataset"]
    source_files = [
        (Path(f).relative_to(relative_to).as_posix() if relative_to is not None else str(Path(f).resolve()))
        for f in files
    ]
    meta = {
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "series_uid": str(first.get("SeriesInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "modality": str(first.get("Modality", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "slice_positions": [list(p) for p in positions],
        "sop_instance_uids": [h["sop_instance_uid"] for h in headers],
        "source_files": source_files,
    }
    return Volume(array=array, affine=affine, source="dicom", meta=meta)


def _read_slice_header(file: str, name: str) -> dict:
    short = Path(file).name
    try:
        ds = pydicom.dcmread(file, defer_size=256)
    except Exception as exc:
        raise InvalidInput(f"{name}: {short} is not a readable DICOM file ({exc})") from exc
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InvalidInput(f"{name}: {short} has no pixel data")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InvalidInput(
            f"{name}: {short} is a multi-frame (enhanced) DICOM; export the series as single-frame images"
        )
    _check_pixel_size(ds, short, name)
    position = ds.get("ImagePositionPatient")
    if position is None or len(position) != 3 or "ImageOrientationPatient" not in ds:
        raise InvalidInput(f"{name}: {short} has no image position/orientation, so its geometry is unknown")
    return {
        "dataset": ds,
        "position": [float(v) for v in position],
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
    }


MAX_COMPRESSED_FRAME_BYTES = 256 * 1024 * 1024


def _check_pixel_size(ds, short: str, name: str) -> None:
    """Rows x Columns x bytes per pixel must match the pixel data present, before SimpleITK allocates the
    series from the header: a header claiming 65535 x 65535 pixels would otherwise take gigabytes of memory."""
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        bits, samples = int(ds.get("BitsAllocated") or 0), int(ds.get("SamplesPerPixel") or 1)
    except Exception as exc:  # also pydicom's errors for a corrupt element
        raise InvalidInput(f"{name}: {short} has an unreadable image size ({exc})") from exc
    if rows < 1 or cols < 1 or bits not in (1, 8, 16, 32, 64) or samples < 1:
        raise InvalidInput(
            f"{name}: {short} has an invalid image size: {rows} x {cols} pixels, "
            f"{bits} bits allocated, {samples} samples per pixel"
        )
    expected = (rows * cols * samples * bits + 7) // 8
    try:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        compressed = bool(syntax is not None and syntax.is_compressed)
    except Exception as exc:  # pydicom: "UID is not a transfer syntax", unknown VRs, ...
        raise InvalidInput(f"{name}: {short} has an unreadable transfer syntax ({exc})") from exc
    if compressed:
        if expected > MAX_COMPRESSED_FRAME_BYTES:
            raise InvalidInput(f"{name}: {short} claims {rows} x {cols} pixels, far more than a slice can have")
        return
    try:
        actual = len(ds.PixelData)
    except Exception as exc:
        raise InvalidInput(f"{name}: {short} has unreadable pixel data ({exc})") from exc
    if actual < expected:
        raise InvalidInput(
            f"{name}: {short} holds {actual} bytes of pixel data but its header says {rows} x {cols} "
            f"pixels of {bits} bits ({expected} bytes); the file is truncated or its header is wrong"
        )


def _check_regular_slices(
    affine: np.ndarray, positions_lps: list[list[float]], slice_spacing: float, name: str
) -> None:
    """Every slice must sit where the affine says; otherwise slices are missing or unevenly spaced."""
    # compare in RAS, against the affine; a point's RAS position is the origin of its own LPS->RAS affine
    ras = np.array([lps_to_ras_affine(np.eye(3), np.ones(3), p)[:3, 3] for p in positions_lps])
    expected = np.array([affine[:3, :3] @ [0, 0, k] + affine[:3, 3] for k in range(len(ras))])
    deviation = float(np.max(np.linalg.norm(expected - ras, axis=1)))
    if deviation > _SLICE_POSITION_TOLERANCE * slice_spacing + 1e-3:
        raise InvalidInput(
            f"{name}: slices are not evenly spaced (a slice is {deviation:.2f} mm off a regular grid); "
            "the series may have missing slices"
        )
