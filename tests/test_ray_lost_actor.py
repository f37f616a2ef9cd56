"""How the Ray runner reports an actor that died under it, with the errors Ray itself raises: one that Ray's
memory monitor ended reads as an out-of-memory kill (so the worker retries with halved batches, as for a
local run the kernel's OOM killer ended), any other loss as a failure that names Ray's reason. And what
the next actor of the job starts from: nothing the lost one left in its folder on the node, and a copy of
the progress on the server that ends with a whole line. No cluster is needed: a lost actor with nothing
to start again from never reaches Ray, and a TrainingRun without input files makes no Ray calls."""

from __future__ import annotations

import json
import os
import signal

import pytest

from app.jobs import RunHandle, looks_out_of_memory, read_tail
from app.ray_runner import RayRun, RayRunner
from app.ray_training import TrainingRun, run_root

ray_exceptions = pytest.importorskip("ray.exceptions")
common_pb2 = pytest.importorskip("ray.core.generated.common_pb2")

WORKER_DIED = (
    "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: "
    "Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) the "
    "process was killed by the OOM killer due to high memory usage, (2) ray stop --force was called"
)
MEMORY_MONITOR = (
    "Task was killed due to the node running low on memory. Refer to the documentation on how to address the "
    "out of memory issue: https://docs.ray.io/en/latest/ray-observability/user-guides/debug-apps/debug-memory.html"
)


def actor_died(message: str) -> Exception:
    context = common_pb2.ActorDiedErrorContext(
        class_name="TrainingRun", actor_id=b"\x01" * 16, pid=5, name="job-x", ray_namespace="slicewise"
    )
    context.error_message = message
    return ray_exceptions.ActorDiedError(context)


def lose(tmp_path, exc: Exception, checkpoint: bool = False) -> tuple[int | None, str, RayRun]:
    out_dir = tmp_path / "model"
    out_dir.mkdir()
    if checkpoint:
        (out_dir / "checkpoint.pt").write_bytes(b"ckpt")
    run = RayRun("job-x", None, out_dir, {})
    handle = RunHandle(pid=0, config_path=tmp_path / "config.json", log_path=tmp_path / "train.log", state=run)
    returncode = RayRunner("127.0.0.1:1")._actor_lost(run, handle, exc)
    return returncode, read_tail(handle.log_path), run


@pytest.mark.parametrize(
    "exc", [ray_exceptions.OutOfMemoryError(MEMORY_MONITOR), actor_died(MEMORY_MONITOR)], ids=["task", "actor"]
)
def test_an_actor_ended_by_rays_memory_monitor_is_reported_as_out_of_memory_not_restarted(tmp_path, exc):
    returncode, tail, run = lose(tmp_path, exc, checkpoint=True)
    assert returncode == -signal.SIGKILL and run.restarts == 0  # the same batches would run out again
    assert looks_out_of_memory(returncode, tail) and "running low on memory" in tail


def test_an_actor_lost_otherwise_fails_with_rays_reason_and_is_not_taken_for_out_of_memory(tmp_path):
    returncode, tail, _ = lose(tmp_path, actor_died(WORKER_DIED))
    assert returncode == 1 and not looks_out_of_memory(returncode, tail)
    assert "was lost" in tail and "Worker unexpectedly exits" in tail  # the cause Ray gives, not only its header


def test_a_new_actor_of_a_job_returns_nothing_an_earlier_killed_one_left_in_its_folder():
    name = f"job-test-leftovers-{os.getpid()}"
    old_out = run_root(name) / "out"
    old_out.mkdir(parents=True)
    (old_out / "progress.jsonl").write_text(json.dumps({"event": "start", "message": "the killed actor"}) + "\n")
    (old_out / "checkpoint.pt").write_bytes(b"the killed actor's checkpoint")
    (run_root(name) / "train.log").write_text("the killed actor's log\n")
    run = TrainingRun(name, {}, {}, {})
    try:
        first = run.pull(0, 0, 0.0)  # the server asks right away, while the new run may still be preparing
        assert first["progress"] == b"" and first["checkpoint"] is None and b"killed" not in first["log"]
    finally:
        run.cancel(grace_s=10)
        run._thread.join(60)
        run.cleanup()
    assert not run_root(name).exists()


def test_the_servers_copy_of_the_progress_takes_whole_lines_only(tmp_path):
    run = RayRun("job-x", None, tmp_path, {})
    runner = RayRunner("127.0.0.1:1")
    line = json.dumps({"event": "step", "progress": 0.5}).encode() + b"\n"
    pulled = {"log": b"", "checkpoint": None, "progress": line + line[:10]}  # the actor lost mid-line
    runner._store(run, tmp_path / "train.log", pulled)
    assert (tmp_path / "progress.jsonl").read_bytes() == line and run.progress_offset == len(line)
    runner._store(run, tmp_path / "train.log", {**pulled, "progress": line + line})  # from that offset, next pull
    assert (tmp_path / "progress.jsonl").read_bytes() == line * 3 and run.progress_offset == 3 * len(line)
