"""How the Ray runner reports an actor that died under it, with the errors Ray itself raises: one that Ray's
memory monitor ended reads as an out-of-memory kill (so the worker retries with halved batches, as for a
local run the kernel's OOM killer ended), any other loss as a failure that names Ray's reason. No cluster
is needed: a lost actor with nothing to start again from never reaches Ray."""

from __future__ import annotations

import signal

import pytest

from app.jobs import RunHandle, looks_out_of_memory, read_tail
from app.ray_runner import RayRun, RayRunner

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
