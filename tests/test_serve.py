"""The real `slicewise serve` process over HTTP: start-up, upload, slice, limits, demo project, CLI import."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from helpers_server import SHARED_DATA, running_server, slicewise_command

pytestmark = pytest.mark.slow

HIPPOCAMPUS = SHARED_DATA / "hippocampus" / "imagesTr"
LABELS = [{"value": 1, "name": "anterior", "color": "#e6194b"}]


def needs_hippocampus():
    if not HIPPOCAMPUS.is_dir():
        pytest.skip(f"shared hippocampus data not found at {HIPPOCAMPUS} (../shared/data is absent)")


def small_nifti(path: Path) -> tuple[Path, np.ndarray]:
    array = np.arange(10 * 12 * 8, dtype=np.int16).reshape(10, 12, 8)
    nib.save(nib.Nifti1Image(array, np.diag([0.5, 0.7, 2.0, 1.0])), str(path))
    return path, array


def test_serve_upload_and_fetch_a_slice_over_http(tmp_path):
    path, array = small_nifti(tmp_path / "small.nii.gz")
    with running_server(tmp_path / "ws", env={"SLICEWISE_MAX_UPLOAD_MB": "0.05"}) as server, server.client() as http:
        health = http.get("/api/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert http.get("/api/projects").json() == []

        project = http.post("/api/projects", json={"name": "Served", "labels": LABELS})
        assert project.status_code == 201
        project_id = project.json()["id"]
        with open(path, "rb") as f:
            uploaded = http.post(f"/api/projects/{project_id}/volumes", files={"file": ("small.nii.gz", f)})
        assert uploaded.status_code == 201, uploaded.text
        volume = uploaded.json()
        assert volume["shape"] == [10, 12, 8] and volume["spacing"] == pytest.approx([0.5, 0.7, 2.0])

        response = http.get(f"/api/volumes/{volume['id']}/slices/1/5.png", params={"window": 960, "level": 480})
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        grey = np.asarray(Image.open(io.BytesIO(response.content)))
        expected = np.clip(np.round((array[:, 5, :].astype(float) - 0) / 960 * 255), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(grey, expected)

        # the size limit comes from SLICEWISE_MAX_UPLOAD_MB and is refused over real HTTP too
        too_big = http.post(f"/api/projects/{project_id}/volumes", files={"file": ("big.nii", b"\0" * 200_000)})
        assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
        assert [v["id"] for v in http.get(f"/api/projects/{project_id}/volumes").json()] == [volume["id"]]
        assert http.get("/docs").status_code == 200

    # the workspace outlives the process: a restart serves the same data
    with running_server(tmp_path / "ws") as server, server.client() as http:
        assert [v["name"] for v in http.get(f"/api/projects/{project_id}/volumes").json()] == ["small"]
        assert http.get(f"/api/volumes/{volume['id']}/slices/2/0.png").status_code == 200


def test_demo_project_appears_when_the_shared_data_is_there(tmp_path):
    needs_hippocampus()
    with running_server(tmp_path / "ws", demo=True) as server, server.client() as http:
        projects = http.get("/api/projects").json()
        assert [p["name"] for p in projects] == ["Hippocampus demo"]
        assert projects[0]["labels"] == [
            {"value": 1, "name": "anterior", "color": "#e6194b"},
            {"value": 2, "name": "posterior", "color": "#3cb44b"},
        ]
        volumes = http.get(f"/api/projects/{projects[0]['id']}/volumes").json()
        assert len(volumes) == 5 and all(v["name"].startswith("hippocampus_") for v in volumes)
        assert http.get(f"/api/volumes/{volumes[0]['id']}/slices/0/10.png").status_code == 200
    # a second start does not add another demo project
    with running_server(tmp_path / "ws", demo=True) as server, server.client() as http:
        assert len(http.get("/api/projects").json()) == 1


def test_no_demo_flag_starts_empty_and_says_how_to_import(tmp_path):
    needs_hippocampus()
    with running_server(tmp_path / "ws", demo=False) as server, server.client() as http:
        assert http.get("/api/projects").json() == []
        assert "curl -F file=@" in server.log()


def test_without_shared_data_the_app_starts_empty(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    with running_server(tmp_path / "ws", demo=True, env={"SLICEWISE_DATA_DIR": str(empty)}) as server:
        assert httpx.get(server.url("/api/projects")).json() == []
        assert "no projects yet" in server.log() and "/api/projects/1/volumes" in server.log()


def test_bad_settings_are_refused_with_a_message(tmp_path):
    result = subprocess.run(
        [*slicewise_command(), "serve", "--workspace", str(tmp_path / "ws")],
        env={"PATH": "/usr/bin:/bin", "SLICEWISE_MAX_UPLOAD_MB": "lots"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "SLICEWISE_MAX_UPLOAD_MB" in result.stderr


def test_cli_import_then_serve(tmp_path):
    path, _ = small_nifti(tmp_path / "cli.nii.gz")
    workspace = tmp_path / "ws"
    base = [*slicewise_command(), "import", "--workspace", str(workspace), "--project", "Imported"]
    refused = subprocess.run([*base, str(path)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--label" in refused.stderr
    done = subprocess.run(
        [*base, "--label", "1:lesion:#ff0000", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "volume 1" in done.stdout
    with running_server(workspace) as server, server.client() as http:
        projects = http.get("/api/projects").json()
        assert [p["name"] for p in projects] == ["Imported"]
        assert [v["name"] for v in http.get(f"/api/projects/{projects[0]['id']}/volumes").json()] == ["cli"]
