"""Training on a real Ray cluster (`slicewise serve --runner ray`), over HTTP, against a loopback cluster
started here: a head without CPUs and two worker nodes with one CPU each, both blind to the folder every
test workspace lives in (an empty tmpfs over it in their own mount namespace). So each job here
trains on a Ray worker that cannot read the server's workspace.

Covered: the whole loop (upload, paint, retrain, progress events, predictions, download) with the
training in a Ray actor on a worker node and the masks inferred by Ray tasks; two projects training at the same time on the two workers;
cancel ending the remote run; the server SIGKILLed while a job trains on Ray, started again, and the
job followed to success from where it was (not started again) with every annotation kept; the job's
actor killed while no server runs, and the restarted server resuming the job from its checkpoint in a
new actor; a job given 2 GPUs reporting the 2 DDP ranks it trains as, also once re-attached; the
trainer in the actor SIGKILLed (the kernel's OOM killer) and the job retried once with half the
batches, as a local run is. (The state API is always given the cluster's address: another Ray
instance on the machine must not make it guess.)
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest

from app.ray_runner import run_name
from app.ray_training import run_root
from data.annotations import impose_paint
from data.volume import IGNORE
from helpers_ray import ray_cluster
from helpers_retrain import LABELS, synthetic_nifti
from helpers_server import running_server, wait_job

pytestmark = pytest.mark.slow

RAW = {"Content-Type": "application/octet-stream", "If-Match": '"0"'}
TERMINAL = ("succeeded", "failed", "cancelled")
QUICK = {"preset": "quick", "stages": {"global": False, "local": False, "finetune": {"epochs": 2, "steps": 6}}}
LONG = {"preset": "quick", "stages": {"global": False, "local": False, "finetune": {"epochs": 4, "steps": 40}}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    pytest.importorskip("ray")
    with ray_cluster(workers=2, cpus=1, blind_to=tmp_path_factory.getbasetemp()) as cluster:
        yield cluster


def ray_server(workspace: Path, cluster):
    return running_server(
        workspace, extra_args=["--device", "cpu", "--runner", "ray", "--ray-address", cluster.address], env=cluster.env
    )


def painted_project(client: httpx.Client, folder: Path, name: str = "p") -> tuple[int, int, np.ndarray]:
    project = client.post("/api/projects", json={"name": name, "labels": LABELS}).json()
    path, label = synthetic_nifti(folder / f"{name}.nii.gz")
    r = client.post(f"/api/projects/{project['id']}/volumes", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201, r.text
    volume_id = r.json()["id"]
    for index in (4, 7):
        r = client.put(f"/api/volumes/{volume_id}/annotations/0/{index}", content=label[index].tobytes(), headers=RAW)
        assert r.status_code == 200, r.text
    return project["id"], volume_id, label


def follow_events(server, job_id: int, timeout: float = 300) -> list[tuple[str, dict]]:
    events, name = [], None
    with httpx.stream("GET", server.url(f"/api/jobs/{job_id}/events"), timeout=httpx.Timeout(10, read=timeout)) as s:
        for line in s.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def actor_of(cluster, actor_id: str) -> dict:
    """What Ray's own state API says about a job's actor (dead ones are kept in its list)."""
    out = cluster.python(
        "import json\nfrom ray.util.state import get_actor\n"
        f"a = get_actor({actor_id!r}, address={cluster.address!r})\n"
        "print(json.dumps({k: getattr(a, k) for k in ('class_name', 'name', 'node_id', 'pid', 'state')}))"
    )
    return json.loads(out.strip().splitlines()[-1])


def worker_nodes(cluster) -> set[str]:
    out = cluster.python(
        "print(','.join(n['NodeID'] for n in ray.nodes() if n['Alive'] and n['Resources'].get('CPU', 0) > 0))"
    )
    return set(out.strip().split(","))


def progress_events(workspace: Path, job_id: int) -> list[dict]:
    path = workspace / "jobs" / str(job_id) / "model" / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loop_over_http_trains_in_a_ray_worker_that_cannot_see_the_workspace(tmp_path, cluster):
    workspace = tmp_path / "ws"
    blind = cluster.python(
        "import os\n@ray.remote(num_cpus=1)\ndef sees(path): return os.path.exists(path)\n"
        f"print([ray.get(sees.remote({str(workspace.parent)!r})) for _ in range(4)])"
    )
    assert "True" not in blind and "False" in blind, blind  # the workers see an empty folder there
    with ray_server(workspace, cluster) as server, server.client() as client:
        project_id, volume_id, label = painted_project(client, tmp_path)
        r = client.post(f"/api/projects/{project_id}/train", json=QUICK)
        assert r.status_code == 202, r.text
        events = follow_events(server, r.json()["id"])
        assert events[-1][0] == "end" and events[-1][1]["state"] == "succeeded", (events[-3:], server.log()[-3000:])
        job = events[-1][1]
        assert job["runner"] == "ray" and job["engine_id"] and job["ddp_workers"] is None  # one process
        steps = [data for name, data in events if name == "progress" and data.get("stage") == "finetune"]
        assert steps and any(data["eta_s"] is not None for data in steps)
        assert max(data["progress"] for data in steps) < 1.0  # training streams before the job ends

        actor = actor_of(cluster, job["engine_id"])
        assert actor["class_name"] == "TrainingRun" and actor["state"] == "DEAD"  # ran, collected, ended
        assert actor["node_id"] in worker_nodes(cluster) and actor["pid"] != server.process.pid

        predicted = cluster.python(
            "from ray.util.state import list_tasks\n"
            f"filters = [('name', '=', 'slicewise-predict'), ('state', '=', 'FINISHED')]\n"
            f"print(len(list_tasks(address={cluster.address!r}, filters=filters)))"
        )
        assert int(predicted.strip().splitlines()[-1]) >= 1  # the masks were inferred by a Ray task too
        r = client.get(f"/api/volumes/{volume_id}/prediction.nii.gz")
        assert r.status_code == 200, r.text
        (tmp_path / "pred.nii.gz").write_bytes(r.content)
        mask = nib.load(tmp_path / "pred.nii.gz")
        assert mask.shape == label.shape and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
        model = client.get(f"/api/projects/{project_id}/models").json()[0]
        # the Ray task also gave the mask with the paint taken as certain, and the download starts from it
        folder = workspace / "predictions" / str(model["id"]) / str(volume_id)
        painted = np.full(label.shape, IGNORE, np.uint8)
        painted[[4, 7]] = label[[4, 7]]
        with_paint = impose_paint(np.load(folder / "labels_with_paint.npy"), painted)
        np.testing.assert_array_equal(np.asarray(mask.dataobj), with_paint)
        assert model["active"] and model["annotated_slices"] == 2
        config = json.loads((workspace / "jobs" / str(job["id"]) / "model" / "config.json").read_text())
        assert config["out_dir"] == str(workspace / "jobs" / str(job["id"]) / "model")  # the server's paths again


def training_started(client, job_id):
    return lambda: (
        (j := client.get(f"/api/jobs/{job_id}").json())["state"] in TERMINAL
        or (j["state"] == "running" and j["stage"] == "finetune" and j["progress"] > 0)
    )


def test_two_projects_train_at_once_on_two_workers_and_cancel_ends_the_remote_run(tmp_path, cluster):
    workspace = tmp_path / "ws"
    with ray_server(workspace, cluster) as server, server.client() as client:
        first, _, _ = painted_project(client, tmp_path, "first")
        second, _, _ = painted_project(client, tmp_path, "second")
        jobs = [client.post(f"/api/projects/{p}/train", json=QUICK).json() for p in (first, second)]
        done = [wait_job(client, j["id"], lambda j: j["state"] in TERMINAL, server=server) for j in jobs]
        assert [j["state"] for j in done] == ["succeeded", "succeeded"], done
        spans = []
        for job in done:
            times = [e["time"] for e in progress_events(workspace, job["id"])]
            spans.append((min(times), max(times)))
        (a_start, a_end), (b_start, b_end) = spans
        assert a_start < b_end and b_start < a_end, spans  # the two trainings overlapped in time
        nodes = {actor_of(cluster, j["engine_id"])["node_id"] for j in done}
        assert len(nodes) == 2  # one CPU per worker node: each ran on its own

        job = client.post(f"/api/projects/{first}/train", json=LONG).json()
        wait_job(client, job["id"], lambda j: j["state"] in TERMINAL or j["progress"] > 0, server=server)
        r = client.post(f"/api/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        engine_id = client.get(f"/api/jobs/{job['id']}").json()["engine_id"]
        assert actor_of(cluster, engine_id)["state"] == "DEAD"
        active = [m for m in client.get(f"/api/projects/{first}/models").json() if m["active"]]
        assert active and active[0]["job_id"] == done[0]["id"]  # the previous model stays active


def test_sigkill_the_server_while_a_job_trains_on_ray_then_the_restarted_server_follows_it(tmp_path, cluster):
    workspace = tmp_path / "ws"
    with ray_server(workspace, cluster) as server, server.client() as client:
        project_id, volume_id, _ = painted_project(client, tmp_path)
        job = client.post(f"/api/projects/{project_id}/train", json=LONG).json()
        wait_job(client, job["id"], lambda j: j["state"] in TERMINAL or j["progress"] > 0, server=server)
        before = client.get(f"/api/jobs/{job['id']}").json()
        assert before["state"] == "running", before
        annotations = client.get(f"/api/volumes/{volume_id}/annotations").json()
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
    assert actor_of(cluster, before["engine_id"])["state"] == "ALIVE"  # the run went on without the server

    with ray_server(workspace, cluster) as server, server.client() as client:
        done = wait_job(client, job["id"], lambda j: j["state"] in TERMINAL, server=server)
        assert done["state"] == "succeeded", (done, server.log()[-3000:])
        assert done["engine_id"] == before["engine_id"] and done["resumes"] == 0  # the same run, followed again
        starts = [e for e in progress_events(workspace, job["id"]) if e["event"] in ("start", "resume")]
        assert len(starts) == 1  # not started again, from zero or from a checkpoint
        steps = [e["progress"] for e in progress_events(workspace, job["id"]) if e["event"] == "step"]
        assert steps == sorted(steps)  # each progress line came back once, in order
        assert client.get(f"/api/volumes/{volume_id}/annotations").json() == annotations
        assert client.get(f"/api/volumes/{volume_id}/prediction").json()["status"] == "ready"


def ask_actor(cluster, name: str, code: str) -> str:
    """Run `code` with `actor` bound to the job's named actor, in a driver of its own."""
    return cluster.python(f"actor = ray.get_actor({name!r}, namespace='slicewise')\n{code}")


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


def job_log(workspace: Path, job_id: int) -> str:
    return (workspace / "jobs" / str(job_id) / "train.log").read_text()[-4000:]


def test_the_ray_actor_dies_while_the_server_is_down_and_the_restarted_server_resumes_it(tmp_path, cluster):
    workspace = tmp_path / "ws"
    with ray_server(workspace, cluster) as server, server.client() as client:
        project_id, volume_id, _ = painted_project(client, tmp_path)
        job = client.post(f"/api/projects/{project_id}/train", json=LONG).json()
        checkpoint = workspace / "jobs" / str(job["id"]) / "model" / "checkpoint.pt"
        wait_until(checkpoint.exists, 180, "the first checkpoint coming back from Ray")
        before = client.get(f"/api/jobs/{job['id']}").json()
        assert before["state"] == "running", before
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
    name = actor_of(cluster, before["engine_id"])["name"]
    ask_actor(cluster, name, "ray.kill(actor, no_restart=True)")  # e.g. its node went while no server watched
    wait_until(lambda: actor_of(cluster, before["engine_id"])["state"] == "DEAD", 60, "the actor's death")

    with ray_server(workspace, cluster) as server, server.client() as client:
        done = wait_job(client, job["id"], lambda j: j["state"] in TERMINAL, server=server)
        context = (before, done, job_log(workspace, job["id"]), server.log()[-3000:])
        assert done["state"] == "succeeded", context
        assert done["resumes"] == 1 and done["engine_id"] != before["engine_id"], context  # a new actor
        starts = [e["event"] for e in progress_events(workspace, job["id"]) if e["event"] in ("start", "resume")]
        assert starts == ["start", "resume"], context  # from the checkpoint that came back, not from zero
        assert client.get(f"/api/volumes/{volume_id}/prediction").json()["status"] == "ready"


def test_a_job_given_two_gpus_says_it_trains_as_two_ddp_ranks_also_after_a_server_restart(tmp_path, cluster):
    """The cluster has no GPUs: the job's Ray Train workers wait in Ray's queue, which is enough to see
    what the job was started as (the DDP training itself: tests/test_ray_ddp.py)."""
    workspace = tmp_path / "ws"
    env = {**cluster.env, "SLICEWISE_RAY_GPUS_PER_JOB": "2"}
    args = ["--device", "cuda", "--runner", "ray", "--ray-address", cluster.address]
    with running_server(workspace, extra_args=args, env=env) as server, server.client() as client:
        project_id, _, _ = painted_project(client, tmp_path)
        job = client.post(f"/api/projects/{project_id}/train", json=QUICK).json()
        started = wait_job(client, job["id"], lambda j: j["state"] in TERMINAL or j["engine_id"], server=server)
        assert started["state"] == "running" and started["runner"] == "ray", started
        assert started["ddp_workers"] == 2
        name = actor_of(cluster, started["engine_id"])["name"]
        workers = ask_actor(cluster, name, "print(ray.get(actor.info.remote(), timeout=60)['workers'])")
        assert workers.split()[-1] == "2"  # the actor drives 2 Ray Train workers
        assert "2 GPUs as 2 DDP ranks" in job_log(workspace, job["id"])
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()

    with running_server(workspace, extra_args=args, env=env) as server, server.client() as client:
        again = wait_job(client, job["id"], lambda j: j["state"] in TERMINAL or j["state"] == "running", server=server)
        assert again["state"] == "running" and again["engine_id"] == started["engine_id"], again  # re-attached
        assert again["ddp_workers"] == 2
        r = client.post(f"/api/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        assert r.json()["ddp_workers"] == 2
    assert actor_of(cluster, started["engine_id"])["state"] == "DEAD"


def trainer_on_the_worker(config_path: Path) -> int:
    """The pid of the job's `python -m model.train` in its actor's folder on a (loopback) worker node, read
    from /proc at once: asking the actor takes a Ray driver of its own, seconds to start under load, and
    a quick run can be over by then."""
    wanted = str(run_root(run_name(config_path)) / "config.json").encode()
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if b"model.train" in command and wanted in command:
            return int(entry.name)
    raise LookupError(f"no trainer of {config_path} runs on this machine")


def test_a_run_killed_out_of_memory_inside_the_ray_actor_is_retried_once_with_half_the_batches(tmp_path, cluster):
    workspace = tmp_path / "ws"
    with ray_server(workspace, cluster) as server, server.client() as client:
        project_id, _, _ = painted_project(client, tmp_path)
        job = client.post(f"/api/projects/{project_id}/train", json=LONG).json()
        config_path = workspace / "jobs" / str(job["id"]) / "config.json"
        first = wait_job(client, job["id"], lambda j: j["state"] in TERMINAL or j["progress"] > 0, server=server)
        assert first["state"] == "running", first
        batch = json.loads(config_path.read_text())["finetune_batch"]
        train_pid = trainer_on_the_worker(config_path)
        os.kill(train_pid, signal.SIGKILL)  # what the kernel's OOM killer does: the one process, not its group

        done = wait_job(client, job["id"], lambda j: j["state"] in TERMINAL, server=server)
        assert done["state"] == "succeeded" and done["oom_retry"] is True, (done, server.log()[-3000:])
        assert done["engine_id"] != first["engine_id"]  # the retry ran in an actor of its own
        assert json.loads(config_path.read_text())["finetune_batch"] == max(1, batch // 2)
        log = job_log(workspace, job["id"])
        assert log.count("start on Ray") == 2, log
        starts = [e["event"] for e in progress_events(workspace, job["id"]) if e["event"] in ("start", "resume")]
        assert starts == ["start", "start"]  # the retry starts afresh: the checkpoint's batch size no longer applies
