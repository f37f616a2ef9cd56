"""File-side helpers of the workspace: staging an imported volume, durable folder moves, cleanup."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from data import io as volume_io
from data.volume import Volume

GZIP_MAGIC = b"\x1f\x8b"
IMAGE_CACHE = "image.npy"


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under root (and root), so a later rename publishes durable content."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync folders; the rename is still atomic there
    finally:
        os.close(fd)


def stage_volume(staging: Path, upload_path: Path, volume: Volume, max_bytes_expanded: int) -> str:
    """Fill `staging` with the stored source and the image cache; return the source's path inside it.

    NIfTI is kept byte for byte as uploaded; a DICOM zip is extracted into dicom/ so load_volume and
    DICOM-SEG export can read the original instances later.
    """
    staging.mkdir(parents=True)
    upload_path = Path(upload_path)
    if volume.source == "nifti":
        with open(upload_path, "rb") as f:
            gzipped = f.read(2) == GZIP_MAGIC
        source = staging / ("image.nii.gz" if gzipped else "image.nii")
        shutil.copyfile(upload_path, source)
    elif volume.source == "itk" and "itk_header" in volume.meta:
        folder = volume_io.extract_dicom_zip(upload_path, staging / "itk", max_bytes_expanded)
        source = Path(folder) / volume.meta["itk_header"]
    elif volume.source == "itk":
        source = staging / f"image.{volume.meta['itk_format']}"
        shutil.copyfile(upload_path, source)
    else:
        source = Path(volume_io.extract_dicom_zip(upload_path, staging / "dicom", max_bytes_expanded))
    np.save(staging / IMAGE_CACHE, volume.array)
    fsync_tree(staging)
    return source.resolve().relative_to(staging.resolve()).as_posix()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_stale_staging(tmp_dir: Path, older_than_s: float) -> None:
    """Remove staging folders left by an import that crashed; recent ones may belong to a running import."""
    if not tmp_dir.is_dir():
        return
    cutoff = time.time() - older_than_s
    for entry in tmp_dir.iterdir():
        try:
            if entry.stat().st_mtime < cutoff:
                remove_tree(entry) if entry.is_dir() else entry.unlink()
        except FileNotFoundError:
            pass
