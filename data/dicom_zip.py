"""A zip of one DICOM series: safe extraction (no escaping paths, links or zip bombs) and reading it."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from data.dicom import read_dicom_dir
from data.errors import InvalidInput, TooLarge
from data.formats import CHUNK, NOT_SUPPORTED
from data.volume import Volume

MAX_ZIP_MEMBERS = 100_000


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
        except (
            zipfile.BadZipFile,
            zlib.error,
            EOFError,
            struct.error,
            ValueError,
            OverflowError,
        ) as exc:  # broken data
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


def _checked_members(
    archive: zipfile.ZipFile, max_bytes_expanded: int | None
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
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
                while chunk := src.read(CHUNK):
                    written += len(chunk)
                    if max_bytes_expanded is not None and written > max_bytes_expanded:
                        raise TooLarge(f"the zip expands to more than the limit of {max_bytes_expanded} bytes")
                    dst.write(chunk)
        except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
            raise InvalidInput(f"zip member {info.filename!r} clashes with another member") from exc


def read_dicom_zip(path: Path, max_bytes_expanded: int | None, name: str | None = None) -> Volume:
    name = name or path.name
    with tempfile.TemporaryDirectory(prefix="slicewise-zip-") as tmp:
        try:
            folder = extract_dicom_zip(path, Path(tmp) / "series", max_bytes_expanded)
        except (InvalidInput, TooLarge) as exc:
            raise type(exc)(f"{name}: {exc}") from exc
        volume = read_dicom_dir(folder, name=name, relative_to=folder)
    volume.meta["source_zip"] = str(path)
    return volume
