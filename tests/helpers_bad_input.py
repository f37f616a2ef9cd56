"""Shared by the bad-input tests (test_api_bad_input, test_hostile_input, test_fuzz_uploads, test_volume_io):
upload bodies, a small workspace behind the in-process API, and the check that a refusal leaves the workspace
exactly as it was (every file and folder, every database row).

    api = make_api(tmp_path)
    assert_refused(api, lambda: api.upload("scan.nii.gz", b"junk"), 422, "scan.nii.gz")
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sqlite3
import zipfile
from collections.abc import Callable, Collection
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DICOM = SHARED_DATA / "dicom"
LABELS = [{"value": 1, "name": "anterior", "color": "#e6194b"}, {"value": 2, "name": "posterior", "color": "#3cb44b"}]
SHAPE = (12, 14, 10)


# ------------------------------------------------------------------ upload bodies


def nifti_bytes(array: np.ndarray, affine=None) -> bytes:
    image = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
    return gzip.compress(image.to_bytes())


GOOD_NIFTI = nifti_bytes(np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE))


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def dicom_without_pixels(path: Path) -> bytes:
    """The DICOM file at `path` with its PixelData element removed."""
    ds = pydicom.dcmread(path)
    del ds.PixelData
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def needs_dicom():
    if not DICOM.is_dir():
        pytest.skip(f"shared DICOM data not found at {DICOM} (../shared/data is absent)")


# ------------------------------------------------------------------ the workspace before and after


def content_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def size_and_mtime(path: Path) -> tuple[int, int]:
    """Cheaper than content_hash; still sees a file rewritten in place (its mtime changes)."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def workspace_snapshot(root: Path, fingerprint: Callable[[Path], object] = content_hash) -> tuple[dict, list, dict]:
    """(every file outside the database -> fingerprint(file), every folder, every row of every table)."""
    files = {
        str(p.relative_to(root)): fingerprint(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("slicewise.db")
    }
    folders = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())
    con = sqlite3.connect(root / "slicewise.db")
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: con.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}
    finally:
        con.close()
    return files, folders, rows


# ------------------------------------------------------------------ a small workspace behind the API


class Api:
    def __init__(self, client: TestClient, root: Path, project_id: int, volume_id: int):
        self.client, self.root, self.project_id, self.volume_id = client, root, project_id, volume_id

    def upload(self, name: str, data: bytes, project_id: int | None = None):
        project_id = self.project_id if project_id is None else project_id
        return self.client.post(f"/api/projects/{project_id}/volumes", files={"file": (name, data)})


def make_api(tmp_path: Path, **settings) -> Api:
    """A started TestClient over a new workspace with project P (LABELS) holding one good volume.
    The caller ends it: api.client.__exit__(None, None, None)."""
    root = tmp_path / "ws"
    client = TestClient(create_app(Settings(workspace=root, demo=False, **settings)))
    client.__enter__()
    project = client.post("/api/projects", json={"name": "P", "labels": LABELS}).json()
    volume = client.post(f"/api/projects/{project['id']}/volumes", files={"file": ("good.nii.gz", GOOD_NIFTI)})
    assert volume.status_code == 201, volume.text
    return Api(client, root, project["id"], volume.json()["id"])


def assert_refused(api: Api, request, status: int | Collection[int], *words: str) -> str:
    """Run request(); check the status (one code, or any of a collection of codes), that the message names
    the problem (every one of `words`, case-insensitive), and that nothing in the workspace changed."""
    statuses = (status,) if isinstance(status, int) else tuple(status)
    before = workspace_snapshot(api.root)
    response = request()
    assert response.status_code in statuses, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"]
    for word in words:
        assert word.lower() in body["detail"].lower(), body["detail"]
    assert workspace_snapshot(api.root) == before
    return body["detail"]
