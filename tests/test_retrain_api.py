"""The retrain service over HTTP (in-process app, fake trainer): annotations, jobs, models, predictions,
review and suggestions, with the status code of every refusal and proof that refusals change nothing."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from helpers_fake_trainer import fake_trainer_app, model_file, upload_synthetic  # noqa: F401 (model_file: a fixture)
from helpers_retrain import LABELS, SHAPE

RAW = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def api(tmp_path, model_file):
    with fake_trainer_app(tmp_path, model_file) as (client, app, project):
        uploads = [upload_synthetic(client, project, tmp_path / f"v{n}.nii.gz", seed=n) for n in range(2)]
        yield client, app, project, [volume for volume, _ in uploads], [label for _, label in uploads]


def png(mask: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(mask.astype(np.uint8)), mode="L")
    if mode == "P":
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in (i, i, i)])
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def state_of(client, volume_id) -> list:
    """Everything stored about a volume's annotations: rows and mask bytes."""
    rows = client.get(f"/api/volumes/{volume_id}/annotations").json()
    masks = [
        client.get(f"/api/volumes/{volume_id}/annotations/{r['axis']}/{r['index']}?format=raw").content for r in rows
    ]
    return [rows, masks]


def wait_job(client, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def train(client, project_id, body=None):
    r = client.post(f"/api/projects/{project_id}/train", json=body)
    assert r.status_code in (200, 202), r.text
    return r.json()


# ------------------------------------------------------------------------------------------ annotations


def test_annotation_put_get_list_delete_with_versions(api):
    client, _, _, volumes, labels = api
    vid, label = volumes[0]["id"], labels[0]
    r = client.put(f"/api/volumes/{vid}/annotations/0/5", content=png(label[5]), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["version"] == 1 and r.headers["ETag"] == '"1"'
    got = client.get(f"/api/volumes/{vid}/annotations/0/5")
    assert got.headers["content-type"] == "image/png" and got.headers["ETag"] == '"1"'
    assert np.array_equal(np.array(Image.open(io.BytesIO(got.content))), label[5])
    # raw bytes of the slice (axis 2: shape (12, 16)), and a palette PNG on axis 1
    r = client.put(f"/api/volumes/{vid}/annotations/2/4", content=label[:, :, 4].tobytes(), headers=RAW)
    assert r.status_code == 200, r.text
    r = client.put(
        f"/api/volumes/{vid}/annotations/1/6", content=png(label[:, 6, :], "P"), headers={"Content-Type": "image/png"}
    )
    assert r.status_code == 200, r.text
    raw = client.get(f"/api/volumes/{vid}/annotations/2/4?format=raw").content
    assert np.array_equal(np.frombuffer(raw, np.uint8).reshape(SHAPE[0], SHAPE[1]), label[:, :, 4])
    # a new version needs the current one in If-Match
    r = client.put(
        f"/api/volumes/{vid}/annotations/0/5", content=label[5].tobytes(), headers={**RAW, "If-Match": '"1"'}
    )
    assert r.status_code == 200 and r.json()["version"] == 2
    listed = client.get(f"/api/volumes/{vid}/annotations").json()
    assert [(a["axis"], a["index"], a["version"], a["author"]) for a in listed] == [
        (0, 5, 2, "local"),
        (1, 6, 1, "local"),
        (2, 4, 1, "local"),
    ]
    r = client.delete(f"/api/volumes/{vid}/annotations/1/6", headers={"If-Match": '"1"'})
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert client.get(f"/api/volumes/{vid}/annotations/1/6").status_code == 404
    assert len(client.get(f"/api/volumes/{vid}/annotations").json()) == 2


def test_annotation_refusals_change_nothing(api):
    client, _, _, volumes, labels = api
    vid, label = volumes[0]["id"], labels[0]
    url = f"/api/volumes/{vid}/annotations/0/5"
    assert client.put(url, content=label[5].tobytes(), headers=RAW).status_code == 200
    assert client.put(url, content=label[5].tobytes(), headers={**RAW, "If-Match": '"1"'}).status_code == 200
    before = state_of(client, vid)
    other = np.zeros_like(label[5])
    cases = {
        "stale If-Match": (url, other.tobytes(), {**RAW, "If-Match": '"1"'}, 409),
        "If-Match on a slice never painted": (
            f"/api/volumes/{vid}/annotations/0/6",
            other.tobytes(),
            {**RAW, "If-Match": '"3"'},
            409,
        ),
        "label value outside the map": (url, np.full_like(label[5], 3).tobytes(), RAW, 422),
        "label value outside the map (PNG)": (url, png(np.full_like(label[5], 7)), {"Content-Type": "image/png"}, 422),
        "wrong size (raw)": (url, other[:-1].tobytes(), RAW, 422),
        "wrong size (PNG)": (url, png(other.T), {"Content-Type": "image/png"}, 422),
        "RGB PNG": (url, _rgb_png(other), {"Content-Type": "image/png"}, 422),
        "not a PNG": (url, b"hello", {"Content-Type": "image/png"}, 422),
        "empty body": (url, b"", RAW, 422),
        "axis 3": (f"/api/volumes/{vid}/annotations/3/0", other.tobytes(), RAW, 422),
        "index past the end": (f"/api/volumes/{vid}/annotations/0/{SHAPE[0]}", other.tobytes(), RAW, 422),
        "garbage If-Match": (url, other.tobytes(), {**RAW, "If-Match": "yesterday"}, 422),
        "unknown volume": ("/api/volumes/999/annotations/0/5", other.tobytes(), RAW, 404),
    }
    for what, (target, body, headers, status) in cases.items():
        r = client.put(target, content=body, headers=headers)
        assert r.status_code == status, (what, r.status_code, r.text)
        assert r.json()["detail"], what
    assert client.delete(url, headers={"If-Match": '"1"'}).status_code == 409
    assert client.get("/api/volumes/999/annotations").status_code == 404
    assert client.get(f"/api/volumes/{vid}/annotations/0/7").status_code == 404
    assert state_of(client, vid) == before
    stale = client.put(url, content=other.tobytes(), headers={**RAW, "If-Match": '"1"'})
    assert "version 2" in stale.json()["detail"]


def _rgb_png(mask):
    buffer = io.BytesIO()
    Image.fromarray(np.stack([mask] * 3, axis=-1).astype(np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ jobs and models


def test_downloads_hold_the_paint_saved_now_and_the_viewer_the_models_own_mask(api):
    client, app, project, volumes, labels = api
    vid, label = volumes[0]["id"], labels[0]
    client.put(f"/api/volumes/{vid}/annotations/0/5", content=label[5].tobytes(), headers=RAW)
    assert wait_job(client, train(client, project["id"], {"preset": "quick"})["id"])["state"] == "succeeded"
    folder = Path(client.app.state.workspace.root)

    def nifti() -> np.ndarray:
        r = client.get(f"/api/volumes/{vid}/prediction.nii.gz")
        assert r.status_code == 200, r.text
        (folder / "dl.nii.gz").write_bytes(r.content)
        return np.asarray(nib.load(folder / "dl.nii.gz").dataobj)

    def model_slice(axis, index) -> np.ndarray:
        return np.array(
            Image.open(io.BytesIO(client.get(f"/api/volumes/{vid}/prediction/slices/{axis}/{index}.png").content))
        )

    model_mask = np.stack([model_slice(0, i) for i in range(SHAPE[0])])
    assert not np.array_equal(model_mask[5], label[5])  # the untrained model does not repeat the paint
    first = nifti()
    np.testing.assert_array_equal(first[5], label[5])
    np.testing.assert_array_equal(np.delete(first, 5, axis=0), np.delete(model_mask, 5, axis=0))
    # a slice painted after the model was trained is in the next download, with no retrain, in every format
    crossing = np.full((SHAPE[0], SHAPE[2]), 1, np.uint8)
    crossing[:, :3] = 0
    saved = client.put(f"/api/volumes/{vid}/annotations/1/6", content=crossing.tobytes(), headers=RAW)
    assert saved.status_code == 200
    second = nifti()
    np.testing.assert_array_equal(second[:, 6, :], crossing)  # the newer save wins where the two slices cross
    np.testing.assert_array_equal(np.delete(second[5], 6, axis=0), np.delete(label[5], 6, axis=0))
    np.testing.assert_array_equal(model_slice(0, 5), model_mask[5])  # the viewer still shows the model's mask
    with zipfile.ZipFile(io.BytesIO(client.get(f"/api/projects/{project['id']}/predictions.zip").content)) as z:
        (folder / "z.nii.gz").write_bytes(z.read(next(n for n in z.namelist() if n.startswith(f"{vid:04d}_"))))
    np.testing.assert_array_equal(np.asarray(nib.load(folder / "z.nii.gz").dataobj), second)
    # the paint taken back: the download follows
    assert client.delete(f"/api/volumes/{vid}/annotations/1/6", headers={"If-Match": '"1"'}).status_code == 200
    np.testing.assert_array_equal(nifti(), first)


def test_retrain_follow_events_predict_and_download(api):
    client, _, project, volumes, labels = api
    pid = project["id"]
    for v in volumes:
        assert client.get(f"/api/volumes/{v['id']}/prediction").json()["status"] == "none"
        assert client.get(f"/api/volumes/{v['id']}/prediction.nii.gz").status_code == 404
    assert client.get(f"/api/projects/{pid}/predictions.zip").status_code == 404
    r = client.post(f"/api/projects/{pid}/train")
    assert r.status_code == 409 and "paint" in r.json()["detail"]  # nothing painted yet
    client.put(f"/api/volumes/{volumes[0]['id']}/annotations/0/5", content=labels[0][5].tobytes(), headers=RAW)
    r = client.post(f"/api/projects/{pid}/train", json={"preset": "quick"})
    assert r.status_code == 202 and r.headers["Location"] == f"/api/jobs/{r.json()['id']}"
    job = r.json()
    assert job["state"] in ("queued", "running") and job["preset"] == "quick"
    events = []
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    assert events[-1][0] == "end" and events[-1][1]["state"] == "succeeded"
    assert any(name == "progress" and 0 < data["progress"] < 1 for name, data in events)
    done = client.get(f"/api/jobs/{job['id']}").json()
    assert done["state"] == "succeeded" and done["progress"] == 1.0 and done["model_id"]
    # a finished job's stream is one final event
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        assert [line for line in stream.iter_lines() if line.startswith("event:")] == ["event: end"]

    models = client.get(f"/api/projects/{pid}/models").json()
    assert len(models) == 1 and models[0]["active"] and models[0]["job_id"] == job["id"]
    assert models[0]["annotated_slices"] == 1 and "path" not in models[0]
    for v in volumes:
        status = client.get(f"/api/volumes/{v['id']}/prediction").json()
        assert status == {**status, "status": "ready", "model_id": models[0]["id"]}
        r = client.get(f"/api/volumes/{v['id']}/prediction.nii.gz")
        assert r.status_code == 200
        path = Path(client.app.state.workspace.root) / "dl.nii.gz"
        path.write_bytes(r.content)
        mask = nib.load(path)
        assert mask.shape == SHAPE and np.allclose(mask.affine, np.asarray(v.get("affine", mask.affine)))
        png_slice = client.get(f"/api/volumes/{v['id']}/prediction/slices/2/3.png")
        assert png_slice.status_code == 200 and png_slice.headers["X-Model-Id"] == str(models[0]["id"])
        # the viewer's slice is the model's own; the download holds the painted slice 0/5 of volume 0 over it
        expected = np.array(Image.open(io.BytesIO(png_slice.content)))
        if v["id"] == volumes[0]["id"]:
            expected[5] = labels[0][5][:, 3]
        assert np.array_equal(expected, np.asarray(mask.dataobj)[:, :, 3])
    assert client.get(f"/api/volumes/{volumes[0]['id']}/prediction/slices/0/99.png").status_code == 422
    dcm = client.get(f"/api/volumes/{volumes[0]['id']}/prediction.dcm")
    assert dcm.status_code == 409 and "NIfTI" in dcm.json()["detail"]
    r = client.get(f"/api/projects/{pid}/predictions.zip")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == 2
    suggestions = client.get(f"/api/volumes/{volumes[0]['id']}/suggestions?limit=3").json()
    assert suggestions["method"] == "uncertainty+distance" and suggestions["axis"] == 0
    assert len(suggestions["slices"]) == 3 and 5 not in [s["index"] for s in suggestions["slices"]]


def test_rollback_serves_the_older_models_masks(api):
    client, app, project, volumes, labels = api
    pid, vid = project["id"], volumes[0]["id"]
    client.put(f"/api/volumes/{vid}/annotations/0/5", content=labels[0][5].tobytes(), headers=RAW)
    first = wait_job(client, train(client, pid)["id"])
    second = wait_job(client, train(client, pid)["id"])
    assert first["state"] == second["state"] == "succeeded"
    models = client.get(f"/api/projects/{pid}/models").json()
    assert [m["active"] for m in models] == [False, True]
    r = client.post(f"/api/projects/{pid}/models/{models[0]['id']}/activate")
    assert r.status_code == 200 and r.json()["active"] is True
    assert [m["active"] for m in client.get(f"/api/projects/{pid}/models").json()] == [True, False]
    assert client.get(f"/api/volumes/{vid}/prediction").json()["model_id"] == models[0]["id"]
    slice_png = client.get(f"/api/volumes/{vid}/prediction/slices/0/5.png")
    assert slice_png.status_code == 200 and slice_png.headers["X-Model-Id"] == str(models[0]["id"])
    # refusals: unknown model, model of another project, unknown project -> 404, nothing moves
    other = client.post("/api/projects", json={"name": "other", "labels": LABELS}).json()
    assert client.post(f"/api/projects/{pid}/models/999/activate").status_code == 404
    assert client.post(f"/api/projects/{other['id']}/models/{models[1]['id']}/activate").status_code == 404
    assert client.post(f"/api/projects/999/models/{models[1]['id']}/activate").status_code == 404
    assert client.get("/api/projects/999/models").status_code == 404
    assert client.get("/api/models/999").status_code == 404
    assert [m["active"] for m in client.get(f"/api/projects/{pid}/models").json()] == [True, False]


def test_job_refusals_and_cancel(api):
    client, app, project, volumes, labels = api
    pid = project["id"]
    client.put(f"/api/volumes/{volumes[0]['id']}/annotations/0/5", content=labels[0][5].tobytes(), headers=RAW)
    for body in ({"preset": "huge"}, {"stages": {"finetune": False}}, {"stages": {"warmup": True}}, {"epochs": 3}):
        r = client.post(f"/api/projects/{pid}/train", json=body)
        assert r.status_code == 422 and r.json()["detail"], body
    assert client.post("/api/projects/999/train").status_code == 404
    assert client.get(f"/api/projects/{pid}/jobs").json() == []
    for url in ("/api/jobs/999", "/api/jobs/999/events"):
        assert client.get(url).status_code == 404
    assert client.post("/api/jobs/999/cancel").status_code == 404

    # with the worker paused the job stays queued: a second request joins it, cancel ends it
    worker = app.state.worker
    worker.stop()
    first = client.post(f"/api/projects/{pid}/train", json={"preset": "quick"})
    second = client.post(f"/api/projects/{pid}/train", json={"preset": "quick"})
    assert first.status_code == 202 and second.status_code == 200
    assert second.json()["id"] == first.json()["id"] and second.json()["requests"] == 2
    cancelled = client.post(f"/api/jobs/{first.json()['id']}/cancel")
    worker.start()
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert client.post(f"/api/jobs/{first.json()['id']}/cancel").status_code == 409
    # a running job: cancel ends it and no model appears
    worker.runner.env.update(FAKE_TRAIN_STEPS="400", FAKE_TRAIN_STEP_S="0.05")
    job = train(client, pid)
    deadline = time.monotonic() + 30
    while client.get(f"/api/jobs/{job['id']}").json()["progress"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    r = client.post(f"/api/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert client.get(f"/api/projects/{pid}/models").json() == []
    assert [j["state"] for j in client.get(f"/api/projects/{pid}/jobs").json()] == ["cancelled", "cancelled"]


# ------------------------------------------------------------------------------------------ review, suggestions


def test_review_accept_and_reject(api):
    client, app, project, volumes, labels = api
    pid, vid = project["id"], volumes[1]["id"]
    r = client.post(f"/api/volumes/{vid}/review/0/3", json={"decision": "accept"})
    assert r.status_code == 404  # no prediction yet
    client.put(f"/api/volumes/{volumes[0]['id']}/annotations/0/5", content=labels[0][5].tobytes(), headers=RAW)
    assert wait_job(client, train(client, pid)["id"])["state"] == "succeeded"
    predicted = client.get(f"/api/volumes/{vid}/prediction/slices/0/3.png?format=raw").content
    r = client.post(f"/api/volumes/{vid}/review/0/3", json={"decision": "accept", "author": "dr. a"})
    assert r.status_code == 200, r.text
    assert r.json()["annotation"]["reviewed"] is True and r.json()["annotation"]["version"] == 1
    saved = client.get(f"/api/volumes/{vid}/annotations/0/3?format=raw")
    assert saved.content == predicted and saved.headers["X-Annotation-Reviewed"] == "true"
    # accepting over an edited slice needs the current version
    assert (
        client.post(
            f"/api/volumes/{vid}/review/0/3", json={"decision": "accept"}, headers={"If-Match": '"0"'}
        ).status_code
        == 409
    )
    r = client.post(f"/api/volumes/{vid}/review/0/4", json={"decision": "reject", "comment": "misses the tail"})
    assert r.status_code == 200 and r.json()["annotation"] is None
    assert [(a["axis"], a["index"]) for a in client.get(f"/api/volumes/{vid}/annotations").json()] == [(0, 3)]
    audit = app.state.workspace.list_audit()
    assert any(a["what"] == "review_reject" and a["details"]["index"] == 4 for a in audit)
    for body in ({"decision": "maybe"}, {}):
        assert client.post(f"/api/volumes/{vid}/review/0/4", json=body).status_code == 422
    assert client.post("/api/volumes/999/review/0/4", json={"decision": "reject"}).status_code == 404
    # the next retrain uses the accepted slice too
    job = wait_job(client, train(client, pid)["id"])
    seen = client.get(f"/api/projects/{pid}/models").json()[-1]["annotations_seen"]
    assert (
        job["state"] == "succeeded"
        and {"volume_id": vid, "axis": 0, "index": 3, "version": 1, "reviewed": True} in seen
    )


def test_suggestions_without_a_model_use_distance(api):
    client, _, _, volumes, labels = api
    vid = volumes[0]["id"]
    first = client.get(f"/api/volumes/{vid}/suggestions?axis=0&limit=3").json()
    assert first["method"] == "distance" and first["slices"][0]["index"] in (5, 6)  # the middle first
    client.put(f"/api/volumes/{vid}/annotations/0/2", content=labels[0][2].tobytes(), headers=RAW)
    after = client.get(f"/api/volumes/{vid}/suggestions?limit=20").json()
    assert after["axis"] == 0 and after["painted"] == [2]
    assert after["slices"][0]["index"] == SHAPE[0] - 1 and 2 not in [s["index"] for s in after["slices"]]
    assert client.get("/api/volumes/999/suggestions").status_code == 404
    assert client.get(f"/api/volumes/{vid}/suggestions?axis=4").status_code == 422


def test_dicom_upload_gets_a_dicom_seg(api, tmp_path, shared_data):
    import pydicom

    client, app, project, _, _ = api
    series = shared_data / "dicom" / "study1_hippocampus_crop"
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(series.iterdir()):
            z.write(f, f.name)
    r = client.post(f"/api/projects/{project['id']}/volumes", files={"file": ("series.zip", archive.read_bytes())})
    assert r.status_code == 201, r.text
    volume = r.json()
    shape = volume["shape"]
    mask = np.zeros((shape[0], shape[1]), np.uint8)
    mask[shape[0] // 3 : shape[0] // 2, shape[1] // 3 : shape[1] // 2] = 1
    assert (
        client.put(
            f"/api/volumes/{volume['id']}/annotations/2/{shape[2] // 2}", content=mask.tobytes(), headers=RAW
        ).status_code
        == 200
    )
    assert wait_job(client, train(client, project["id"])["id"])["state"] == "succeeded"
    r = client.get(f"/api/volumes/{volume['id']}/prediction.dcm")
    assert r.status_code == 200, r.text
    seg = pydicom.dcmread(io.BytesIO(r.content))
    source = pydicom.dcmread(next(series.iterdir()))
    assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    nifti = client.get(f"/api/volumes/{volume['id']}/prediction.nii.gz")
    assert nifti.status_code == 200
    # the DICOM-SEG holds the painted slice exactly, read back onto the series' grid
    from data.mask_files import read_mask_file

    ws = client.app.state.workspace
    (tmp_path / "seg.dcm").write_bytes(r.content)
    back = read_mask_file(tmp_path / "seg.dcm", "seg.dcm", ws.load_volume(volume["id"]), project["labels"], None)
    np.testing.assert_array_equal(back[:, :, shape[2] // 2], mask)
