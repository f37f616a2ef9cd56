"""GET /api/volumes/{id}/voxels: the whole array as uint16 + offset/scale, exact for 16-bit integer data."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import voxel_stream
from app.main import create_app
from app.settings import Settings

LABELS = [{"value": 1, "name": "tissue", "color": "#e6194b"}]


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(Settings(workspace=tmp_path / "ws", demo=False))) as c:
        yield c


def upload_array(client, tmp_path, array: np.ndarray) -> dict:
    project = client.post("/api/projects", json={"name": "Voxels", "labels": LABELS}).json()
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(array, np.diag([0.7, 0.8, 3.0, 1.0])), str(path))
    with open(path, "rb") as f:
        response = client.post(f"/api/projects/{project['id']}/volumes", files={"file": (path.name, f)})
    assert response.status_code == 201, response.text
    return response.json()


def decoded(response) -> np.ndarray:
    shape = [int(n) for n in response.headers["x-volume-shape"].split(",")]
    q = np.frombuffer(response.content, dtype="<u2").reshape(shape)
    return float(response.headers["x-intensity-offset"]) + float(response.headers["x-intensity-scale"]) * q


def test_int16_ct_travels_exactly_in_c_order(client, tmp_path):
    rng = np.random.default_rng(1)
    array = rng.integers(-1024, 3000, size=(9, 7, 5)).astype(np.int16)
    volume = upload_array(client, tmp_path, array)
    response = client.get(f"/api/volumes/{volume['id']}/voxels")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-intensity-exact"] == "true"
    assert int(response.headers["content-length"]) == 2 * array.size
    stored = client.get(f"/api/volumes/{volume['id']}").json()["shape"]
    np.testing.assert_array_equal(decoded(response), np.asarray(nib.load(tmp_path / "scan.nii.gz").dataobj))
    assert list(decoded(response).shape) == stored
    assert float(response.headers["x-window"]) > 0


def test_float_volume_is_quantized_within_one_level(client, tmp_path, monkeypatch):
    monkeypatch.setattr(voxel_stream, "SLAB_VOXELS", 10)  # several slabs even for a tiny volume
    array = np.linspace(-3.5, 12.25, 6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    volume = upload_array(client, tmp_path, array)
    response = client.get(f"/api/volumes/{volume['id']}/voxels")
    assert response.headers["x-intensity-exact"] == "false"
    step = float(response.headers["x-intensity-scale"])
    assert step == pytest.approx((12.25 + 3.5) / 65535)
    np.testing.assert_allclose(decoded(response), array, atol=step / 2 + 1e-6)


def test_unknown_volume_is_404(client):
    response = client.get("/api/volumes/999/voxels")
    assert response.status_code == 404
    assert "999" in response.json()["detail"]
