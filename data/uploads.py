"""Reading a file a user uploaded: its name decides the format, and anything unsafe or unusable is refused."""

from __future__ import annotations

import zipfile
from pathlib import Path

from data.dicom_zip import read_dicom_zip
from data.errors import InvalidInput
from data.formats import kind_from_name
from data.itk_image import read_itk_volume, read_itk_zip, zip_header
from data.nifti import read_nifti
from data.volume import Volume


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
    kind = kind_from_name(filename)
    if kind == "itk":
        return read_itk_volume(path, filename, max_bytes_expanded)
    if kind == "itk-header":
        raise InvalidInput(
            f"{filename}: a .nhdr/.mhd header keeps its voxels in another file; send the header "
            "and its data file together in a .zip"
        )
    if kind == "zip":
        if zip_header(_zip_names(path), filename) is not None:
            return read_itk_zip(path, filename, max_bytes_expanded)
        return read_dicom_zip(path, max_bytes_expanded=max_bytes_expanded, name=filename)
    return read_nifti(path, filename, max_bytes_expanded=max_bytes_expanded)


def _zip_names(path: Path) -> list[str]:
    """Member names, or none for a broken zip (the DICOM reader then says what is wrong with it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return []


def _check_filename(filename: str) -> None:
    if not isinstance(filename, str) or not filename.strip():
        raise InvalidInput("the upload has no file name")
    if "/" in filename or "\\" in filename or ".." in filename or "\x00" in filename:
        raise InvalidInput(f"file name {filename!r} must be a plain name without folders or '..'")
    if len(filename) > 255:
        raise InvalidInput("file name is longer than 255 characters")
