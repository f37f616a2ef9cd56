"""The HTTP API in-process (FastAPI TestClient): projects, uploads (NIfTI, DICOM zip), metadata, slice PNGs."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DICOM_SERIES = SHARED_DATA / "dicom" / "study1_hippocampus_crop"
OBLIQUE_SERIES = SHARED_DATA / "dicom" / "study3_t1_post_contrast"
LABELS = [{"value": 1, "name": "anterior", "color": "#e6194b"}, {"value": 2, "name": "posterior", "color": "#3cb44b"}]
CONTRACT_PATHS = [
    "/api/health",
    "/api/projects",
    "/api/projects/{project_id}",
    "/api/projects/{project_id}/volumes",
    "/api/volumes/{volume_id}",
    "/api/volumes/{volume_id}/slices/{axis}/{index}.png",
]


def needs_dicom():
    if not DICOM_SERIES.is_dir():
        pytest.skip(f"shared DICOM data not found at {DICOM_SERIES} (../shared/data is absent)")


def oblique_affine() -> np.ndarray:
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = [-10.0, 22.5, 7.0]
    return affine


def write_nifti(path: Path, shape=(20, 24, 16), dtype=np.int16, affine=None) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    array = rng.integers(-200, 1800, size=shape).astype(dtype)
    affine = oblique_affine() if affine is None else affine
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path, array, affine


def zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, f"{prefix}{file.name}")
    return zip_path


def expected_grey(slice_2d: np.ndarray, window: float, level: float) -> np.ndarray:
    low = level - window / 2
    return np.clip(np.round((slice_2d.astype(np.float64) - low) / window * 255), 0, 255).astype(np.uint8)


def png_array(content: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(content))
    assert image.mode == "L"
    return np.asarray(image)


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(Settings(workspace=tmp_path / "ws", demo=False))) as c:
        yield c


@pytest.fixture
def project(client) -> dict:
    response = client.post("/api/projects", json={"name": "Hippocampus", "labels": LABELS})
    assert response.status_code == 201, response.text
    return response.json()


def upload(client, project_id: int, path: Path, name: str | None = None):
    with open(path, "rb") as f:
        return client.post(f"/api/projects/{project_id}/volumes", files={"file": (name or path.name, f)})


def test_health(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_openapi_describes_the_contract_paths(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert [p for p in CONTRACT_PATHS if p not in paths] == []
    upload_body = paths["/api/projects/{project_id}/volumes"]["post"]["requestBody"]["content"]
    assert "file" in upload_body["multipart/form-data"]["schema"]["properties"]
    assert client.get("/docs").status_code == 200


def test_create_list_and_get_projects(client):
    created = client.post("/api/projects", json={"name": "  Knee  ", "labels": LABELS})
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "Knee" and body["labels"] == LABELS
    assert created.headers["location"] == f"/api/projects/{body['id']}"
    second = client.post("/api/projects", json={"name": "Brain", "labels": LABELS[:1]}).json()

    listed = client.get("/api/projects").json()
    assert [(p["id"], p["name"]) for p in listed] == [(body["id"], "Knee"), (second["id"], "Brain")]
    assert client.get(f"/api/projects/{second['id']}").json()["labels"] == LABELS[:1]


def test_upload_nifti_then_list_and_metadata(client, project, tmp_path):
    path, array, affine = write_nifti(tmp_path / "scan.nii.gz")
    response = upload(client, project["id"], path)
    assert response.status_code == 201, response.text
    volume = response.json()
    assert response.headers["location"] == f"/api/volumes/{volume['id']}"
    assert volume["project_id"] == project["id"] and volume["name"] == "scan" and volume["source"] == "nifti"
    assert volume["shape"] == list(array.shape)
    np.testing.assert_allclose(volume["spacing"], [0.8, 1.2, 2.5], rtol=1e-6)
    assert volume["orientation"] == "".join(nib.aff2axcodes(affine))

    listed = client.get(f"/api/projects/{project['id']}/volumes").json()
    assert [(v["id"], v["shape"], v["orientation"]) for v in listed] == [
        (volume["id"], list(array.shape), volume["orientation"])
    ]

    meta = client.get(f"/api/volumes/{volume['id']}").json()
    np.testing.assert_allclose(meta["affine"], affine, atol=1e-5)
    assert meta["source"] == "nifti" and meta["shape"] == list(array.shape)
    assert meta["dtype"]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_png_is_np_take_after_windowing(client, project, tmp_path, axis):
    path, array, _ = write_nifti(tmp_path / "scan.nii.gz")
    volume_id = upload(client, project["id"], path).json()["id"]
    for index in (0, array.shape[axis] // 2, array.shape[axis] - 1):
        response = client.get(f"/api/volumes/{volume_id}/slices/{axis}/{index}.png?window=900&level=400")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        expected = expected_grey(np.take(array, index, axis), 900, 400)
        got = png_array(response.content)
        # rows = the first remaining voxel axis, columns = the second; no transpose, no flip
        remaining = [n for a, n in enumerate(array.shape) if a != axis]
        assert got.shape == tuple(remaining)
        np.testing.assert_array_equal(got, expected)
        assert response.headers["x-slice-shape"] == f"{remaining[0]},{remaining[1]}"
        assert response.headers["x-volume-shape"] == ",".join(map(str, array.shape))
        assert response.headers["x-slice-axis"] == str(axis) and response.headers["x-slice-index"] == str(index)


def test_default_window_spans_1st_to_99th_percentile(client, project, tmp_path):
    path, array, _ = write_nifti(tmp_path / "scan.nii.gz")
    volume_id = upload(client, project["id"], path).json()["id"]
    p1, p99 = np.percentile(array.astype(np.float64), [1, 99])
    response = client.get(f"/api/volumes/{volume_id}/slices/2/3.png")
    assert response.status_code == 200
    window, level = float(response.headers["x-window"]), float(response.headers["x-level"])
    assert window == pytest.approx(p99 - p1) and level == pytest.approx((p1 + p99) / 2)
    np.testing.assert_array_equal(png_array(response.content), expected_grey(array[:, :, 3], window, level))
    # only the missing one of the two takes its default
    response = client.get(f"/api/volumes/{volume_id}/slices/2/3.png?level=0")
    assert float(response.headers["x-window"]) == pytest.approx(p99 - p1)
    np.testing.assert_array_equal(png_array(response.content), expected_grey(array[:, :, 3], p99 - p1, 0))


def test_constant_volume_renders(client, project, tmp_path):
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 9, 10), 7, dtype=np.int16), np.eye(4)), str(path))
    volume_id = upload(client, project["id"], path).json()["id"]
    response = client.get(f"/api/volumes/{volume_id}/slices/0/0.png")
    assert response.status_code == 200 and png_array(response.content).shape == (9, 10)


def test_upload_dicom_zip(client, project, tmp_path):
    needs_dicom()
    zip_path = zip_folder(DICOM_SERIES, tmp_path / "study1.zip", prefix="series/")
    response = upload(client, project["id"], zip_path)
    assert response.status_code == 201, response.text
    volume = response.json()
    assert volume["source"] == "dicom" and volume["name"] == "study1"
    assert len(volume["shape"]) == 3 and sorted(volume["shape"])[0] > 1

    first = pydicom.dcmread(next(DICOM_SERIES.iterdir()), stop_before_pixels=True)
    meta = client.get(f"/api/volumes/{volume['id']}").json()
    assert meta["source"] == "dicom"
    assert meta["meta"]["series_uid"] == first.SeriesInstanceUID
    assert meta["meta"]["study_uid"] == first.StudyInstanceUID
    assert meta["meta"]["frame_of_reference_uid"] == first.FrameOfReferenceUID
    assert len(meta["affine"]) == 4

    rows, cols = first.Rows, first.Columns
    # the stored array is (x, y, z) = (columns, rows, slices): a slice along axis 2 is cols x rows
    assert volume["shape"][:2] == [cols, rows]
    response = client.get(f"/api/volumes/{volume['id']}/slices/2/0.png")
    assert response.status_code == 200
    assert png_array(response.content).shape == (cols, rows)


def test_upload_oblique_dicom_series_keeps_its_geometry(client, project, tmp_path):
    if not OBLIQUE_SERIES.is_dir():
        pytest.skip(f"shared DICOM data not found at {OBLIQUE_SERIES} (../shared/data is absent)")
    response = upload(client, project["id"], zip_folder(OBLIQUE_SERIES, tmp_path / "t1.zip"))
    assert response.status_code == 201, response.text
    meta = client.get(f"/api/volumes/{response.json()['id']}").json()
    affine = np.array(meta["affine"])
    rotation = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    assert not np.allclose(np.abs(rotation), np.eye(3), atol=1e-3)  # oblique stays oblique
    assert sorted(meta["shape"]) == [22, 280, 320]
    assert sorted(np.round(meta["spacing"], 2)) == pytest.approx(sorted([0.69, 0.69, 6.5]), abs=0.02)


def test_volumes_stay_in_their_project(client, project, tmp_path):
    other = client.post("/api/projects", json={"name": "Other", "labels": LABELS}).json()
    path, _, _ = write_nifti(tmp_path / "a.nii.gz")
    upload(client, project["id"], path)
    assert client.get(f"/api/projects/{other['id']}/volumes").json() == []
    assert len(client.get(f"/api/projects/{project['id']}/volumes").json()) == 1


def test_unexpected_errors_are_a_plain_500(tmp_path, caplog):
    app = create_app(Settings(workspace=tmp_path / "ws"))

    @app.get("/api/boom")
    def boom():
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.get("/api/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error; the server log has the details"}
    assert "secret internals" in caplog.text  # logged with its traceback, not sent to the client


def test_settings_come_from_flags_then_environment_then_defaults(tmp_path):
    from app.settings import SettingsError

    assert Settings().workspace == Path("workspace") and Settings().port == 8000 and Settings().host == "127.0.0.1"
    assert Settings().max_upload_bytes == 1024 * 1024 * 1024
    env = {
        "SLICEWISE_WORKSPACE": str(tmp_path),
        "SLICEWISE_PORT": "9001",
        "SLICEWISE_MAX_UPLOAD_MB": "2",
        "SLICEWISE_DEMO": "no",
    }
    settings = Settings.from_env(env, port=9100, host=None)
    assert settings.workspace == tmp_path and settings.port == 9100 and settings.host == "127.0.0.1"
    assert settings.max_upload_bytes == 2 * 1024 * 1024 and settings.demo is False
    assert Settings.from_env({}).demo is True  # `slicewise serve` seeds the demo unless told not to
    for bad in ({"SLICEWISE_PORT": "eighty"}, {"SLICEWISE_MAX_UPLOAD_MB": "-1"}, {"SLICEWISE_DEVICE": "tpu"}):
        with pytest.raises(SettingsError, match="SLICEWISE_|device"):
            Settings.from_env(bad)


def test_runner_settings_default_to_local_and_ray_needs_an_address():
    from app.jobs import LocalRunner, runner_for
    from app.settings import SettingsError

    assert Settings().runner == "local" and isinstance(runner_for(Settings()), LocalRunner)
    settings = Settings.from_env({"SLICEWISE_RUNNER": "ray"}, ray_address="127.0.0.1:6379")  # env and flag together
    assert settings.runner == "ray" and settings.ray_address == "127.0.0.1:6379"
    assert Settings.from_env({"SLICEWISE_RUNNER": "ray", "SLICEWISE_RAY_ADDRESS": "10.0.0.1:6379"}).ray_address
    with pytest.raises(SettingsError, match="--ray-address"):
        Settings.from_env({"SLICEWISE_RUNNER": "ray"})
    with pytest.raises(SettingsError, match="runner must be one of"):
        Settings.from_env({"SLICEWISE_RUNNER": "slurm"})
