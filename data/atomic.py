"""Atomic file writes: write a temp file in the target's folder, fsync it, rename over the target, fsync the folder.

A crash at any point leaves either the old file or the new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    try:
        _fsync_path(directory)
    except OSError:
        # Some filesystems refuse to open/fsync directories; the rename is still atomic there.
        pass


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; on a clean exit it replaces `path` durably, on error it is removed.

    The temp name ends with the target's full name so suffix-sensitive writers (".nii.gz") behave the same.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{secrets.token_hex(6)}-{path.name}"
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file for {path}")
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (same file system: no space used), else copy it atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        atomic_write_bytes(target, source.read_bytes())


def read_from(path: Path, offset: int) -> bytes:
    """The bytes of `path` from `offset` on (b"" when it cannot be read): the new part of a growing file."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""
