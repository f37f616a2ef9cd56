"""Faults that must lose nothing.

Real `slicewise serve` processes, killed with SIGKILL:
- while 12 annotators save slices concurrently and a volume upload streams in: after a restart every
  acknowledged save is there with its bytes, nothing half-written is visible or left, no orphan volume;
- while the server predicts every volume with the active model: after a restart the masks are recomputed
  and complete;
- while the real `python -m model.train` (quick preset) trains: after a restart the job is resumed and
  succeeds, never left running, and its leftover trainer is ended.
In process (TestClient, the fake trainer of tests/helpers_retrain.py):
- the training subprocess SIGKILLed (what the kernel's OOM killer does), once and twice: retried once with
  half the batch, then failed with the reason; the previous model stays active; the next retrain works;
- the disk full (ENOSPC injected) while saving an annotation, uploading a volume, and predicting: 507 saying
  so, the previous version intact, nothing left behind;
- two annotators saving the same slice on the same version at the same moment: one 200, one 409.

Also covered elsewhere: SIGKILL at each point of an atomic save/import (tests/test_store_crash.py), the
server killed mid-training with the real trainer and quick preset over 3 volumes (tests/test_retrain_e2e.py),
a crashing / out-of-memory trainer (tests/test_jobs.py).
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data.store import Workspace
from helpers_fake_trainer import fake_trainer_app, model_file, upload_synthetic  # noqa: F401 (model_file: a fixture)
from helpers_retrain import LABELS, SHAPE, synthetic_nifti
from helpers_server import running_server

RAW = {"Content-Type": "application/octet-stream"}
TERMINAL = ("succeeded", "failed", "cancelled")


def wait_for(predicate, timeout: float = 60, what: str = "condition", interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def sigkill(server) -> None:
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)


def assert_workspace_consistent(root: Path) -> None:
    """The database is intact, every row's file is complete, and nothing uncommitted is left on disk."""
    con = sqlite3.connect(root / "slicewise.db")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("PRAGMA foreign_key_check").fetchall() == []
        volume_ids = {str(r[0]) for r in con.execute("SELECT id FROM volumes")}
        paths = [r[0] for r in con.execute("SELECT path FROM annotation_history WHERE path IS NOT NULL")]
    finally:
        con.close()
    assert {p.name for p in (root / "volumes").iterdir()} == volume_ids, "orphan or missing volume folders"
    for vid in volume_ids:
        np.load(root / "volumes" / vid / "image.npy", mmap_mode="r")  # complete
    for rel in paths:
        with Image.open(root / rel) as image:
            image.load()  # complete PNG
    on_disk = {p.relative_to(root).as_posix() for p in (root / "annotations").glob("*/*")}
    assert on_disk == set(paths), f"unreferenced annotation files: {sorted(on_disk - set(paths))[:5]}"
    leftovers = [p for p in root.rglob(".tmp-*")]
    assert leftovers == [], leftovers


def big_nifti(path: Path, shape=(160, 160, 96)) -> Path:
    rng = np.random.default_rng(3)
    nib.save(nib.Nifti1Image(rng.integers(0, 3000, size=shape).astype(np.int16), np.eye(4)), path)  # ~5 MB
    return path


# ------------------------------------------------------------------ SIGKILL during saves and an upload


def test_sigkill_during_concurrent_saves_and_an_upload(tmp_path):
    workspace = tmp_path / "ws"
    upload = big_nifti(tmp_path / "big.nii")
    n_annotators, acked, sent, errors = 12, {}, {}, []
    lock = threading.Lock()
    with running_server(workspace) as server, server.client() as client:
        project = client.post("/api/projects", json={"name": "p", "labels": LABELS}).json()
        path, label = synthetic_nifti(tmp_path / "v.nii.gz")
        volume = client.post(
            f"/api/projects/{project['id']}/volumes", files={"file": (path.name, path.read_bytes())}
        ).json()
        vid = volume["id"]

        # two annotators, same slice, same version, same moment: one wins, the other gets 409
        first = client.put(
            f"/api/volumes/{vid}/annotations/2/0", content=label[:, :, 0].tobytes(), headers={**RAW, "If-Match": '"0"'}
        )
        assert first.status_code == 200
        barrier, results = threading.Barrier(2), []

        def rival(fill):
            body = np.full_like(label[:, :, 0], fill).tobytes()
            with server.client() as c:
                barrier.wait()
                results.append(
                    c.put(
                        f"/api/volumes/{vid}/annotations/2/0", content=body, headers={**RAW, "If-Match": '"1"'}
                    ).status_code
                )

        rivals = [threading.Thread(target=rival, args=(fill,)) for fill in (1, 2)]
        [t.start() for t in rivals]
        [t.join() for t in rivals]
        assert sorted(results) == [200, 409], results

        stop = threading.Event()

        def annotator(n: int) -> None:
            """Saves its own slice (axis 0, index n) again and again, each on top of the version it last saw."""
            version, k = 0, 0
            with server.client(timeout=10) as c:
                while not stop.is_set():
                    k += 1
                    mask = np.zeros(SHAPE[1:], np.uint8)
                    mask[: (k % SHAPE[1]) + 1] = 1 + (k % 2)
                    body = mask.tobytes()
                    with lock:
                        sent[(n, version + 1)] = hashlib.sha256(body).hexdigest()
                    try:
                        r = c.put(
                            f"/api/volumes/{vid}/annotations/0/{n}",
                            content=body,
                            headers={**RAW, "If-Match": f'"{version}"'},
                        )
                    except httpx.TransportError:
                        return  # the server died with this save in flight: not acknowledged
                    if r.status_code != 200:
                        errors.append((n, r.status_code, r.text))
                        return
                    version = r.json()["version"]
                    with lock:
                        acked[n] = (version, hashlib.sha256(body).hexdigest())

        def uploader() -> None:
            """A 5 MB volume sent slowly (128 KB every 0.1 s), so the kill lands in the middle of it."""
            boundary = "fault-boundary"
            body = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.nii"\r\n\r\n'.encode()
                + upload.read_bytes()
                + f"\r\n--{boundary}--\r\n".encode()
            )

            def slowly():
                for start in range(0, len(body), 128 * 1024):
                    time.sleep(0.1)
                    yield body[start : start + 128 * 1024]

            with server.client(timeout=60) as c:
                try:
                    c.post(
                        f"/api/projects/{project['id']}/volumes",
                        content=slowly(),
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                    )
                except httpx.TransportError:
                    pass

        threads = [threading.Thread(target=annotator, args=(n,)) for n in range(n_annotators)]
        threads.append(threading.Thread(target=uploader))
        [t.start() for t in threads]
        wait_for(lambda: sum(v[0] for v in acked.values()) >= 60, 60, "saves to be acknowledged")
        part = wait_for(lambda: list((workspace / "tmp" / "uploads").glob("upload-*.part")), 30, "the upload")
        assert part[0].stat().st_size < upload.stat().st_size  # still arriving
        sigkill(server)
        stop.set()
        [t.join(30) for t in threads]
        assert errors == [], errors[:3]
        killed_with = dict(acked)

    with running_server(workspace) as server, server.client() as client:
        for n, (version, digest) in killed_with.items():
            r = client.get(f"/api/volumes/{vid}/annotations/0/{n}?format=raw")
            assert r.status_code == 200, r.text
            current = int(r.headers["X-Annotation-Version"])
            assert current >= version, (n, current, version)  # every acknowledged save is there
            if current == version:
                assert hashlib.sha256(r.content).hexdigest() == digest
            else:  # committed, but killed before the answer left: it is exactly what was sent
                assert current == version + 1 and hashlib.sha256(r.content).hexdigest() == sent[(n, current)]
        volumes = client.get(f"/api/projects/{project['id']}/volumes").json()
        assert [v["id"] for v in volumes] == [vid]  # the upload killed half-way left no volume
        assert list((workspace / "tmp" / "uploads").iterdir()) == []  # nor its temp file
        for v in volumes:  # the upload is either complete and readable, or absent
            assert client.get(f"/api/volumes/{v['id']}/slices/2/{v['shape'][2] // 2}.png").status_code == 200
        assert_workspace_consistent(workspace)
        # and the service goes on: the next save on top of the current version works
        n, (version, _) = next(iter(killed_with.items()))
        current = client.get(f"/api/volumes/{vid}/annotations/0/{n}").headers["ETag"]
        r = client.put(
            f"/api/volumes/{vid}/annotations/0/{n}",
            content=np.zeros(SHAPE[1:], np.uint8).tobytes(),
            headers={**RAW, "If-Match": current},
        )
        assert r.status_code == 200, r.text
    print(
        f"\nSIGKILL with {n_annotators} annotators saving: {sum(v for v, _ in killed_with.values())} "
        f"acknowledged saves, all there after the restart"
    )


# ------------------------------------------------------------------ SIGKILL during prediction


def test_sigkill_during_prediction_then_masks_are_recomputed(tmp_path, model_file):
    workspace = tmp_path / "ws"
    ws = Workspace(workspace)
    project = ws.create_project("p", LABELS)
    volumes = []
    for n in range(3):
        path = big_nifti(tmp_path / f"v{n}.nii.gz", shape=(96, 96, 64))
        volumes.append(ws.import_volume(project["id"], path, path.name, 10**9))
    model_dir = workspace / "models" / "seed"
    model_dir.mkdir(parents=True)
    (model_dir / "model.pt").write_bytes(model_file.read_bytes())
    model = ws.add_model(project["id"], None, str(model_dir / "model.pt"), {}, {}, [])
    ws.activate_model(project["id"], model["id"])
    ws.close()

    # the server predicts the active model's missing masks at start-up; kill it in the middle
    with running_server(workspace, extra_args=["--device", "cpu"]) as server, server.client() as client:

        def some_ready():
            states = [client.get(f"/api/volumes/{v['id']}/prediction").json()["status"] for v in volumes]
            return "ready" in states and states != ["ready"] * len(volumes)

        # no escape hatch: the kill must land with some masks done and some not, or this test proves nothing
        wait_for(some_ready, 120, "a first mask, not all", interval=0.02)
        sigkill(server)

    with running_server(workspace, extra_args=["--device", "cpu"]) as server, server.client() as client:

        def all_ready():
            return all(client.get(f"/api/volumes/{v['id']}/prediction").json()["status"] == "ready" for v in volumes)

        wait_for(all_ready, 180, "every mask after the restart", interval=0.2)
        for v in volumes:
            r = client.get(f"/api/volumes/{v['id']}/prediction.nii.gz")
            assert r.status_code == 200
            mask = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(r.content))
            assert mask.shape == tuple(v["shape"])
            s = client.get(f"/api/volumes/{v['id']}/prediction/slices/0/5.png")
            assert s.status_code == 200 and s.headers["X-Model-Id"] == str(model["id"])
        assert_workspace_consistent(workspace)


# ------------------------------------------------------------------ SIGKILL during training (real trainer)


def pid_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def test_sigkill_during_real_training_then_resumed_and_succeeded(tmp_path):
    workspace = tmp_path / "ws"
    train = {"preset": "quick", "stages": {"global": False, "local": False, "finetune": {"epochs": 2, "steps": 30}}}
    with running_server(workspace, extra_args=["--device", "cpu"]) as server, server.client() as client:
        project = client.post("/api/projects", json={"name": "p", "labels": LABELS}).json()
        path, label = synthetic_nifti(tmp_path / "v.nii.gz")
        vid = client.post(
            f"/api/projects/{project['id']}/volumes", files={"file": (path.name, path.read_bytes())}
        ).json()["id"]
        for index in (4, 7):
            r = client.put(f"/api/volumes/{vid}/annotations/0/{index}", content=label[index].tobytes(), headers=RAW)
            assert r.status_code == 200
        job = client.post(f"/api/projects/{project['id']}/train", json=train).json()
        running = wait_for(
            lambda: (
                (j := client.get(f"/api/jobs/{job['id']}").json())["state"] in TERMINAL
                or (j["state"] == "running" and j["progress"] > 0)
                and j
            ),
            240,
            "training to start",
        )
        assert running["state"] == "running", running
        trainer_pid = Workspace(workspace).get_job(job["id"])["pid"]
        sigkill(server)

    with running_server(workspace, extra_args=["--device", "cpu"]) as server, server.client() as client:
        done = wait_for(
            lambda: (j := client.get(f"/api/jobs/{job['id']}").json())["state"] in TERMINAL and j,
            300,
            "the job to end after the restart",
            interval=0.2,
        )
        # the real trainer checkpoints atomically, so a server killed mid-training resumes the job to success
        assert done["state"] == "succeeded", done
        assert done["resumes"] == 1 and done["model_id"]
        assert client.get(f"/api/volumes/{vid}/prediction").json()["status"] == "ready"
        assert trainer_pid is None or not pid_alive(trainer_pid)
        assert all(j["state"] in TERMINAL for j in client.get(f"/api/projects/{project['id']}/jobs").json())
        assert [a["version"] for a in client.get(f"/api/volumes/{vid}/annotations").json()] == [1, 1]


# ------------------------------------------------------------------ in process: trainer killed, disk full


@pytest.fixture
def api(tmp_path, model_file):
    with fake_trainer_app(tmp_path, model_file) as (client, app, project):
        volume, label = upload_synthetic(client, project, tmp_path / "v.nii.gz")
        r = client.put(f"/api/volumes/{volume['id']}/annotations/0/5", content=label[5].tobytes(), headers=RAW)
        assert r.status_code == 200
        yield client, app, project, volume, label


def wait_job(client, job_id, timeout=60):
    return wait_for(
        lambda: (j := client.get(f"/api/jobs/{job_id}").json())["state"] in TERMINAL and j, timeout, f"job {job_id}"
    )


def kill_trainer_when_running(client, app, job_id, before_kill=lambda: None) -> int:
    ws = app.state.workspace

    def running_pid():
        job = ws.get_job(job_id)
        return job["state"] == "running" and job["pid"] and job["progress"] > 0 and job["pid"]

    pid = wait_for(running_pid, 60, "the trainer to run")
    before_kill()
    os.killpg(pid, signal.SIGKILL)
    return pid


@pytest.mark.parametrize("kills", [1, 2])
def test_trainer_sigkilled_keeps_previous_model_and_next_retrain_works(api, kills):
    client, app, project, volume, _ = api
    pid = project["id"]
    first = client.post(f"/api/projects/{pid}/train", json={}).json()
    assert wait_job(client, first["id"])["state"] == "succeeded"
    previous = [m["id"] for m in client.get(f"/api/projects/{pid}/models").json() if m["active"]]

    env = app.state.worker.runner.env
    env.update(FAKE_TRAIN_STEPS="400", FAKE_TRAIN_STEP_S="0.05")  # 20 s: long enough to be killed
    job = client.post(f"/api/projects/{pid}/train", json={}).json()
    killed = set()
    for n in range(kills):
        short = (lambda: env.update(FAKE_TRAIN_STEPS="4", FAKE_TRAIN_STEP_S="0.02")) if n == kills - 1 else None
        killed.add(kill_trainer_when_running(client, app, job["id"], short or (lambda: None)))  # later runs: short
        if n < kills - 1:
            wait_for(
                lambda: (app.state.workspace.get_job(job["id"])["pid"] or 0) not in killed | {0},
                30,
                "the retry to start",
            )
    done = wait_job(client, job["id"])
    models = client.get(f"/api/projects/{pid}/models").json()
    if kills == 1:  # SIGKILL looks like the kernel's OOM killer: one retry with half the batch, which succeeds
        assert done["state"] == "succeeded" and done["oom_retry"] is True, done
        assert len(models) == 2 and models[1]["active"]
        return
    assert done["state"] == "failed", done
    assert "signal 9" in done["error"] and "out of memory" in done["error"], done["error"]
    assert [m["id"] for m in models if m["active"]] == previous and len(models) == 1
    assert client.get(f"/api/volumes/{volume['id']}/prediction").json()["model_id"] == previous[0]
    again = client.post(f"/api/projects/{pid}/train", json={}).json()
    assert wait_job(client, again["id"])["state"] == "succeeded"
    assert len(client.get(f"/api/projects/{pid}/models").json()) == 2


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_saving_an_annotation(api, monkeypatch):
    client, app, project, volume, label = api
    url = f"/api/volumes/{volume['id']}/annotations/0/5"
    before = client.get(url + "?format=raw")
    monkeypatch.setattr("data.atomic._fsync_path", enospc)  # the write's data cannot reach the disk
    r = client.put(url, content=np.zeros_like(label[5]).tobytes(), headers={**RAW, "If-Match": '"1"'})
    assert r.status_code == 507, r.text
    assert "disk is full" in r.json()["detail"]
    monkeypatch.undo()
    after = client.get(url + "?format=raw")
    assert after.headers["ETag"] == '"1"' and after.content == before.content  # the previous version, intact
    assert_workspace_consistent(app.state.workspace.root)
    r = client.put(url, content=np.zeros_like(label[5]).tobytes(), headers={**RAW, "If-Match": '"1"'})
    assert r.status_code == 200 and r.json()["version"] == 2  # space again: the save goes through


def test_disk_full_while_uploading(api, monkeypatch, tmp_path):
    client, app, project, volume, _ = api
    root = app.state.workspace.root
    path, _ = synthetic_nifti(tmp_path / "second.nii.gz", seed=4)
    monkeypatch.setattr("data.store_files.np.save", enospc)  # the image cache cannot be written
    r = client.post(f"/api/projects/{project['id']}/volumes", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 507, r.text
    assert "disk is full" in r.json()["detail"]
    monkeypatch.undo()
    assert [v["id"] for v in client.get(f"/api/projects/{project['id']}/volumes").json()] == [volume["id"]]
    assert list((root / "tmp").glob("import-*")) == [] and list((root / "tmp" / "uploads").iterdir()) == []
    assert_workspace_consistent(root)


def test_disk_full_before_training_fails_the_job_saying_so(api, monkeypatch):
    client, app, project, volume, _ = api
    monkeypatch.setattr("data.atomic._fsync_path", enospc)  # the job cannot even export its labels
    done = wait_job(client, client.post(f"/api/projects/{project['id']}/train", json={}).json()["id"])
    monkeypatch.undo()
    assert done["state"] == "failed" and "disk is full" in done["error"], done
    assert client.get(f"/api/projects/{project['id']}/models").json() == []
    again = client.post(f"/api/projects/{project['id']}/train", json={}).json()
    assert wait_job(client, again["id"])["state"] == "succeeded"


def test_disk_full_while_predicting_keeps_the_previous_masks(api, monkeypatch):
    client, app, project, volume, _ = api
    first = client.post(f"/api/projects/{project['id']}/train", json={}).json()
    assert wait_job(client, first["id"])["state"] == "succeeded"
    previous = client.get(f"/api/volumes/{volume['id']}/prediction/slices/0/5.png")
    assert previous.status_code == 200
    monkeypatch.setattr("app.predictions.save_npy", enospc)  # training's files fit, the masks do not
    second = client.post(f"/api/projects/{project['id']}/train", json={}).json()
    done = wait_job(client, second["id"])
    monkeypatch.undo()
    # the new model could not write its masks: the job fails saying why, the previous masks are still served
    assert done["state"] == "failed" and "No space left" in done["error"], done
    assert "stays active" in done["error"]
    served = client.get(f"/api/volumes/{volume['id']}/prediction/slices/0/5.png")
    assert served.status_code == 200 and served.content == previous.content
    assert served.headers["X-Model-Id"] == previous.headers["X-Model-Id"]
