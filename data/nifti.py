"""NIfTI (.nii, .nii.gz): reading a volume with the affine the standard prescribes, writing masks back with its header.

The affine is the one the NIfTI standard says to use (sform if sform_code > 0, else qform if qform_code > 0,
else the pixdim-only fallback); the header is kept in Volume.meta so masks are written back with it.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from data.atomic import atomic_write
from data.errors import InvalidInput, TooLarge
from data.formats import CHUNK, NOT_SUPPORTED
from data.label_mask import as_label_mask
from data.volume import Volume


def read_nifti(path: Path, name: str, max_bytes_expanded: int | None) -> Volume:
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
    offset = _data_offset(raw, image, name)
    if len(raw) < offset + n_bytes:
        raise InvalidInput(
            f"{name}: the header declares shape {shape} ({n_bytes} bytes of voxels) but the file holds only "
            f"{max(len(raw) - offset, 0)}; the file is truncated or the header is wrong"
        )
    if len(raw) > offset + n_bytes:  # the dimensions do not describe the data: it would read scrambled
        raise InvalidInput(
            f"{name}: the header declares shape {shape} ({n_bytes} bytes of voxels) but the file holds "
            f"{len(raw) - offset - n_bytes} bytes more; the header's dimensions or voxel type are wrong"
        )
    try:
        array = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises several types for broken data
        raise InvalidInput(f"{name}: cannot read the voxel data ({exc})") from exc
    array = np.asarray(array).reshape(shape)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{name}: the image contains NaN or infinite voxel values")
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    if (
        not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12 or None in nib.aff2axcodes(affine)
    ):  # an axis with no direction of its own
        raise InvalidInput(f"{name}: the header's orientation (qform/sform) is invalid")
    if None in nib.aff2axcodes(affine):  # an axis nearly degenerate against the others: no orientation
        raise InvalidInput(f"{name}: the header's orientation (qform/sform) gives no direction to every axis")
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
            while chunk := f.read(CHUNK):
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


def _data_offset(raw: bytes, image, name: str) -> int:
    """Where the voxels start, as the file's own header says (an image parsed from bytes forgets it)."""
    try:
        offset = int(type(image.header).from_fileobj(io.BytesIO(raw)).get_data_offset())
    except Exception as exc:  # NaN or absurd vox_offset
        raise InvalidInput(f"{name}: bad NIfTI header: the data offset (vox_offset) is invalid ({exc})") from exc
    minimum = image.header.sizeof_hdr + 4  # the header and its extension flag
    if offset == 0:  # "unset": the voxels follow the header, as nibabel reads them
        return minimum
    if offset < minimum:
        raise InvalidInput(f"{name}: bad NIfTI header: the data offset (vox_offset) {offset} lies inside the header")
    return offset


def _volume_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """3D shape after dropping trailing singleton dimensions; 2D and true 4D images are refused."""
    squeezed = list(shape)
    while len(squeezed) > 3 and squeezed[-1] == 1:
        squeezed.pop()
    if len(squeezed) > 3:
        raise InvalidInput(
            f"{name}: image has {len(squeezed)} dimensions {tuple(shape)}; slicewise needs one 3D volume"
        )
    if any(n <= 0 for n in squeezed):
        raise InvalidInput(f"{name}: image has an empty dimension {tuple(shape)}")
    if len(squeezed) < 3 or min(squeezed) < 2:
        raise InvalidInput(f"{name}: image is 2D {tuple(shape)}; slicewise needs a 3D volume")
    return tuple(squeezed)  # type: ignore[return-value]


def write_nifti_mask(mask: np.ndarray, like: Volume, path: str | Path) -> Path:
    """Write a label mask as NIfTI in the exact geometry of `like`, atomically."""
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise InvalidInput(f"a NIfTI mask path must end in .nii or .nii.gz, got {path.name}")
    image = _nifti_mask_image(as_label_mask(mask, like), like)
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
