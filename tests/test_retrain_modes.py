"""Retrain modes (auto | refresh | full) over HTTP on a real workspace and worker, with the fake trainer of
tests/helpers_retrain.py: which mode a job runs, why, and the config.json the worker hands model.train
(refresh: init_from = the active model's model.pt, fine-tune only; full: the global stage reused from an
earlier job while the project's volumes are unchanged, run again after an upload)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from helpers_fake_trainer import fake_trainer_app, model_file, upload_synthetic  # noqa: F401 (model_file: a fixture)
from helpers_retrain import calls_of, make_untrained_model
from model.config import preset
from model.retrain import painted_changes, refresh_limit, stronger_mode

RAW = {"Content-Type": "application/octet-stream"}
QUICK = preset("quick")
TERMINAL = ("succeeded", "failed", "cancelled")


class Project:
    def __init__(self, client, app, project, tmp_path):
        self.client, self.app, self.project, self.tmp_path = client, app, project, tmp_path
        self.id = project["id"]
        self.volumes, self.labels = [], []
        for _ in range(2):
            self.upload()

    @property
    def worker(self):
        return self.app.state.worker

    def upload(self) -> int:
        n = len(self.volumes)
        volume, label = upload_synthetic(self.client, self.project, self.tmp_path / f"v{n}.nii.gz", seed=n)
        self.volumes.append(volume["id"])
        self.labels.append(label)
        return volume["id"]

    def paint(self, volume: int, index: int) -> None:
        vid = self.volumes[volume]
        current = self.client.get(f"/api/volumes/{vid}/annotations/0/{index}")
        headers = {**RAW, "If-Match": current.headers["ETag"]} if current.status_code == 200 else RAW
        r = self.client.put(
            f"/api/volumes/{vid}/annotations/0/{index}", content=self.labels[volume][index].tobytes(), headers=headers
        )
        assert r.status_code == 200, r.text

    def post(self, body=None):
        return self.client.post(f"/api/projects/{self.id}/train", json=body)

    def retrain(self, body=None) -> tuple[dict, dict]:
        """POST train, wait for the end -> (job JSON, the config.json the worker wrote)."""
        r = self.post(body)
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 60
        while (job := self.client.get(f"/api/jobs/{r.json()['id']}").json())["state"] not in TERMINAL:
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["state"] == "succeeded", job
        return job, json.loads((self.job_dir(job) / "config.json").read_text())

    def job_dir(self, job: dict) -> Path:
        return Path(self.app.state.workspace.get_job(job["id"])["out_dir"])

    def model_path(self, model_id: int) -> Path:
        return Path(self.app.state.workspace.get_model(model_id)["path"])


@pytest.fixture
def project(tmp_path, model_file):
    with fake_trainer_app(tmp_path, model_file) as (client, app, project):
        yield Project(client, app, project, tmp_path)


def test_auto_full_then_refresh_then_full_and_global_reuse(project):
    p = project
    p.paint(0, 5)
    p.paint(1, 4)
    first, config = p.retrain()  # no model yet: full, the global stage runs
    assert (first["mode"], first["mode_requested"], first["global_stage"]) == ("full", "auto", "trained")
    assert "no active model" in first["mode_reason"]
    assert config["global_stage"] and config["local_stage"] and config["finetune_stage"]
    assert config["init_from"] is None and len(config["images"]) == 2
    assert (p.job_dir(first) / "model" / "global.pt").is_file()

    p.paint(0, 6)  # one new slice: auto refreshes the active model
    second, config = p.retrain()
    assert (second["mode"], second["from_model_id"], second["global_stage"]) == ("refresh", first["model_id"], "off")
    assert "1 painted slice new" in second["mode_reason"] and "at most 5" in second["mode_reason"]
    assert config["init_from"] == str(p.model_path(first["model_id"]) / "model.pt")
    assert (config["global_stage"], config["local_stage"], config["finetune_stage"]) == (False, False, True)
    assert config["finetune_epochs"] == max(1, QUICK.finetune_epochs // 2)
    assert config["finetune_steps"] == QUICK.finetune_steps and config["unlabeled"] == []
    assert config["budget_s"] == QUICK.refresh_budget_s  # a refresh gets the preset's refresh budget
    assert config["speed_cache"] == str(p.app.state.workspace.root / "speed.json")  # training and serving share it
    assert "refresh: fine-tuning model" in second["message"] and second["model_id"] != first["model_id"]
    assert [m["active"] for m in p.client.get(f"/api/projects/{p.id}/models").json()] == [False, True]

    p.paint(1, 5)  # a second refresh still counts from the last full retrain: 2 changes <= 5
    third, config = p.retrain()
    assert third["mode"] == "refresh" and third["from_model_id"] == second["model_id"]
    assert f"since model {first['model_id']}" in third["mode_reason"] and "2 painted slices" in third["mode_reason"]
    assert config["init_from"] == str(p.model_path(second["model_id"]) / "model.pt")

    for index in (3, 7, 8):  # 2 + 3 + 3 = 8 changes since the full retrain: more than a refresh takes in
        p.paint(0, index)
        p.paint(1, index)
    fourth, config = p.retrain()
    assert fourth["mode"] == "full" and "more than the 5" in fourth["mode_reason"]
    # ... and the label-free global stage is reused: same volumes, same settings
    assert fourth["global_stage"] == "reused" and fourth["global_from_job"] == first["id"]
    linked = p.job_dir(fourth) / "model" / "global.pt"
    assert config["init_from"] == str(linked) and config["global_stage"] is False
    assert config["local_stage"] and config["finetune_stage"]
    assert os.path.samefile(linked, p.job_dir(first) / "model" / "global.pt")

    p.upload()  # a new volume: the next full retrain runs the global stage again, on it too
    fifth, config = p.retrain({"mode": "full"})
    assert (fifth["mode"], fifth["mode_reason"], fifth["global_stage"]) == ("full", "full retrain requested", "trained")
    assert config["global_stage"] is True and config["init_from"] is None and len(config["unlabeled"]) == 1
    # which volumes that global stage saw is recorded; unchanged since, the next full run reuses it
    recorded = p.app.state.workspace.get_job(fifth["id"])["params"]["global"]
    assert recorded["volume_ids"] == sorted(p.volumes)
    sixth, config = p.retrain({"mode": "full"})
    assert sixth["global_stage"] == "reused" and sixth["global_from_job"] == fifth["id"]
    assert config["init_from"] == str(p.job_dir(sixth) / "model" / "global.pt") and not config["global_stage"]


def test_explicit_modes_fallbacks_and_stage_requests(project, tmp_path):
    p = project
    p.paint(0, 5)
    job, config = p.retrain({"mode": "refresh"})  # nothing to refresh yet: full, and the job says why
    assert job["mode"] == "full" and job["mode_requested"] == "refresh"
    assert job["mode_reason"].startswith("refresh requested, but the project has no active model")
    assert "refresh requested, but" in job["message"] and config["global_stage"] and config["init_from"] is None

    job, config = p.retrain({"mode": "full"})  # nothing changed, but full was asked for
    assert job["mode"] == "full" and job["global_stage"] == "reused" and config["local_stage"]

    job, config = p.retrain({"mode": "full", "stages": {"global": {"epochs": 2}}})  # explicit global: it runs
    assert job["global_stage"] == "trained" and config["global_stage"] and config["global_epochs"] == 2
    assert config["init_from"] is None

    job, config = p.retrain({"stages": {"local": True}})  # auto, but the request wants the local stage
    assert job["mode"] == "full" and "enables the local stage" in job["mode_reason"]
    # an explicit refresh honours an explicit fine-tune schedule instead of the halved one
    job, config = p.retrain({"mode": "refresh", "stages": {"finetune": {"epochs": 3, "steps": 7}}})
    assert job["mode"] == "refresh" and (config["finetune_epochs"], config["finetune_steps"]) == (3, 7)

    # another preset than the active model's: its weights do not fit, refresh falls back to full
    job, config = p.retrain({"mode": "refresh", "preset": "cpu"})
    assert (
        job["mode"] == "full"
        and "quick preset" in job["mode_reason"]
        and config["widths"] == list(preset("cpu").widths)
    )

    # an active model with another class count (e.g. trained before the label map changed): full
    ws = p.app.state.workspace
    odd = make_untrained_model(tmp_path / "odd" / "model.pt", num_classes=5)
    other = ws.add_model(p.id, None, str(odd.parent), preset("quick", num_classes=5).to_dict(), {}, [])
    ws.activate_model(p.id, other["id"])
    job, config = p.retrain()
    assert job["mode"] == "full" and "5 classes" in job["mode_reason"] and config["num_classes"] == 3


def test_bad_mode_is_refused_and_nothing_is_queued(project):
    p = project
    p.paint(0, 5)
    for body, words in (
        ({"mode": "fast"}, "mode must be one of auto, refresh, full"),
        ({"mode": 3}, "mode"),
        ({"mode": "refresh", "stages": {"global": True}}, "fine-tune stage only"),
    ):
        r = p.post(body)
        assert r.status_code == 422, (body, r.text)
        assert words in json.dumps(r.json()["detail"]), r.text
    assert p.client.get(f"/api/projects/{p.id}/jobs").json() == []


def test_coalesced_requests_keep_the_strongest_mode(project):
    p = project
    p.paint(0, 5)
    p.worker.stop()
    try:
        first = p.post({"mode": "refresh"})
        assert first.status_code == 202 and first.json()["mode"] == "refresh"
        joined = p.post({"mode": "full"})
        assert joined.status_code == 200 and joined.json()["id"] == first.json()["id"]
        assert joined.json()["mode"] == "full" and joined.json()["requests"] == 2
        again = p.post({"mode": "refresh"})  # a weaker request joining does not undo it
        assert again.json()["mode"] == "full" and again.json()["requests"] == 3
    finally:
        p.worker.start()
    assert (stronger_mode("refresh", "auto"), stronger_mode("auto", "refresh"), stronger_mode(None, "refresh")) == (
        "auto",
        "auto",
        "auto",
    )


def test_refresh_survives_the_out_of_memory_retry_and_a_restart(project):
    p = project
    p.paint(0, 5)
    first, _ = p.retrain()
    p.paint(0, 6)
    p.worker.runner.env["FAKE_TRAIN_MODE"] = "oom"  # the first run of the next job dies out of memory
    job, config = p.retrain()
    assert job["mode"] == "refresh" and job["oom_retry"] is True
    assert config["init_from"] == str(p.model_path(first["model_id"]) / "model.pt") and not config["global_stage"]
    assert config["finetune_batch"] == QUICK.finetune_batch // 2
    assert [c["finetune_batch"] for c in calls_of(p.job_dir(job))] == [QUICK.finetune_batch, QUICK.finetune_batch // 2]

    # a server stopped while a refresh runs resumes it with the same config.json
    p.worker.runner.env.update(FAKE_TRAIN_MODE="ok", FAKE_TRAIN_STEPS="200", FAKE_TRAIN_STEP_S="0.05")
    p.paint(0, 7)
    queued = p.post().json()
    job_dir = p.job_dir(queued)
    deadline = time.monotonic() + 30
    while not (job_dir / "model" / "checkpoint.pt").exists():  # the fake trainer has taken a step
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = (job_dir / "config.json").read_bytes()
    p.worker.stop()
    assert p.app.state.workspace.get_job(queued["id"])["params"]["resume"] is True
    p.worker.runner.env.update(FAKE_TRAIN_STEPS="4", FAKE_TRAIN_STEP_S="0.02")
    p.worker.start()
    deadline = time.monotonic() + 60
    while (done := p.client.get(f"/api/jobs/{queued['id']}").json())["state"] not in TERMINAL:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert done["state"] == "succeeded" and done["mode"] == "refresh"
    assert (job_dir / "config.json").read_bytes() == before
    assert [c["resumed"] for c in calls_of(job_dir)] == [False, True]


def test_painted_changes_and_the_refresh_limit():
    def a(volume, index, version=1):
        return {"volume_id": volume, "axis": 0, "index": index, "version": version}

    seen = [a(1, 3), a(1, 5), a(2, 4)]
    assert painted_changes(seen, seen) == 0
    assert painted_changes(seen, seen + [a(3, 1)]) == 1  # added (a volume painted for the first time too)
    assert painted_changes(seen, [a(1, 3, 2), a(1, 5)]) == 2  # repainted + erased
    assert [refresh_limit(n) for n in (0, 4, 10, 11, 60)] == [5, 5, 5, 5, 30]
