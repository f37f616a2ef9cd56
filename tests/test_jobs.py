"""The job state machine of the retrain worker, run against a fake `model.train` (tests/helpers_retrain.py).

Covers: success (model registered, masks cached, then made active), progress into the row and the
event hub, coalescing, cancel (queued and running, process group ended, previous model stays active),
out-of-memory retry, a crash failing with its reason, and restart recovery (resume once, then fail).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from app import retrain_inputs
from app.jobs import EventHub, LocalRunner, looks_out_of_memory, process_alive
from app.worker import Worker
from data.errors import Conflict, InvalidInput
from data.store import Workspace
from helpers_retrain import LABELS, calls_of, fake_runner, make_untrained_model, synthetic_nifti
from model.progress import progress_fields, read_new_lines
from model.retrain import check_train_request, halve_for_memory


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return make_untrained_model(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture
def project(tmp_path):
    """A workspace with one project, two volumes, one of them with a painted slice."""
    ws = Workspace(tmp_path / "ws")
    project = ws.create_project("p", LABELS)
    volumes = []
    for n in range(2):
        path, label = synthetic_nifti(tmp_path / f"v{n}.nii.gz", seed=n)
        volumes.append(ws.import_volume(project["id"], path, path.name, 1 << 30))
    _, label = synthetic_nifti(tmp_path / "l.nii.gz")
    ws.save_annotation(volumes[0]["id"], 0, 5, label[5])
    return ws, project, volumes


def make_worker(ws, tmp_path, model_file, **runner_kwargs) -> Worker:
    runner = fake_runner(tmp_path, model_file, **runner_kwargs)
    return Worker(ws, runner=runner, device="cpu", default_preset="quick", poll_s=0.02)


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def wait_state(ws, job_id, states, timeout=60.0):
    states = (states,) if isinstance(states, str) else states
    return wait_for(lambda: (j := ws.get_job(job_id))["state"] in states and j, timeout, f"job in {states}")


def run_to_the_end(worker, ws, proj) -> dict:
    """Submit one quick retrain of the project, run the worker until the job ends -> the job row."""
    job, _ = worker.submit(proj["id"], "quick")
    worker.start()
    try:
        return wait_state(ws, job["id"], ("succeeded", "failed"))
    finally:
        worker.stop()


def test_success_registers_model_predicts_then_activates(project, tmp_path, model_file):
    ws, proj, volumes = project
    worker = make_worker(ws, tmp_path, model_file, steps=5)
    hub_events = []
    job, coalesced = worker.submit(proj["id"], "quick")
    queue = worker.hub.subscribe(job["id"])
    assert not coalesced and job["state"] == "queued"
    worker.start()
    try:
        done = wait_state(ws, job["id"], ("succeeded", "failed"))
    finally:
        worker.stop()
    while not queue.empty():
        hub_events.append(queue.get_nowait())
    assert done["state"] == "succeeded", done
    assert done["progress"] == 1.0 and done["stage"] == "done"
    model = ws.active_model(proj["id"])
    assert model["job_id"] == job["id"] and done["params"]["model_id"] == model["id"]
    assert [(a["volume_id"], a["axis"], a["index"]) for a in model["annotations_seen"]] == [(volumes[0]["id"], 0, 5)]
    for volume in volumes:  # every volume of the project, painted or not, got a mask in its own geometry
        prediction = ws.get_prediction(volume["id"], model["id"])
        assert prediction["status"] == "ready"
        assert np.load(Path(prediction["path"]) / "labels.npy").shape == tuple(volume["shape"])
    names = [name for name, _ in hub_events]
    assert names[-1] == "end" and hub_events[-1][1]["state"] == "succeeded"
    progress = [data["progress"] for name, data in hub_events if name == "progress"]
    assert progress == sorted(progress) and len(progress) >= 3
    # the training config saw the painted volume with its sparse labels and the other one as unlabeled
    import json

    config = json.loads((Path(done["out_dir"]) / "config.json").read_text())
    assert len(config["images"]) == 1 and len(config["unlabeled"]) == 1
    labels = np.asarray(__import__("nibabel").load(config["labels"][0]).dataobj)
    assert labels.shape == tuple(volumes[0]["shape"]) and set(np.unique(labels[5])) <= {0, 1, 2}
    assert (np.delete(labels, 5, axis=0) == 255).all()


def test_train_requests_coalesce_while_queued(project, tmp_path, model_file):
    ws, proj, _ = project
    worker = make_worker(ws, tmp_path, model_file)
    first, c1 = worker.submit(proj["id"], "quick")
    second, c2 = worker.submit(proj["id"], "quick", {"global": False})
    assert (c1, c2) == (False, True) and second["id"] == first["id"]
    assert second["params"]["requests"] == 2 and second["params"]["stages"] == {"global": False}
    assert len(ws.list_jobs(project_id=proj["id"])) == 1


def test_train_request_validation(project, tmp_path, model_file):
    ws, proj, volumes = project
    worker = make_worker(ws, tmp_path, model_file)
    with pytest.raises(InvalidInput):
        check_train_request("huge", None, "cpu")
    with pytest.raises(InvalidInput):
        check_train_request(None, {"finetune": False}, "cpu")
    with pytest.raises(InvalidInput):
        check_train_request(None, {"warmup": True}, "cpu")
    with pytest.raises(InvalidInput):
        check_train_request(None, {"local": {"epochs": 0}}, "cpu")
    assert check_train_request(None, None, "cpu") == ("cpu", {})
    ws.delete_annotation(volumes[0]["id"], 0, 5)
    with pytest.raises(Conflict, match="paint"):
        worker.submit(proj["id"])
    assert ws.list_jobs() == []


def test_cancel_queued_and_running_keeps_previous_model(project, tmp_path, model_file):
    ws, proj, volumes = project
    worker = make_worker(ws, tmp_path, model_file, mode="spawn", steps=400, step_s=0.05)
    queued, _ = worker.submit(proj["id"], "quick")
    assert worker.cancel(queued["id"])["state"] == "cancelled"
    with pytest.raises(Conflict):
        worker.cancel(queued["id"])
    previous = ws.add_model(proj["id"], None, str(model_file.parent), {}, {}, [])
    ws.activate_model(proj["id"], previous["id"])
    job, _ = worker.submit(proj["id"], "quick")
    worker.start()
    try:
        wait_for(lambda: ws.get_job(job["id"])["progress"] > 0, what="training progress")
        child_pid = int((Path(job["out_dir"]) / "model" / "child.pid").read_text())
        trainer_pid = ws.get_job(job["id"])["pid"]
        cancelled = worker.cancel(job["id"])
    finally:
        worker.stop()
    assert cancelled["state"] == "cancelled" and "previously active model" in cancelled["message"]
    assert not process_alive(trainer_pid)
    wait_for(lambda: not process_alive(child_pid), 10, "the trainer's child to end")  # whole group ended
    assert ws.active_model(proj["id"])["id"] == previous["id"]
    assert [m["id"] for m in ws.list_models(proj["id"])] == [previous["id"]]


def test_out_of_memory_retries_once_with_half_batch(project, tmp_path, model_file):
    ws, proj, _ = project
    worker = make_worker(ws, tmp_path, model_file, mode="oom")
    job, _ = worker.submit(proj["id"], "quick")
    queue = worker.hub.subscribe(job["id"])
    worker.start()
    try:
        done = wait_state(ws, job["id"], ("succeeded", "failed"))
    finally:
        worker.stop()
    assert done["state"] == "succeeded", done
    calls = calls_of(Path(done["out_dir"]))
    assert len(calls) == 2
    assert calls[1]["finetune_batch"] == max(1, calls[0]["finetune_batch"] // 2)
    assert calls[1]["local_mode"] == "block" and done["params"]["oom_retry"] is True
    events = []
    while not queue.empty():
        events.append(queue.get_nowait())
    retry = [data for name, data in events if name == "retry"]
    assert retry and "out of memory" in retry[0]["message"] and "half the batch" in retry[0]["message"]


def test_out_of_memory_twice_fails_with_reason(project, tmp_path, model_file):
    ws, proj, _ = project
    worker = make_worker(ws, tmp_path, model_file, mode="oom-always")
    done = run_to_the_end(worker, ws, proj)
    assert done["state"] == "failed" and "out of memory again" in done["error"]
    assert len(calls_of(Path(done["out_dir"]))) == 2
    assert ws.active_model(proj["id"]) is None


def test_crash_fails_with_the_trainers_reason_and_next_retrain_works(project, tmp_path, model_file):
    ws, proj, _ = project
    worker = make_worker(ws, tmp_path, model_file, mode="crash")
    job, _ = worker.submit(proj["id"], "quick")
    worker.start()
    try:
        failed = wait_state(ws, job["id"], ("succeeded", "failed"))
        assert failed["state"] == "failed"
        assert "exit code 2" in failed["error"] and "label value 7" in failed["error"]
        worker.runner.env["FAKE_TRAIN_MODE"] = "ok"
        again, _ = worker.submit(proj["id"], "quick")
        assert wait_state(ws, again["id"], ("succeeded", "failed"))["state"] == "succeeded"
    finally:
        worker.stop()


def test_restart_resumes_a_running_job_once_then_fails(project, tmp_path, model_file):
    ws, proj, _ = project
    worker = make_worker(ws, tmp_path, model_file, steps=3)
    job, _ = worker.submit(proj["id"], "quick")
    # what a SIGKILLed server leaves: the row says running, its trainer is still alive
    job_dir = Path(job["out_dir"])
    job_dir.mkdir(parents=True, exist_ok=True)
    import json

    config, seen = retrain_inputs.plan_job(ws, job, job_dir, job_dir / "model", "cpu", "quick")
    (job_dir / "config.json").write_text(json.dumps(config))
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", str(job_dir / "config.json")], start_new_session=True
    )
    ws.update_job(job["id"], state="running", pid=leftover.pid, params={**job["params"], "annotations_seen": seen})
    (job_dir / "model").mkdir(exist_ok=True)
    (job_dir / "model" / "checkpoint.pt").write_text("0")

    worker.start()
    try:
        leftover.wait(timeout=10)  # the leftover trainer was ended before the job was resumed
        done = wait_state(ws, job["id"], ("succeeded", "failed"))
    finally:
        worker.stop()
    assert done["state"] == "succeeded", done
    assert done["params"]["resumes"] == 1
    assert calls_of(job_dir)[0]["resumed"] is True  # the same command, picking up checkpoint.pt

    # a job found running again after it was already resumed once is failed with the reason
    second, _ = worker.submit(proj["id"], "quick")
    ws.update_job(second["id"], state="running", params={**second["params"], "resumes": 1})
    Worker(ws, runner=LocalRunner(), device="cpu").recover()
    failed = ws.get_job(second["id"])
    assert failed["state"] == "failed" and "server stopped" in failed["error"]
    assert ws.list_jobs(state="running") == []


def test_graceful_stop_requeues_the_running_job(project, tmp_path, model_file):
    ws, proj, _ = project
    worker = make_worker(ws, tmp_path, model_file, steps=400, step_s=0.05)
    job, _ = worker.submit(proj["id"], "quick")
    worker.start()
    wait_for(lambda: ws.get_job(job["id"])["progress"] > 0, what="training progress")
    pid = ws.get_job(job["id"])["pid"]
    worker.stop()
    stopped = ws.get_job(job["id"])
    assert stopped["state"] == "queued" and stopped["params"]["resume"] is True
    assert not process_alive(pid)


def test_local_runner_cancel_ends_the_process_group(tmp_path):
    script = tmp_path / "sleepy.py"
    script.write_text(
        "import subprocess, sys, time, pathlib\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "pathlib.Path(sys.argv[1] + '.child').write_text(str(c.pid))\n"
        "time.sleep(600)\n"
    )
    runner = LocalRunner(command=[sys.executable, str(script)])
    config = tmp_path / "c.json"
    handle = runner.start(config, tmp_path / "log.txt")
    child = Path(str(config) + ".child")
    wait_for(child.exists, 20, "the child to start")
    assert runner.poll(handle) is None
    runner.cancel(handle, grace_s=2)
    assert runner.poll(handle) is not None
    wait_for(lambda: not process_alive(int(child.read_text())), 10, "the child to end")
    assert runner.kill_leftover(handle.pid, config) is False  # gone: nothing to kill


def test_kill_leftover_refuses_an_unrelated_process(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        assert LocalRunner().kill_leftover(other.pid, tmp_path / "config.json") is False
        assert other.poll() is None
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()


def test_progress_parsing_and_helpers(tmp_path):
    path = tmp_path / "progress.jsonl"
    assert read_new_lines(path, 0) == (0, [])
    path.write_text(
        '{"event": "step", "stage": "local", "epoch": 2, "progress": 0.5, "eta_s": 12.5, "loss": 0.3}\n{"eve'
    )
    offset, events = read_new_lines(path, 0)
    assert len(events) == 1 and offset == path.read_text().index("\n") + 1  # half a line waits
    assert progress_fields(events[0]) == {"stage": "local", "epoch": 2, "progress": 0.5, "eta_s": 12.5, "loss": 0.3}
    assert looks_out_of_memory(-9, "") and looks_out_of_memory(1, "torch.OutOfMemoryError: CUDA out of memory")
    assert looks_out_of_memory(1, "MemoryError") and not looks_out_of_memory(2, "ValueError: bad label")
    halved = halve_for_memory({"global_batch": 32, "local_batch": 1, "finetune_batch": 8, "local_mode": "exact"})
    assert halved == {"global_batch": 16, "local_batch": 1, "finetune_batch": 4, "local_mode": "block"}
    hub = EventHub()
    q = hub.subscribe(7)
    hub.publish(7, "progress", {"x": 1})
    hub.publish(8, "progress", {"x": 2})
    assert q.get_nowait() == ("progress", {"x": 1}) and q.empty()
    hub.unsubscribe(7, q)


def test_a_run_the_engine_starts_again_elsewhere_shows_its_new_engine_id(project, tmp_path, model_file):
    ws, proj, _ = project
    worker = make_worker(ws, tmp_path, model_file, steps=5)
    real_poll, polls = worker.runner.poll, []

    def poll(handle):  # what the Ray runner does when a lost node's run goes on in a new actor
        polls.append(handle.engine_id)
        if len(polls) == 3:
            handle.engine_id = "the-second-actor"
        return real_poll(handle)

    worker.runner.poll = poll
    done = run_to_the_end(worker, ws, proj)
    assert len(polls) > 3 and polls[0] is None  # a local process has no engine id of its own
    assert done["state"] == "succeeded" and done["params"]["engine_id"] == "the-second-actor"
