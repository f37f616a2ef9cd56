"""NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) volumes, read with SimpleITK in their exact geometry.

A detached header (.nhdr, .mhd) names its data file; an uploaded one may only name a plain file beside it
(never an absolute path or '..', which would make the server read a file of its own), and an attached one
(.nrrd, .mha) may name none. SimpleITK reads in LPS; the array (z, y, x) becomes (i, j, k) and the affine
goes through data.dicom.lps_to_ras_affine, as for DICOM.
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from data.dicom import lps_to_ras_affine
from data.errors import InvalidInput, TooLarge
from data.volume import Volume

ITK_KINDS = {".nrrd": "nrrd", ".nhdr": "nhdr", ".mha": "mha", ".mhd": "mhd"}
DETACHED = ("nhdr", "mhd")
MAX_HEADER_BYTES = 1 << 16
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def itk_kind(name: str) -> str | None:
    """nrrd | nhdr | mha | mhd from a file name, else None."""
    lower = name.lower()
    for suffix, kind in ITK_KINDS.items():
        if lower.endswith(suffix):
            return kind
    return None


def ras_to_lps_geometry(affine: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """(direction (9, row-major), spacing, origin) in LPS of a voxel -> RAS+ affine: lps_to_ras_affine undone."""
    affine = np.asarray(affine, dtype=np.float64)
    flip = np.diag([-1.0, -1.0, 1.0])
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    direction = flip @ affine[:3, :3] / spacing
    origin = flip @ affine[:3, 3]
    return tuple(direction.ravel()), tuple(spacing), tuple(origin)


def image_like(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of an (i, j, k) array placed by a RAS+ affine."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    direction, spacing, origin = ras_to_lps_geometry(affine)
    image.SetDirection(direction)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def header_text(path: Path, kind: str, name: str) -> str:
    """The text header of a NRRD or MetaImage file (up to the blank line / ElementDataFile)."""
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    if kind in ("nrrd", "nhdr"):
        if not head.startswith(b"NRRD000"):
            raise InvalidInput(f"{name}: not a NRRD file (it does not start with 'NRRD000')")
        end = head.find(b"\n\n")
        if end < 0 and kind == "nrrd":
            end = head.find(b"\r\n\r\n")
        text = head if end < 0 else head[:end]
    else:
        match = re.search(rb"ElementDataFile\s*=[^\n]*", head)
        if match is None:
            raise InvalidInput(f"{name}: not a MetaImage file (no ElementDataFile line in its header)")
        text = head[: match.end()]
    return text.decode("latin-1")


def data_file_of(text: str, kind: str) -> str | None:
    """The data file a header names, or None when the data is attached."""
    if kind in ("nrrd", "nhdr"):
        match = re.search(r"^\s*data ?file\s*:(.*)$", text, flags=re.MULTILINE | re.IGNORECASE)
    else:
        match = re.search(r"^\s*ElementDataFile\s*=(.*)$", text, flags=re.MULTILINE)
    if match is None:
        return None
    value = match.group(1).strip()
    return None if kind in ("mha", "mhd") and value.upper() == "LOCAL" else value


def check_data_file(path: Path, kind: str, name: str) -> None:
    """Refuse a header whose data lies anywhere but in the file itself (.nrrd/.mha) or one plain file beside it."""
    data_file = data_file_of(header_text(path, kind, name), kind)
    if kind not in DETACHED:
        if data_file is not None:
            raise InvalidInput(
                f"{name}: the header points to a separate data file ({data_file!r}); a .{kind} "
                "must hold its data (send a .nhdr/.mhd with its data file in a .zip)"
            )
        return
    if not data_file:
        raise InvalidInput(f"{name}: a .{kind} header must name its data file")
    if not _PLAIN_NAME.fullmatch(data_file):
        raise InvalidInput(
            f"{name}: the header's data file {data_file!r} must be a plain file name beside the header "
            "(no folders, lists or patterns)"
        )
    if not (path.parent / data_file).is_file():
        raise InvalidInput(
            f"{name}: its data file {data_file!r} is missing; send the header and the data file together in a .zip"
        )


def _bytes_per_voxel(pixel_id: int) -> int:
    return sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).dtype.itemsize


def read_itk_image(path: Path, name: str, max_bytes_expanded: int | None, vector: bool = False) -> sitk.Image:
    """The checked SimpleITK image: 3D, at most max_bytes_expanded of voxels; vector=True allows several
    components per voxel (the layers of a Slicer segmentation)."""
    kind = itk_kind(name) or itk_kind(path.name)
    if kind is None:
        raise InvalidInput(f"{name}: not a NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file")
    check_data_file(path, kind, name)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("NrrdImageIO" if kind in ("nrrd", "nhdr") else "MetaImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InvalidInput(f"{name}: cannot read the {kind.upper()} header ({_last_line(exc)})") from exc
    size = tuple(reader.GetSize())
    while len(size) > 3 and size[-1] == 1:
        size = size[:-1]
    if len(size) != 3 or min(size) < 2:
        raise InvalidInput(f"{name}: image of size {tuple(reader.GetSize())} is not a 3D volume")
    components = reader.GetNumberOfComponents()
    if components != 1 and not vector:
        raise InvalidInput(f"{name}: images with {components} components per voxel are not supported")
    n_bytes = int(np.prod(size, dtype=np.int64)) * components * _bytes_per_voxel(reader.GetPixelID())
    if max_bytes_expanded is not None and n_bytes > max_bytes_expanded:
        raise TooLarge(f"{name}: image of size {size} needs {n_bytes} bytes, over the limit of {max_bytes_expanded}")
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InvalidInput(f"{name}: cannot read the voxel data ({_last_line(exc)})") from exc
    if image.GetDimension() != 3:
        raise InvalidInput(f"{name}: image of size {image.GetSize()} is not a 3D volume")
    return image


def itk_affine(image: sitk.Image, name: str) -> np.ndarray:
    affine = lps_to_ras_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12 or None in nib.aff2axcodes(affine):
        raise InvalidInput(f"{name}: the header's spacing/direction is invalid")
    return affine


def itk_array(image: sitk.Image, name: str) -> np.ndarray:
    """The voxels as (i, j, k), or (i, j, k, component) for a vector image."""
    array = sitk.GetArrayFromImage(image)
    axes = (2, 1, 0) if array.ndim == 3 else (2, 1, 0, 3)
    array = np.ascontiguousarray(array.transpose(axes))
    if array.dtype.kind not in "biuf":
        raise InvalidInput(f"{name}: voxel type {array.dtype} is not supported")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{name}: the image contains NaN or infinite voxel values")
    return array


def read_itk_volume(path: Path, name: str, max_bytes_expanded: int | None) -> Volume:
    image = read_itk_image(Path(path), name, max_bytes_expanded)
    kind = itk_kind(name) or itk_kind(Path(path).name)
    return Volume(array=itk_array(image, name), affine=itk_affine(image, name), source="itk", meta={"itk_format": kind})


def _last_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def zip_header(members: list[str], name: str = "the zip") -> str | None:
    """The one .nhdr/.mhd header among a zip's member names (None when there is none)."""
    headers = [m for m in members if itk_kind(m) in DETACHED]
    if len(headers) > 1:
        raise InvalidInput(f"{name}: holds {len(headers)} .nhdr/.mhd headers; send one volume per upload")
    return headers[0] if headers else None


def read_itk_zip(path: Path, name: str, max_bytes_expanded: int | None) -> Volume:
    """A zip holding one .nhdr/.mhd header and its data file."""
    import tempfile

    from data.dicom_zip import extract_dicom_zip

    with tempfile.TemporaryDirectory(prefix="slicewise-itk-") as tmp:
        try:
            folder = extract_dicom_zip(path, Path(tmp) / "itk", max_bytes_expanded)
        except (InvalidInput, TooLarge) as exc:
            raise type(exc)(f"{name}: {exc}") from exc
        header = zip_header([p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()], name)
        if header is None:
            raise InvalidInput(f"{name}: the zip holds no .nhdr/.mhd header")
        volume = read_itk_volume(folder / header, f"{name}: {header}", max_bytes_expanded)
    volume.meta["itk_header"] = header
    return volume
