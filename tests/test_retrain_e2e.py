"""The product loop end to end on a real `slicewise serve` process with the real `python -m model.train`.

Upload 3 hippocampus volumes, paint 2 slices of each from their labels, retrain (quick preset), follow
the Server-Sent Events to success, download prediction.nii.gz: same geometry as the upload, and a 3D
Dice against the full label above an untrained network's. Then: SIGKILL the server while a job trains
and start it again on the same workspace (the job finishes or fails with a reason, nothing stays
running, no annotation is lost), cancel a running job (the active model stays), and roll back.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data.store import FINISHED_STATES, Workspace
from helpers_server import SHARED_DATA, running_server, wait_job

pytestmark = pytest.mark.slow

HIPPO = SHARED_DATA / "hippocampus"
CASES = ("hippocampus_001", "hippocampus_003", "hippocampus_004")
LABELS = [{"value": 1, "name": "anterior", "color": "#e6194b"}, {"value": 2, "name": "posterior", "color": "#3cb44b"}]
AXIS = 0
# the quick preset, with a fine-tune long enough to learn something from 6 painted slices
TRAIN = {"preset": "quick", "stages": {"finetune": {"epochs": 3, "steps": 20}}}
TERMINAL = FINISHED_STATES


@pytest.fixture(scope="module")
def hippo() -> Path:
    if not (HIPPO / "imagesTr").is_dir():
        pytest.skip(f"hippocampus data not found at {HIPPO} (expected ../shared/data/hippocampus next to the repo)")
    return HIPPO


def painted_indices(label: np.ndarray) -> list[int]:
    """Two slices through the structure, as a clinician would pick them: at 1/3 and 2/3 of its extent."""
    present = np.flatnonzero((label > 0).any(axis=tuple(a for a in range(3) if a != AXIS)))
    lo, hi = int(present.min()), int(present.max())
    return [lo + (hi - lo) // 3, lo + 2 * (hi - lo) // 3]


def setup_project(client: httpx.Client, hippo: Path) -> tuple[int, list[dict], dict[int, np.ndarray]]:
    r = client.post("/api/projects", json={"name": "hippocampus", "labels": LABELS})
    assert r.status_code == 201, r.text
    project_id = r.json()["id"]
    volumes, full_labels = [], {}
    for n, case in enumerate(CASES):
        path = hippo / "imagesTr" / f"{case}.nii.gz"
        r = client.post(f"/api/projects/{project_id}/volumes", files={"file": (path.name, path.read_bytes())})
        assert r.status_code == 201, r.text
        volume = r.json()
        label = np.asarray(nib.load(hippo / "labelsTr" / f"{case}.nii.gz").dataobj).astype(np.uint8)
        for index in painted_indices(label):
            mask = np.take(label, index, AXIS)
            if n == 0:  # one volume painted as PNG, the others as raw bytes: both paths of the API
                buffer = io.BytesIO()
                Image.fromarray(np.ascontiguousarray(mask), mode="L").save(buffer, format="PNG")
                body, ctype = buffer.getvalue(), "image/png"
            else:
                body, ctype = np.ascontiguousarray(mask).tobytes(), "application/octet-stream"
            r = client.put(
                f"/api/volumes/{volume['id']}/annotations/{AXIS}/{index}",
                content=body,
                headers={"Content-Type": ctype, "If-Match": '"0"'},
            )
            assert r.status_code == 200 and r.json()["version"] == 1, r.text
        volumes.append(volume)
        full_labels[volume["id"]] = label
    return project_id, volumes, full_labels


def follow_events(server, job_id: int, timeout: float = 420) -> list[tuple[str, dict]]:
    events, name = [], None
    with httpx.stream(
        "GET", server.url(f"/api/jobs/{job_id}/events"), timeout=httpx.Timeout(10, read=timeout)
    ) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    scores = []
    for c in (1, 2):
        p, t = pred == c, truth == c
        scores.append(2 * (p & t).sum() / max(1, p.sum() + t.sum()))
    return float(np.mean(scores))


def untrained_dice(model_pt: Path, hippo: Path) -> float:
    """The same network with fresh random weights, predicting through the same inference code."""
    import torch

    from model import checkpoint
    from model.inference import load_predictor
    from model.unet import UNet

    saved = checkpoint.load(model_pt)
    config = saved["config"]
    torch.manual_seed(0)
    net = UNet(2 * config["context_slices"] + 1, saved["num_classes"], tuple(config["widths"]), config["bottleneck"])
    fresh = model_pt.parent.parent / "untrained.pt"
    checkpoint.save({**saved, "state_dict": checkpoint.cpu_state(net)}, fresh)
    predictor = load_predictor(fresh, device="cpu")
    scores = []
    for case in CASES:
        image = np.asarray(nib.load(hippo / "imagesTr" / f"{case}.nii.gz").dataobj)
        truth = np.asarray(nib.load(hippo / "labelsTr" / f"{case}.nii.gz").dataobj)
        labels, _ = predictor.predict(image)
        scores.append(dice(labels, truth))
    return float(np.mean(scores))


def annotation_snapshot(client, volumes) -> dict:
    out = {}
    for volume in volumes:
        for row in client.get(f"/api/volumes/{volume['id']}/annotations").json():
            mask = client.get(f"/api/volumes/{volume['id']}/annotations/{row['axis']}/{row['index']}?format=raw")
            out[(volume["id"], row["axis"], row["index"])] = (row["version"], mask.content)
    return out


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def test_paint_retrain_predict_download(tmp_path, hippo):
    started = time.monotonic()
    with running_server(tmp_path / "ws") as server, server.client() as client:
        project_id, volumes, full_labels = setup_project(client, hippo)
        r = client.post(f"/api/projects/{project_id}/train", json=TRAIN)
        assert r.status_code == 202, r.text
        job = r.json()
        events = follow_events(server, job["id"])
        assert events[-1][0] == "end", events[-3:]
        assert events[-1][1]["state"] == "succeeded", (events[-1], server.log()[-3000:])
        stages = {data["stage"] for name, data in events if name == "progress"}
        assert {"finetune", "predict"} <= stages
        progress = [data["progress"] for name, data in events]
        assert progress[-1] == 1.0 and max(progress[:-1]) <= 1.0

        scores = []
        for volume in volumes:
            r = client.get(f"/api/volumes/{volume['id']}/prediction.nii.gz")
            assert r.status_code == 200, r.text
            path = tmp_path / f"pred_{volume['id']}.nii.gz"
            path.write_bytes(r.content)
            mask, upload = nib.load(path), nib.load(hippo / "imagesTr" / f"{volume['name']}.nii.gz")
            assert mask.shape == upload.shape
            assert np.allclose(mask.affine, upload.affine, atol=1e-5)
            assert np.allclose(mask.header.get_qform(), upload.header.get_qform(), atol=1e-5)
            assert int(mask.header["qform_code"]) == int(upload.header["qform_code"])
            assert int(mask.header["sform_code"]) == int(upload.header["sform_code"])
            assert mask.get_data_dtype() == np.uint8
            scores.append(dice(np.asarray(mask.dataobj), full_labels[volume["id"]]))
        trained = float(np.mean(scores))
        model = client.get(f"/api/projects/{project_id}/models").json()[0]
        assert model["active"] and model["annotated_slices"] == 6
    model_pt = tmp_path / "ws" / "jobs" / str(job["id"]) / "model" / "model.pt"
    baseline = untrained_dice(model_pt, hippo)
    print(
        f"\n3D Dice (mean of anterior/posterior over 3 volumes): trained {trained:.3f}, untrained {baseline:.3f}; "
        f"loop took {time.monotonic() - started:.0f} s"
    )
    assert trained > baseline + 0.05, (trained, baseline)


def test_sigkill_restart_cancel_and_rollback(tmp_path, hippo):
    workspace = tmp_path / "ws"
    with running_server(workspace) as server, server.client() as client:
        project_id, volumes, _ = setup_project(client, hippo)
        before = annotation_snapshot(client, volumes)
        job = client.post(f"/api/projects/{project_id}/train", json=TRAIN).json()
        # kill once it is fine-tuning, so a checkpoint of the earlier stages exists
        wait_job(
            client,
            job["id"],
            lambda j: j["stage"] == "finetune" and j["progress"] > 0.3 or j["state"] in TERMINAL,
            server=server,
        )
        trainer_pid = Workspace(workspace).get_job(job["id"])["pid"]
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)

    with running_server(workspace) as server, server.client() as client:
        done = wait_job(client, job["id"], lambda j: j["state"] in TERMINAL, server=server)
        assert done["state"] == "succeeded", done  # resumed from the trainer's checkpoint, not failed
        assert done["resumes"] == 1 and done["model_id"]
        assert all(j["state"] in TERMINAL for j in client.get(f"/api/projects/{project_id}/jobs").json())
        assert trainer_pid is None or not pid_alive(trainer_pid)
        assert annotation_snapshot(client, volumes) == before  # no annotation lost

        if done["state"] != "succeeded":  # rollback below needs a first model
            first = client.post(f"/api/projects/{project_id}/train", json=TRAIN).json()
            assert (
                wait_job(client, first["id"], lambda j: j["state"] in TERMINAL, server=server)["state"] == "succeeded"
            )
        models = client.get(f"/api/projects/{project_id}/models").json()
        active_before = [m["id"] for m in models if m["active"]]

        # cancel a running job: it ends cancelled, no new model, the active one stays
        job = client.post(f"/api/projects/{project_id}/train", json=TRAIN).json()
        wait_job(
            client,
            job["id"],
            lambda j: j["state"] == "running" and j["progress"] > 0 or j["state"] in TERMINAL,
            server=server,
        )
        r = client.post(f"/api/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        after = client.get(f"/api/projects/{project_id}/models").json()
        assert [m["id"] for m in after] == [m["id"] for m in models]
        assert [m["id"] for m in after if m["active"]] == active_before

        # a second model, then roll back to the first: its masks are served again
        short = {"preset": "quick", "stages": {"global": False, "local": False}}
        second = client.post(f"/api/projects/{project_id}/train", json=short).json()
        assert wait_job(client, second["id"], lambda j: j["state"] in TERMINAL, server=server)["state"] == "succeeded"
        models = client.get(f"/api/projects/{project_id}/models").json()
        assert len(models) == 2 and models[1]["active"]
        r = client.post(f"/api/projects/{project_id}/models/{models[0]['id']}/activate")
        assert r.status_code == 200 and r.json()["active"]
        status = client.get(f"/api/volumes/{volumes[0]['id']}/prediction").json()
        assert status["model_id"] == models[0]["id"] and status["status"] == "ready"
        assert client.get(f"/api/volumes/{volumes[0]['id']}/prediction.nii.gz").status_code == 200
        assert annotation_snapshot(client, volumes) == before
