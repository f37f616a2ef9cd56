"""DICOMweb against a real Orthanc with its DICOMweb plugin (Debian's orthanc + orthanc-dicomweb), started by
the test on a free loopback port with its storage in a temp folder: store the shared DICOM series in Orthanc,
search, import, retrain (fake trainer), STOW the DICOM-SEG, read it back and validate it with dciodvfy."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from conftest import SHARED_DATA, SHARED_DATA_MISSING
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from data.io import read_volume
from helpers_bad_input import Api, assert_refused
from helpers_fake_trainer import model_file  # noqa: F401 (fixture)
from helpers_retrain import LABELS, fake_runner
from helpers_server import free_port

DICOM = SHARED_DATA / "dicom"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "pacs", "pacs-secret-for-tests"


@contextlib.contextmanager
def orthanc(folder: Path):
    binary = shutil.which("Orthanc")
    if binary is None or not PLUGIN.exists():
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    folder.mkdir(parents=True)
    port = free_port()
    config = {
        "Name": "slicewise-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": port,
        "DicomPort": free_port(),
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    process = subprocess.Popen([binary, str(folder / "orthanc.json")], cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (folder / "orthanc.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/system", auth=(USER, PASSWORD), timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "Orthanc did not start"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def first_header(series: str) -> pydicom.Dataset:
    return pydicom.dcmread(sorted((DICOM / series).iterdir())[0], stop_before_pixels=True)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    if not DICOM.is_dir():
        pytest.skip(SHARED_DATA_MISSING)
    with orthanc(tmp_path_factory.mktemp("orthanc") / "server") as base:
        with httpx.Client(base_url=base, auth=(USER, PASSWORD), timeout=30) as http:
            for path in sorted(DICOM.glob("*/*.dcm")):
                assert http.post("/instances", content=path.read_bytes()).status_code == 200
        yield base


@pytest.fixture
def world(pacs, tmp_path, model_file):  # noqa: F811
    credentials = tmp_path / "dicomweb.json"
    credentials.write_text(json.dumps({"pacs": {"username": USER, "password": PASSWORD}}))
    closed = free_port()
    settings = Settings(
        workspace=tmp_path / "ws",
        demo=False,
        device="cpu",
        dicomweb_credentials=credentials,
        dicomweb=(f"pacs={pacs}/dicom-web", f"down=http://127.0.0.1:{closed}/dicom-web", f"nopass={pacs}/dicom-web"),
    )
    app = create_app(settings)
    with TestClient(app) as client:
        app.state.worker.runner = fake_runner(tmp_path, model_file)
        app.state.worker.default_preset = "quick"
        project = client.post("/api/projects", json={"name": "p", "labels": LABELS}).json()
        yield client, project, tmp_path


def wait_for(predicate, timeout=90, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_search_import_retrain_and_stow_the_segmentation(world, pacs, tmp_path):
    client, project, tmp = world
    t1 = first_header("study3_t1_post_contrast")
    assert client.get("/api/dicomweb").json() == [{"name": "pacs"}, {"name": "down"}, {"name": "nopass"}]

    studies = client.get("/api/dicomweb/pacs/studies", params={"PatientID": "PGBM-003"}).json()
    assert [s["study_uid"] for s in studies] == [t1.StudyInstanceUID]
    assert studies[0]["modalities"] == ["MR"] and studies[0]["series_count"] == 2
    assert len(client.get("/api/dicomweb/pacs/studies", params={"StudyDate": "20200121"}).json()) == 2
    series = client.get(f"/api/dicomweb/pacs/studies/{t1.StudyInstanceUID}/series").json()
    assert {s["series_uid"] for s in series} == {
        t1.SeriesInstanceUID,
        first_header("study3_hippocampus_crop").SeriesInstanceUID,
    }

    r = client.post(
        f"/api/projects/{project['id']}/imports/dicomweb",
        json={"source": "pacs", "study_uid": t1.StudyInstanceUID, "series_uid": t1.SeriesInstanceUID},
    )
    assert r.status_code == 201, r.text
    (volume,) = r.json()
    reference = read_volume(DICOM / "study3_t1_post_contrast")
    assert volume["source"] == "dicom" and volume["name"] == "T1post"
    assert np.allclose(volume["affine"], reference.affine, atol=1e-6)
    ws = client.app.state.workspace
    assert np.array_equal(ws.volume_array(volume["id"]), reference.array)

    # the whole study: one volume per series
    both = client.post(
        f"/api/projects/{project['id']}/imports/dicomweb", json={"source": "pacs", "study_uid": t1.StudyInstanceUID}
    )
    assert both.status_code == 201, both.text
    assert sorted(v["meta"]["series_uid"] for v in both.json()) == sorted(s["series_uid"] for s in series)

    # paint, retrain, STOW the prediction
    mask = np.zeros(reference.shape[:2], np.uint8)
    mask[100:160, 120:170] = 1
    assert (
        client.put(
            f"/api/volumes/{volume['id']}/annotations/2/10",
            content=mask.tobytes(),
            headers={"content-type": "application/octet-stream"},
        ).status_code
        == 200
    )
    job = client.post(f"/api/projects/{project['id']}/train", json={}).json()
    wait_for(lambda: client.get(f"/api/jobs/{job['id']}").json()["state"] == "succeeded", what="the retrain")
    wait_for(
        lambda: client.get(f"/api/volumes/{volume['id']}/prediction").json()["status"] == "ready", what="the prediction"
    )
    model_id = client.get(f"/api/volumes/{volume['id']}/prediction").json()["model_id"]
    labels = client.app.state.worker.predictions.labels(volume["id"])[0]
    if not (labels > 0).any():  # an untrained model may predict background only; a SEG needs a segment
        pytest.skip("the untrained model predicted no foreground")

    stowed = client.post(f"/api/volumes/{volume['id']}/prediction/stow", json={"source": "pacs"})
    assert stowed.status_code == 200, stowed.text
    result = stowed.json()
    assert result["referenced_series_uid"] == t1.SeriesInstanceUID and result["model_id"] == model_id

    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = (USER, PASSWORD)
    orthanc_web = DICOMwebClient(f"{pacs}/dicom-web", session=session)
    segs = orthanc_web.search_for_series(t1.StudyInstanceUID, search_filters={"Modality": "SEG"})
    assert result["series_uid"] in [s["0020000E"]["Value"][0] for s in segs]
    seg = orthanc_web.retrieve_instance(t1.StudyInstanceUID, result["series_uid"], result["sop_instance_uid"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == t1.SeriesInstanceUID
    assert (
        seg.SegmentSequence[0]
        .SegmentationAlgorithmIdentificationSequence[0]
        .AlgorithmVersion.endswith(f"model {model_id}")
    )
    assert f"model {model_id}" in seg.ContentDescription
    seg_path = tmp / "from_orthanc.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    report = subprocess.run([dciodvfy, str(seg_path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if "Error" in line]
    assert errors == [], report.stdout + report.stderr


def test_hostile_dicomweb_requests_are_refused_and_change_nothing(world, tmp_path):
    client, project, tmp = world
    t1 = first_header("study3_t1_post_contrast")
    nifti = SHARED_DATA / "hippocampus"
    upload = client.post(
        f"/api/projects/{project['id']}/volumes",
        files={"file": ("v.nii.gz", next(iter(sorted(nifti.rglob("*.nii.gz")))).read_bytes())},
    )
    assert upload.status_code == 201, upload.text
    api = Api(client, client.app.state.workspace.root, project["id"], upload.json()["id"])
    imports = f"/api/projects/{project['id']}/imports/dicomweb"
    cases = [
        (lambda: client.get("/api/dicomweb/elsewhere/studies"), 404, ["no dicomweb source 'elsewhere'", "pacs"]),
        (
            lambda: client.post(imports, json={"source": "http://127.0.0.1:1/dicom-web", "study_uid": "1.2"}),
            404,
            ["no dicomweb source"],
        ),
        (lambda: client.post(imports, json={"source": "pacs", "study_uid": "1.2", "url": "http://evil"}), 422, ["url"]),
        (lambda: client.post(imports, json={"source": "pacs", "study_uid": "1.2/../../tools"}), 422, ["uid"]),
        (
            lambda: client.post(
                imports, json={"source": "pacs", "study_uid": t1.StudyInstanceUID, "series_uid": "1.2.3.4"}
            ),
            404,
            ["pacs"],
        ),
        (lambda: client.post(imports, json={"source": "pacs", "study_uid": "1.2.3.999"}), 404, ["no image series"]),
        (lambda: client.post(imports, json={"source": "down", "study_uid": "1.2.3"}), 502, ["cannot be reached"]),
        (lambda: client.post(imports, json={"source": "nopass", "study_uid": "1.2.3"}), 502, ["401"]),
        (
            lambda: client.post("/api/projects/999/imports/dicomweb", json={"source": "pacs", "study_uid": "1.2"}),
            404,
            ["999"],
        ),
        (lambda: client.get("/api/dicomweb/pacs/studies", params={"PatientID": "a\\b"}), 422, ["printable"]),
        (lambda: client.get("/api/dicomweb/pacs/studies/not-a-uid/series"), 422, ["uid"]),
        (
            lambda: client.post(f"/api/volumes/{api.volume_id}/prediction/stow", json={"source": "pacs"}),
            422,
            ["not imported from dicom"],
        ),
        (
            lambda: client.post(f"/api/volumes/{api.volume_id}/prediction/stow", json={"source": "nowhere"}),
            404,
            ["nowhere"],
        ),
    ]
    for request, status, words in cases:
        assert_refused(api, request, status, *words)

    # a series over the upload limit is refused while it arrives
    from dataclasses import replace

    settings = client.app.state.settings
    client.app.state.settings = replace(settings, max_upload_mb=1.0)
    try:
        assert_refused(
            api,
            lambda: client.post(
                imports, json={"source": "pacs", "study_uid": t1.StudyInstanceUID, "series_uid": t1.SeriesInstanceUID}
            ),
            413,
            "upload limit of 1 MB",
        )
    finally:
        client.app.state.settings = settings
