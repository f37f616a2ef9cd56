"""MONAI Label's own client (monailabel.client.MONAILabelClient, what 3D Slicer's module ships) against a real
uvicorn serving slicewise: info, upload, save label, train, status, infer, next sample, auth; hostile requests.

The worker runs the fake trainer of tests/helpers_retrain.py (a real, untrained model comes back), so inference
is real and a retrain takes a moment.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings

import nibabel as nib
import numpy as np
import pytest
import uvicorn

from app.main import create_app
from app.settings import Settings
from helpers_bad_input import Api, assert_refused
from helpers_fake_trainer import model_file  # noqa: F401 (fixture)
from helpers_retrain import LABELS, fake_runner, synthetic_nifti
from helpers_server import free_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # the client imports cgi
    pytest.importorskip(
        "monailabel.client",
        reason="MONAI Label's client is installed by scripts/test.sh (pip install --no-deps monailabel==0.8.5)",
    )
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException


@contextlib.contextmanager
def serving(app):
    """uvicorn really started on a free loopback port, in a thread; stopped afterwards."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def world(tmp_path, model_file):  # noqa: F811
    app = create_app(Settings(workspace=tmp_path / "ws", demo=False, device="cpu"))
    with serving(app) as base:
        worker = app.state.worker
        worker.runner = fake_runner(tmp_path, model_file)
        worker.default_preset = "quick"
        ws = app.state.workspace
        project = ws.create_project("p", LABELS)
        yield app, base, project, tmp_path


def wait_for(predicate, timeout=90, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_monai_label_client_flow(world):
    app, base, project, tmp = world
    ws = app.state.workspace
    client = MONAILabelClient(f"{base}/monailabel/projects/{project['id']}", tmpdir=str(tmp))
    assert client.auth_enabled() is False

    info = client.info()
    assert info["name"] == "p" and info["labels"] == ["anterior", "posterior"]
    assert info["models"]["slicewise"]["labels"] == {"anterior": 1, "posterior": 2}
    assert list(info["strategies"]) == ["slicewise", "random", "first"] and "slicewise" in info["trainers"]

    images = []
    for seed in (0, 1):
        path, full_label = synthetic_nifti(tmp / f"case{seed}.nii.gz", seed=seed)
        images.append((client.upload_image(str(path), image_id=f"case{seed}")["image"], path, full_label))
    assert [image for image, _, _ in images] == [str(v["id"]) for v in ws.list_volumes(project["id"])]
    assert ws.get_volume(int(images[0][0]))["name"] == "case0"
    assert client.datastore()["objects"][images[0][0]]["labels"] == {}
    assert app.state.workspace.list_volumes(project["id"])[0]["source"] == "nifti"

    import httpx

    image = httpx.get(f"{base}/monailabel/projects/{project['id']}/datastore/image", params={"image": images[0][0]})
    assert image.status_code == 200 and image.content == images[0][1].read_bytes()  # NIfTI as uploaded

    # first / random pick a volume nobody painted
    assert client.next_sample("first", {})["id"] == images[0][0]

    # save a label: slices 3 and 6 along axis 2 hold labels, they become painted slices
    image_id, path, full_label = images[0]
    volume = nib.load(path)
    label = np.zeros(full_label.shape, np.uint8)
    label[:, :, [3, 6]] = full_label[:, :, [3, 6]]
    label_path = tmp / "label.nii.gz"
    nib.save(nib.Nifti1Image(label, volume.affine), label_path)
    saved = client.save_label(image_id, str(label_path))
    assert saved["image"] == image_id and saved["slices"] == [3, 6]
    rows = ws.list_annotations(int(image_id))
    assert [(r["axis"], r["index"], r["version"], r["author"]) for r in rows] == [
        (2, 3, 1, "local"),
        (2, 6, 1, "local"),
    ]
    assert client.save_label(image_id, str(label_path), tag="final")["annotations"][0]["version"] == 2

    stats = client._server_url and client.info()["datastore"]
    assert stats == {"total": 2, "completed": 1, "label_tags": {"final": 1}}
    assert client.next_sample("first", {})["id"] == images[1][0]
    assert client.next_sample("random", {})["id"] == images[1][0]

    downloaded = nib.load(client.download_label(image_id, "final"))
    assert np.allclose(downloaded.affine, volume.affine, atol=1e-5)
    assert np.array_equal(np.asanyarray(downloaded.dataobj), label)

    # train -> status -> infer
    with pytest.raises(MONAILabelClientException):
        client.train_status()  # no task yet: 404
    task = client.train_start("slicewise", {"mode": "full"})
    assert task["status"] in ("SUBMITTED", "RUNNING") and task["mode"] == "full"
    done = wait_for(
        lambda: (s := client.train_status()) and s["status"] in ("DONE", "ERROR", "STOPPED") and s, what="the retrain"
    )
    assert done["status"] == "DONE", done
    assert client.train_status(check_if_running=True) is False
    assert client.info()["models"]["slicewise"]["model_id"] == done["model_id"]

    mask_path, params = client.infer("slicewise", image_id, {})
    assert params["model_id"] == done["model_id"] and params["label_names"] == {"anterior": 1, "posterior": 2}
    mask = nib.load(mask_path)
    assert np.allclose(mask.affine, volume.affine, atol=1e-5) and mask.shape == volume.shape
    # the model's mask with the submitted slices 3 and 6 as they were painted, as every download holds them
    expected = np.array(app.state.worker.predictions.labels(int(image_id))[0])
    expected[:, :, [3, 6]] = label[:, :, [3, 6]]
    assert np.array_equal(np.asanyarray(mask.dataobj), expected)

    # slicewise's own strategy: the volume with the most helpful next slice, and that slice
    sample = client.next_sample("slicewise", {})
    assert sample["id"] in (images[0][0], images[1][0]) and sample["slice"]["axis"] in (0, 1, 2)

    # the same prediction as a 3D Slicer segmentation through /api
    import SimpleITK as sitk

    seg = httpx.get(f"{base}/api/volumes/{image_id}/prediction.seg.nrrd")
    assert seg.status_code == 200
    seg_path = tmp / "p.seg.nrrd"
    seg_path.write_bytes(seg.content)
    image = sitk.ReadImage(str(seg_path))
    assert image.GetMetaData("Segment0_Name") == "anterior" and image.GetMetaData("Segment1_LabelValue") == "2"
    assert image.GetMetaData("Segment1_Color") == "0.000000 1.000000 0.000000"
    assert np.array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), expected)
    reference = sitk.ReadImage(str(path))
    assert np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)

    # stopping when nothing runs is a no-op; a queued retrain is cancelled by DELETE /train/
    assert client.train_stop() == {}


def test_monai_label_auth_token_flow_and_roles(world):
    app, base, project, tmp = world
    ws = app.state.workspace
    ws.add_user("boss", "admin", password="correct horse battery")
    ws.add_user("vera", "viewer", password="viewer password 1")
    ws.add_member(project["id"], "vera")
    url = f"{base}/monailabel/projects/{project['id']}"
    client = MONAILabelClient(url, tmpdir=str(tmp))
    assert client.auth_enabled() is True
    with pytest.raises(MONAILabelClientException):
        client.info()  # 401 without a token
    with pytest.raises(MONAILabelClientException):
        client.auth_token("boss", "wrong")
    client.update_auth(client.auth_token("boss", "correct horse battery"))
    assert client.auth_valid_token() is True
    assert client.info()["name"] == "p"
    path, _ = synthetic_nifti(tmp / "a.nii.gz")
    image_id = client.upload_image(str(path), image_id="a")["image"]
    assert ws.list_audit(5)[0]["who"] == "boss"

    viewer = MONAILabelClient(url, tmpdir=str(tmp))
    viewer.update_auth(viewer.auth_token("vera", "viewer password 1"))
    assert viewer.info()["datastore"]["total"] == 1
    with pytest.raises(MONAILabelClientException) as refused:
        viewer.upload_image(str(path), image_id="b")
    assert "403" in refused.value.msg
    with pytest.raises(MONAILabelClientException):
        viewer.train_start("slicewise", {})
    assert len(ws.list_volumes(project["id"])) == 1

    # a user who is not a member does not see the project at all
    ws.add_user("out", "annotator", password="outsider password")
    outsider = MONAILabelClient(url, tmpdir=str(tmp))
    outsider.update_auth(outsider.auth_token("out", "outsider password"))
    with pytest.raises(MONAILabelClientException) as hidden:
        outsider.info()
    assert "404" in hidden.value.msg
    assert image_id


def test_hostile_monai_label_requests_are_refused_and_change_nothing(world):
    import httpx

    app, base, project, tmp = world
    ws = app.state.workspace
    path, full_label = synthetic_nifti(tmp / "v.nii.gz")
    other = ws.create_project("other", LABELS)
    url = f"{base}/monailabel/projects/{project['id']}"
    with httpx.Client(base_url=url, timeout=30) as http:
        image = http.put("/datastore/?image=v", files={"file": ("v.nii.gz", path.read_bytes())}).json()["image"]
        label = np.zeros(full_label.shape, np.uint8)
        label[:, :, 2] = full_label[:, :, 2]
        good_label = nib.Nifti1Image(label, nib.load(path).affine).to_bytes()
        bad_value = label.copy()
        bad_value[0, 0, 2] = 9
        api = Api(http, ws.root, project["id"], int(image))
        cases = [
            (
                lambda: http.put("/datastore/?image=../../x", files={"file": ("v.nii.gz", path.read_bytes())}),
                422,
                ["plain name"],
            ),
            (lambda: http.put("/datastore/", files={"file": ("v.txt", b"hello")}), 422, ["v.txt"]),
            (lambda: http.put("/datastore/", files={"other": ("v.nii.gz", path.read_bytes())}), 422, ["'file'"]),
            (
                lambda: http.put(f"/datastore/label?image={image}", files={"file": ("l.nii", good_label)}),
                422,
                ["'label'"],
            ),
            (
                lambda: http.put(
                    f"/datastore/label?image={image}&tag=original", files={"label": ("l.nii", good_label)}
                ),
                422,
                ["tag"],
            ),
            (lambda: http.put("/datastore/label?image=999", files={"label": ("l.nii", good_label)}), 404, ["999"]),
            (lambda: http.put("/datastore/label?image=abc", files={"label": ("l.nii", good_label)}), 404, ["abc"]),
            (
                lambda: http.put(
                    f"/datastore/label?image={image}",
                    files={"label": ("l.nii", nib.Nifti1Image(bad_value, nib.load(path).affine).to_bytes())},
                ),
                422,
                ["[9]"],
            ),
            (lambda: http.get(f"/datastore/label?label={image}&tag=final"), 404, ["nothing is painted"]),
            (lambda: http.get("/datastore/?output=everything"), 422, ["output"]),
            (lambda: http.post(f"/infer/slicewise?image={image}"), 404, ["no model"]),
            (lambda: http.post(f"/infer/other?image={image}"), 404, ["no model 'other'"]),
            (lambda: http.post("/activelearning/nonsense", json={}), 404, ["strategy"]),
            (lambda: http.post("/activelearning/first", content=b"[1, 2]"), 422, ["json object"]),
            (lambda: http.post("/activelearning/first", content=b"x" * (2 * 1024 * 1024)), 413, ["params"]),
            (lambda: http.post("/train/slicewise", json={}), 409, ["nothing is painted"]),
            (lambda: http.post("/train/other", json={}), 404, ["no model"]),
            (lambda: http.post("/train/slicewise", json={"preset": "huge"}), 422, ["preset"]),
            (lambda: http.post("/train/slicewise", json={"mode": 3}), 422, ["mode"]),
            (lambda: http.get("/train/"), 404, ["no training task"]),
            (lambda: http.post("/auth/token", data={"username": "x", "password": "y"}), 422, ["authentication is off"]),
            (lambda: http.get(f"{base}/monailabel/projects/999/info/"), 404, ["999"]),
            # an image of another project is not this project's
            (
                lambda: http.get(f"{base}/monailabel/projects/{other['id']}/datastore/image?image={image}"),
                404,
                [f"no image '{image}'"],
            ),
        ]
        for request, status, words in cases:
            assert_refused(api, request, status, *words)


def test_delete_train_stops_a_running_retrain_and_keeps_the_model(world, model_file):  # noqa: F811
    app, base, project, tmp = world
    app.state.worker.runner = fake_runner(tmp, model_file, steps=400, step_s=0.05)  # 20 s unless stopped
    client = MONAILabelClient(f"{base}/monailabel/projects/{project['id']}", tmpdir=str(tmp))
    path, full_label = synthetic_nifti(tmp / "v.nii.gz")
    image_id = client.upload_image(str(path), image_id="v")["image"]
    label = np.zeros(full_label.shape, np.uint8)
    label[:, :, 4] = full_label[:, :, 4]
    nib.save(nib.Nifti1Image(label, nib.load(path).affine), tmp / "l.nii.gz")
    client.save_label(image_id, str(tmp / "l.nii.gz"))
    started = client.train_start(None, {})  # POST /train/: every trainer
    assert started["slicewise"]["status"] in ("SUBMITTED", "RUNNING")
    wait_for(lambda: client.train_status()["status"] == "RUNNING", what="the retrain to start")
    assert client.train_status(check_if_running=True) is True
    stopped = client.train_stop()
    assert stopped["status"] == "STOPPED" and stopped["state"] == "cancelled"
    assert client.train_status()["status"] == "STOPPED"
    assert app.state.workspace.active_model(project["id"]) is None
