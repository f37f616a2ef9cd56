"""Reading volumes (NIfTI, DICOM series folder, zip of one DICOM series) and writing masks in their exact geometry.

Geometry conventions:
- Volume.affine maps voxel (i, j, k) of Volume.array to world RAS+ millimetres.
- NIfTI: the affine is the one the NIfTI standard says to use (sform if sform_code > 0, else qform if
  qform_code > 0, else the pixdim-only fallback); the header is kept so masks are written back with it.
- DICOM: SimpleITK reads the series in LPS; its array (z, y, x) is transposed to (x, y, z) = (i, j, k) and
  the LPS->RAS flip happens in exactly one place, `lps_to_ras_affine`.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk

from data.atomic import atomic_write
from data.errors import InvalidInput, TooLarge
from data.volume import IGNORE, Volume

NOT_SUPPORTED = "file is not a NIfTI (.nii, .nii.gz) or a zip of one DICOM series"
MAX_ZIP_MEMBERS = 100_000
_CHUNK = 1 << 20
# Slices may deviate this fraction of the slice spacing from a regular grid before we refuse the series.
_SLICE_POSITION_TOLERANCE = 0.1


# ----------------------------------------------------------------------------------------------------------
# geometry


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


# ----------------------------------------------------------------------------------------------------------
# entry points


def read_volume(path: str | Path) -> Volume:
    """Read a .nii / .nii.gz file, a DICOM series folder, or a .zip of one DICOM series (trusted path, no size limit)."""
    path = Path(path)
    if path.is_dir():
        return _read_dicom_dir(path)
    if not path.exists():
        raise InvalidInput(f"{path.name}: file not found")
    kind = _kind_from_name(path.name)
    if kind == "zip":
        return _read_dicom_zip(path, max_bytes_expanded=None)
    return _read_nifti(path, path.name, max_bytes_expanded=None)


def read_upload(path: Path, filename: str, max_bytes_expanded: int) -> Volume:
    """Read a file a user sent, refusing anything unsafe or unusable with InvalidInput / TooLarge.

    `filename` is the name the user gave (decides the format); `path` is where the bytes are on disk.
    Temporary files are always removed; the returned Volume holds its voxels in memory.
    """
    _check_filename(filename)
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{filename}: upload is missing")
    if path.stat().st_size == 0:
        raise InvalidInput(f"{filename}: the file is empty")
    kind = _kind_from_name(filename)
    if kind == "zip":
        return _read_dicom_zip(path, max_bytes_expanded=max_bytes_expanded, name=filename)
    return _read_nifti(path, filename, max_bytes_expanded=max_bytes_expanded)


def _check_filename(filename: str) -> None:
    if not isinstance(filename, str) or not filename.strip():
        raise InvalidInput("the upload has no file name")
    if "/" in filename or "\\" in filename or ".." in filename or "\x00" in filename:
        raise InvalidInput(f"file name {filename!r} must be a plain name without folders or '..'")
    if len(filename) > 255:
        raise InvalidInput("file name is longer than 255 characters")


def _kind_from_name(name: str) -> str:
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return "nii.gz"
    if lower.endswith(".nii"):
        return "nii"
    if lower.endswith(".zip"):
        return "zip"
    raise InvalidInput(f"{name}: {NOT_SUPPORTED} (unsupported file name extension)")


# ----------------------------------------------------------------------------------------------------------
# NIfTI


def _read_nifti(path: Path, name: str, max_bytes_expanded: int | None) -> Volume:
    raw = _nifti_bytes(path, name, max_bytes_expanded)
    image = _parse_nifti(raw, name)
    header = image.header
    shape = _volume_shape(tuple(int(n) for n in header.get_data_shape()), name)
    dtype = header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InvalidInput(f"{name}: voxel type {dtype} is not supported (need integer or float voxels)")
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if max_bytes_expanded is not None and n_bytes > max_bytes_expanded:
        raise TooLarge(f"{name}: image of shape {shape} needs {n_bytes} bytes, over the limit of {max_bytes_expanded}")
    offset = int(header.get_data_offset())
    if len(raw) < offset + n_bytes:
        raise InvalidInput(
            f"{name}: the header declares shape {shape} ({n_bytes} bytes of voxels) but the file holds only "
            f"{max(len(raw) - offset, 0)}; the file is truncated or the header is wrong"
        )
    try:
        array = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises several types for broken data
        raise InvalidInput(f"{name}: cannot read the voxel data ({exc})") from exc
    array = np.asarray(array).reshape(shape)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{name}: the image contains NaN or infinite voxel values")
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InvalidInput(f"{name}: the header's orientation (qform/sform) is invalid")
    meta = {
        "nifti_header": header.copy(),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
    }
    return Volume(array=array, affine=affine, source="nifti", meta=meta)


def _nifti_bytes(path: Path, name: str, max_bytes_expanded: int | None) -> bytes:
    """The uncompressed NIfTI bytes; a .gz is decompressed in a streaming way so a gzip bomb stops early."""
    if not name.lower().endswith(".gz"):
        size = path.stat().st_size
        if max_bytes_expanded is not None and size > max_bytes_expanded:
            raise TooLarge(f"{name}: file of {size} bytes is over the limit of {max_bytes_expanded}")
        return path.read_bytes()
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise InvalidInput(f"{name}: {NOT_SUPPORTED}: the name ends in .gz but the content is not gzip data")
    chunks, total = [], 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                total += len(chunk)
                if max_bytes_expanded is not None and total > max_bytes_expanded:
                    raise TooLarge(f"{name}: decompresses to more than the limit of {max_bytes_expanded} bytes")
                chunks.append(chunk)
    except EOFError as exc:
        raise InvalidInput(f"{name}: {NOT_SUPPORTED}: the gzip stream is truncated") from exc
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise InvalidInput(f"{name}: {NOT_SUPPORTED}: the gzip stream is corrupt ({exc})") from exc
    return b"".join(chunks)


def _parse_nifti(raw: bytes, name: str):
    if len(raw) < 348:
        raise InvalidInput(f"{name}: {NOT_SUPPORTED}: too short to hold a NIfTI header")
    sizeof_hdr = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if 348 in sizeof_hdr and raw[344:347] in (b"n+1", b"ni1"):
        image_class = nib.Nifti1Image
    elif 540 in sizeof_hdr and len(raw) >= 540 and raw[4:7] in (b"n+2", b"ni2"):
        image_class = nib.Nifti2Image
    else:
        raise InvalidInput(f"{name}: {NOT_SUPPORTED}: no NIfTI header found")
    if raw[344:347] == b"ni1" or raw[4:7] == b"ni2":
        raise InvalidInput(f"{name}: a NIfTI header without its image (.hdr/.img pair) cannot be uploaded; use .nii")
    try:
        return image_class.from_bytes(raw)
    except Exception as exc:  # nibabel raises HeaderDataError, ValueError, ... for bad headers
        raise InvalidInput(f"{name}: bad NIfTI header ({exc})") from exc


def _volume_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """3D shape after dropping trailing singleton dimensions; 2D and true 4D images are refused."""
    squeezed = list(shape)
    while len(squeezed) > 3 and squeezed[-1] == 1:
        squeezed.pop()
    if len(squeezed) > 3:
        raise InvalidInput(f"{name}: image has {len(squeezed)} dimensions {tuple(shape)}; slicewise needs one 3D volume")
    if any(n <= 0 for n in squeezed):
        raise InvalidInput(f"{name}: image has an empty dimension {tuple(shape)}")
    if len(squeezed) < 3 or min(squeezed) < 2:
        raise InvalidInput(f"{name}: image is 2D {tuple(shape)}; slicewise needs a 3D volume")
    return tuple(squeezed)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------
# zip of a DICOM series


def extract_dicom_zip(zip_path: str | Path, dest_dir: str | Path, max_bytes_expanded: int | None) -> Path:
    """Safely extract a zip into dest_dir (which must not exist or be empty); returns dest_dir.

    Refuses absolute or '..' member paths, links and encrypted members (InvalidInput), and more than
    max_bytes_expanded bytes, counted both from the declared sizes and while extracting (TooLarge).
    On any failure nothing is left behind.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    if dest_dir.exists() and any(dest_dir.iterdir()):
        raise FileExistsError(f"extraction target {dest_dir} is not empty")
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_dir.parent))
    try:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                members = _checked_members(archive, max_bytes_expanded)
                _extract_members(archive, members, staging, max_bytes_expanded)
        except zipfile.BadZipFile as exc:
            raise InvalidInput(f"{NOT_SUPPORTED}: the zip is corrupt ({exc})") from exc
        except (NotImplementedError, RuntimeError) as exc:
            raise InvalidInput(f"cannot extract the zip ({exc})") from exc
        if dest_dir.exists():
            dest_dir.rmdir()
        os.replace(staging, dest_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest_dir


def _declared_uncompressed_size(members: list[zipfile.ZipInfo]) -> int:
    return sum(info.file_size for info in members)


def _checked_members(archive: zipfile.ZipFile, max_bytes_expanded: int | None) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise TooLarge(f"the zip holds {len(infos)} entries, more than the limit of {MAX_ZIP_MEMBERS}")
    members = []
    for info in infos:
        relative = _safe_member_path(info.filename)
        if info.is_dir():
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidInput(f"zip member {info.filename!r} is a link; links are not allowed")
        if info.flag_bits & 0x1:
            raise InvalidInput(f"zip member {info.filename!r} is encrypted; upload an unencrypted zip")
        members.append((info, relative))
    if not members:
        raise InvalidInput("the zip is empty: no DICOM series found")
    declared = _declared_uncompressed_size([info for info, _ in members])
    if max_bytes_expanded is not None and declared > max_bytes_expanded:
        raise TooLarge(f"the zip expands to {declared} bytes, over the limit of {max_bytes_expanded}")
    return members


def _safe_member_path(name: str) -> PurePosixPath:
    parts = name.replace("\\", "/").split("/")
    absolute = name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")
    if absolute or ".." in parts or "\x00" in name:
        raise InvalidInput(f"zip member {name!r} points outside the archive; refusing to extract")
    clean = [p for p in parts if p not in ("", ".")]
    return PurePosixPath(*clean) if clean else PurePosixPath(".")


def _extract_members(archive, members, staging: Path, max_bytes_expanded: int | None) -> None:
    written = 0
    root = staging.resolve()
    for info, relative in members:
        target = staging.joinpath(*relative.parts)
        if root not in target.resolve().parents:
            raise InvalidInput(f"zip member {info.filename!r} points outside the archive; refusing to extract")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if max_bytes_expanded is not None and written > max_bytes_expanded:
                        raise TooLarge(f"the zip expands to more than the limit of {max_bytes_expanded} bytes")
                    dst.write(chunk)
        except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
            raise InvalidInput(f"zip member {info.filename!r} clashes with another member") from exc


def _read_dicom_zip(path: Path, max_bytes_expanded: int | None, name: str | None = None) -> Volume:
    name = name or path.name
    with tempfile.TemporaryDirectory(prefix="slicewise-zip-") as tmp:
        try:
            folder = extract_dicom_zip(path, Path(tmp) / "series", max_bytes_expanded)
        except (InvalidInput, TooLarge) as exc:
            raise type(exc)(f"{name}: {exc}") from exc
        volume = _read_dicom_dir(folder, name=name, relative_to=folder)
    volume.meta["source_zip"] = str(path)
    return volume


# ----------------------------------------------------------------------------------------------------------
# DICOM series


def _find_series(folder: Path) -> dict[str, list[str]]:
    """Series instance UID -> file names sorted along the slice normal (GDCM), across all subfolders."""
    series_ids: list[str] = []
    for directory, _, files in os.walk(folder):
        if files:
            for series_id in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory):
                if series_id not in series_ids:
                    series_ids.append(series_id)
    return {
        sid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid, False, True))
        for sid in series_ids
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


def _read_dicom_dir(folder: Path, name: str | None = None, relative_to: Path | None = None) -> Volume:
    name = name or folder.name
    series = _find_series(folder)
    _check_no_file_left_out(folder, series, name)
    if not series:
        raise InvalidInput(f"{name}: no DICOM series found")
    if len(series) > 1:
        raise InvalidInput(f"{name}: holds {len(series)} DICOM series, expected one: {_describe_series(series)}")
    files = next(iter(series.values()))
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
        raise InvalidInput(f"{name}: {short} is a multi-frame (enhanced) DICOM; export the series as single-frame images")
    position = ds.get("ImagePositionPatient")
    if position is None or len(position) != 3 or "ImageOrientationPatient" not in ds:
        raise InvalidInput(f"{name}: {short} has no image position/orientation, so its geometry is unknown")
    return {
        "dataset": ds,
        "position": [float(v) for v in position],
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
    }


def _check_regular_slices(affine: np.ndarray, positions_lps: list[list[float]], slice_spacing: float, name: str) -> None:
    """Every slice must sit where the affine says; otherwise slices are missing or unevenly spaced."""
    lps = np.asarray(positions_lps) * np.array([-1.0, -1.0, 1.0])  # compare in RAS, against the affine
    expected = np.array([affine[:3, :3] @ [0, 0, k] + affine[:3, 3] for k in range(len(lps))])
    deviation = float(np.max(np.linalg.norm(expected - lps, axis=1)))
    if deviation > _SLICE_POSITION_TOLERANCE * slice_spacing + 1e-3:
        raise InvalidInput(
            f"{name}: slices are not evenly spaced (a slice is {deviation:.2f} mm off a regular grid); "
            "the series may have missing slices"
        )


# ----------------------------------------------------------------------------------------------------------
# writing masks


def _as_label_mask(mask, like: Volume) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != like.shape:
        raise InvalidInput(f"mask shape {mask.shape} does not match the volume shape {like.shape}")
    if mask.dtype.kind not in "biu":
        if mask.dtype.kind == "f" and np.isfinite(mask).all() and np.array_equal(mask, np.round(mask)):
            pass
        else:
            raise InvalidInput(f"mask must hold integer label values, got {mask.dtype}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise InvalidInput(f"mask values must be between 0 and 255, got {mask.min()}..{mask.max()}")
    return mask.astype(np.uint8)


def write_mask(mask: np.ndarray, like: Volume, path: str | Path, format: str = "nifti") -> Path:
    """Write a label mask in the exact geometry of `like`, atomically."""
    if format == "dicom-seg":
        return write_mask_dicom_seg(mask, like, path)
    if format != "nifti":
        raise InvalidInput(f"unknown mask format {format!r}; use 'nifti' or 'dicom-seg'")
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise InvalidInput(f"a NIfTI mask path must end in .nii or .nii.gz, got {path.name}")
    image = _nifti_mask_image(_as_label_mask(mask, like), like)
    with atomic_write(path) as tmp:
        nib.save(image, tmp)
    return path


def _nifti_mask_image(mask: np.ndarray, like: Volume):
    header = like.meta.get("nifti_header") if like.source == "nifti" else None
    if header is not None:
        # Copy the source header so qform and sform (values and codes) are exactly those of the input.
        header = header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1.0, 0.0)
        header["cal_min"], header["cal_max"] = 0, 0
        header.set_intent("none")
        header["descrip"] = b"slicewise mask"
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        image = image_class(mask, None, header=header)
        if not np.allclose(image.header.get_best_affine(), like.affine, atol=1e-4):
            raise InvalidInput("the volume's affine no longer matches its NIfTI header; cannot write its geometry")
        return image
    image = nib.Nifti1Image(mask, like.affine)
    image.header.set_data_dtype(np.uint8)
    image.set_qform(like.affine, code=1)
    image.set_sform(like.affine, code=1)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = b"slicewise mask"
    return image


def _hex_to_cielab(color: str):
    from highdicom.color import CIELabColor

    digits = str(color).lstrip("#")
    try:
        if len(digits) != 6:
            raise ValueError
        r, g, b = (int(digits[i : i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        raise InvalidInput(f"colour {color!r} is not #rrggbb") from None
    return CIELabColor.from_rgb(r, g, b)


def _source_datasets(like: Volume) -> list[pydicom.Dataset]:
    files = like.meta.get("source_files") or []
    if len(files) != like.shape[2]:
        raise InvalidInput("the volume does not list one source DICOM file per slice")
    zip_path = like.meta.get("source_zip")
    datasets = []
    archive = zipfile.ZipFile(zip_path) if zip_path and not Path(files[0]).is_absolute() else None
    try:
        for file in files:
            if archive is not None:
                datasets.append(pydicom.dcmread(io.BytesIO(archive.read(file))))
            elif Path(file).is_file():
                datasets.append(pydicom.dcmread(file))
            else:
                raise InvalidInput(f"source DICOM file {Path(file).name} is no longer available")
    except (KeyError, OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"source DICOM files are no longer available ({exc})") from exc
    finally:
        if archive is not None:
            archive.close()
    for ds in datasets:
        _fill_missing_type2(ds)
    return datasets


# Patient/study attributes DICOM lets a source leave empty (Type 2) but highdicom reads unconditionally.
_TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)


def _fill_missing_type2(ds: pydicom.Dataset) -> None:
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, None)


def write_mask_dicom_seg(
    mask: np.ndarray,
    like: Volume,
    path: str | Path,
    labels: list[dict] | None = None,
    *,
    algorithm_type: str = "SEMIAUTOMATIC",
) -> Path:
    """Write a DICOM-SEG (BINARY, one segment per label value present) referencing like's source images.

    Segments are numbered 1..N in increasing label value; IGNORE (255) voxels count as background.
    `labels` ([{"value", "name", "color"}]) names and colours segments; algorithm_type is MANUAL or
    SEMIAUTOMATIC (a prediction corrected by a person); both name slicewise as the algorithm.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if like.source != "dicom":
        raise InvalidInput("DICOM-SEG export needs a volume imported from DICOM; use NIfTI for this volume")
    if algorithm_type not in ("MANUAL", "SEMIAUTOMATIC"):
        raise InvalidInput(f"algorithm type must be MANUAL or SEMIAUTOMATIC, got {algorithm_type!r}")
    mask = _as_label_mask(mask, like)
    values = [int(v) for v in np.unique(mask) if v not in (0, IGNORE)]
    if not values:
        raise InvalidInput("the mask has no labelled voxels; a DICOM-SEG needs at least one segment")
    by_value = {int(item["value"]): item for item in (labels or [])}

    segment_numbers = np.zeros(256, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        segment_numbers[value] = number
    # frame k of the SEG is slice k of the volume as a DICOM image: rows = j (y), columns = i (x)
    frames = np.ascontiguousarray(segment_numbers[mask].transpose(2, 1, 0))

    algorithm = hd.AlgorithmIdentificationSequence(
        name="slicewise", family=codes.cid7162.ArtificialIntelligence, version=_version()
    )
    descriptions = []
    for number, value in enumerate(values, start=1):
        item = by_value.get(value, {})
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(item.get("name") or f"label {value}")[:64],
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues[algorithm_type],
                algorithm_identification=algorithm,
                display_color=_hex_to_cielab(item["color"]) if item.get("color") else None,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=_source_datasets(like),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="slicewise",
        manufacturer_model_name="slicewise",
        software_versions=_version(),
        device_serial_number="0",
        content_label="SLICEWISE",
        content_description="slicewise segmentation",
        series_description="slicewise segmentation",
    )
    _order_frames_like_sources(seg, like.meta["sop_instance_uids"])
    path = Path(path)
    with atomic_write(path) as tmp:
        seg.save_as(tmp)
    return path


def _order_frames_like_sources(seg, sop_instance_uids: list[str]) -> None:
    """Reorder SEG frames by (segment, source slice k); highdicom sorts them along its own normal instead.

    Frame order is free in a SEG without DimensionOrganizationType; every per-frame item (positions,
    dimension index values, source reference) travels with its frame, so only the order changes.
    """
    from pydicom.pixels import pack_bits, unpack_bits

    if seg.get("DimensionOrganizationType") or seg.SegmentationType != "BINARY":
        return
    items = list(seg.PerFrameFunctionalGroupsSequence)
    shared = seg.SharedFunctionalGroupsSequence[0]
    slice_of = {uid: k for k, uid in enumerate(sop_instance_uids)}

    def key(f: int) -> tuple[int, int]:
        item = items[f]
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        segment = (item if "SegmentIdentificationSequence" in item else shared).SegmentIdentificationSequence
        return int(segment[0].ReferencedSegmentNumber), slice_of[source]

    order = sorted(range(len(items)), key=key)
    if order == list(range(len(items))):
        return
    per_frame = int(seg.Rows) * int(seg.Columns)
    bits = unpack_bits(seg.PixelData)[: per_frame * len(items)].reshape(len(items), per_frame)
    seg.PixelData = pack_bits(np.ascontiguousarray(bits[order]).ravel())
    seg.PerFrameFunctionalGroupsSequence = [items[f] for f in order]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("slicewise")
    except Exception:
        return "0.1.0"
