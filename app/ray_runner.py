"""`RayRunner`: the `JobRunner` that trains on a Ray cluster (`slicewise serve --runner ray`).

Each run is a detached, named actor (app/ray_training.py) holding the resources its config needs: a
GPU, or `cpus_per_job` CPUs. With `gpus_per_job` > 1 a run on GPUs trains data-parallel instead: the
actor holds nothing itself and drives that many Ray Train workers, a GPU each (model/ray_ddp.py).
Its inputs (the config, the volumes, the sparse labels, the model or
checkpoint it starts from) go to the worker as bytes through Ray's object store; nothing on the worker
needs to see the server's workspace. While it runs, `poll` pulls the new progress lines, the log and
every new checkpoint back into the job folder, where the worker follows them exactly as it follows a
local run; at the end it writes the results there atomically, model.pt last.

A server that is stopped or killed leaves the actor running. Started again, it finds the actor by its
name (made from the job's config path) and follows it from where its copy of the progress ends. An
actor that dies (a lost node) is started again once from the last checkpoint that came back; one
that Ray's memory monitor ended is reported as the kernel's OOM killer would (exit -9, "out of memory"
in the log), so the worker retries it with halved batches as it does a local run.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app import ray_training
from app.jobs import JobRunner, RunHandle
from data.atomic import atomic_write_bytes
from data.errors import SlicewiseError
from model.progress import FILE_NAME as PROGRESS_FILE

NAMESPACE = "slicewise"
NODE_LOSS_RESTARTS = 1
# how Ray words the death of an actor its memory monitor ended (the kernel's OOM killer is a SIGKILL instead)
RAY_OOM_MARKERS = ("running low on memory", "memory pressure", "out of memory", "outofmemory")
CODE_PACKAGES = ("app", "model", "data")  # shipped to the workers with each job (Ray runtime_env py_modules)
REPO_ROOT = Path(__file__).resolve().parents[1]


class RayUnavailable(SlicewiseError):
    status = 503


@dataclass
class RayRun:
    """What the server keeps about one actor between polls."""

    name: str
    actor: object
    out_dir: Path
    config: dict
    progress_offset: int = 0  # bytes of the remote progress.jsonl already appended here
    log_offset: int = 0
    checkpoint_stamp: float = 0.0
    pending: object = None  # the outstanding `pull` call
    restarts: int = 0
    cancelled: bool = False
    started: bool = False  # the actor answered once: it has its resources and runs
    workers: int = 1  # the DDP ranks it trains as (Ray Train workers)
    returncode: int | None = None


class RayRunner(JobRunner):
    name = "ray"
    outlives_server = True
    fans_out_predictions = True

    def __init__(self, address: str, cpus_per_job: int = 1, gpus_per_job: int = 1, parallel_jobs: int = 8):
        self.address = address
        self.cpus_per_job = cpus_per_job
        self.gpus_per_job = gpus_per_job
        self.parallel_jobs = parallel_jobs
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the cluster

    def connect(self):
        """Join the cluster as a driver (once per process) -> the ray module."""
        try:
            import ray
        except ImportError as exc:
            raise RayUnavailable(f"--runner ray needs Ray: pip install 'slicewise[ray]' ({exc})") from None
        with self._lock:
            if not ray.is_initialized():
                try:
                    ray.init(
                        address=self.address,
                        namespace=NAMESPACE,
                        log_to_driver=False,
                        configure_logging=False,
                        runtime_env={"py_modules": [str(REPO_ROOT / p) for p in CODE_PACKAGES]},
                    )
                except Exception as exc:
                    raise RayUnavailable(f"cannot reach the Ray cluster at {self.address}: {exc}") from None
        return ray

    def resources(self, config: dict) -> dict:
        """What one run asks Ray for: GPUs when the config trains on CUDA (or may, and the cluster has
        some), else CPUs."""
        ray = self.connect()
        device = config.get("device", "auto")
        wants_gpu = device == "cuda" or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        if wants_gpu:
            return {"num_gpus": self.gpus_per_job, "num_cpus": 1}
        return {"num_gpus": 0, "num_cpus": self.cpus_per_job}

    def training_resources(self, config: dict) -> tuple[dict, int]:
        """(what the run's actor asks Ray for, the DDP ranks it trains as): with more than one GPU per job,
        the GPUs go to the Ray Train workers the actor starts, one rank each; asked for by the actor too,
        they would never be free for its workers."""
        resources = self.resources(config)
        if resources["num_gpus"] > 1:
            return {"num_gpus": 0, "num_cpus": 0}, resources["num_gpus"]
        return resources, 1

    def _existing(self, name: str):
        ray = self.connect()
        try:
            return ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None

    # ------------------------------------------------------------------ JobRunner

    def start(self, config_path: Path, log_path: Path) -> RunHandle:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        config = json.loads(config_path.read_text())
        run = RayRun(run_name(config_path), None, Path(config["out_dir"]), config)
        run.out_dir.mkdir(parents=True, exist_ok=True)
        actor = self._existing(run.name)
        if actor is not None:
            # a run started before this server (re)started and not collected yet: follow it again
            meta = json.loads(meta_path(config_path).read_text()) if meta_path(config_path).exists() else {}
            run.actor = actor
            run.workers = meta.get("workers", 1)
            run.progress_offset = max(0, size_of(run.out_dir / PROGRESS_FILE) - meta.get("progress_base", 0))
            run.log_offset = max(0, size_of(log_path) - meta.get("log_base", 0))
            append(log_path, f"\n=== {now()} re-attached to Ray actor {run.name}\n".encode())
        else:
            self._launch(run, config_path, log_path)
        return RunHandle(
            pid=0,
            config_path=config_path,
            log_path=log_path,
            engine_id=actor_id(run.actor),
            ddp_workers=run.workers if run.workers > 1 else None,
            state=run,
        )

    def _launch(self, run: RayRun, config_path: Path, log_path: Path) -> None:
        ray = self.connect()
        resources, workers = self.training_resources(run.config)
        config = dict(run.config)
        if workers == 1 and not resources["num_gpus"] and not config.get("threads"):
            config["threads"] = resources["num_cpus"]  # as many torch threads as the CPUs Ray gave the run
        files = {path: put_path(ray, Path(path)) for path in ray_training.input_paths(config)}
        out_files = {
            p.name: ray.put(p.read_bytes())
            for p in sorted(run.out_dir.iterdir())
            if p.is_file() and p.name != PROGRESS_FILE
        }
        append(
            log_path,
            f"\n=== {now()} start on Ray ({self.address}): actor {run.name}, {describe(resources, workers)}\n".encode(),
        )
        # where this actor's output starts in the local copies, for a server that attaches again later
        meta = {
            "progress_base": size_of(run.out_dir / PROGRESS_FILE),
            "log_base": size_of(log_path),
            "workers": workers,
        }
        atomic_write_bytes(meta_path(config_path), json.dumps(meta).encode())
        run.actor = (
            ray.remote(ray_training.TrainingRun)
            .options(
                name=run.name,
                namespace=NAMESPACE,
                lifetime="detached",
                max_concurrency=4,  # pull and cancel answer while the run goes on
                **resources,
            )
            .remote(run.name, config, files, out_files, workers=workers)
        )
        run.workers = workers
        run.progress_offset = run.log_offset = 0
        run.checkpoint_stamp, run.pending, run.started = 0.0, None, False

    def poll(self, handle: RunHandle) -> int | None:
        run: RayRun = handle.state
        if run.returncode is not None:
            return run.returncode
        ray = self.connect()
        if run.pending is None:
            run.pending = run.actor.pull.remote(run.progress_offset, run.log_offset, run.checkpoint_stamp)
        ready, _ = ray.wait([run.pending], timeout=0)
        if not ready:
            return None
        try:
            pulled = ray.get(run.pending)
        except (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError) as exc:
            return self._actor_lost(run, handle, exc)
        finally:
            run.pending = None
        run.started = True
        self._store(run, handle.log_path, pulled)
        if pulled["returncode"] is not None:
            if pulled["returncode"] == 0:
                self._write_results(run, ray.get(run.actor.results.remote(), timeout=600))
            self._end(run, pulled["returncode"])
        return run.returncode

    def cancel(self, handle: RunHandle, grace_s: float = 5.0) -> None:
        run: RayRun = handle.state
        run.cancelled = True
        if run.returncode is not None:
            return
        ray = self.connect()
        if run.started:  # a run still waiting for its resources has no process to end yet
            try:
                ray.get(run.actor.cancel.remote(grace_s), timeout=grace_s + 10)
            except Exception:
                pass  # gone already, or stuck: the kill below ends it (its trainer dies with it)
        self._end(run, -signal.SIGTERM)

    def predict_many(self, model_path: Path, volumes: list[tuple[int, object, tuple, bool, object]]) -> dict:
        """Start one Ray task per volume (volume id, array, spacing, want probs, its paint or None) -> {volume
        id: a callable that waits for its (labels, probs, labels with the paint or None)}: the volumes are
        predicted across the cluster at once."""
        ray = self.connect()
        task = ray.remote(ray_training.predict_on_worker).options(
            **self.resources({"device": "auto"}), name="slicewise-predict"
        )
        model = ray.put(Path(model_path).read_bytes())
        refs = {
            vid: task.remote(model, ray.put(array), spacing, probs, None if painted is None else ray.put(painted))
            for vid, array, spacing, probs, painted in volumes
        }
        return {vid: (lambda ref=ref: ray.get(ref, timeout=3600)) for vid, ref in refs.items()}

    def kill_leftover(self, pid: int, config_path: Path) -> bool:
        return False  # a run on Ray outlives the server: start() attaches to it again

    def reattachable(self, config_path: Path) -> bool:
        try:
            return self._existing(run_name(config_path)) is not None
        except RayUnavailable:
            return False

    # ------------------------------------------------------------------ helpers

    def _actor_lost(self, run: RayRun, handle: RunHandle, exc: Exception) -> int | None:
        if run.cancelled:
            run.returncode = -signal.SIGTERM
            return run.returncode
        reason = lost_reason(exc)
        if killed_out_of_memory(exc):
            # as the local runner reports an OOM kill, so the worker retries once with halved batches
            # (starting again from the checkpoint with the same batches would run out again)
            append(handle.log_path, f"\nError: Ray ended the run out of memory: {reason}\n".encode())
            run.returncode = -signal.SIGKILL
            return run.returncode
        if run.restarts < NODE_LOSS_RESTARTS and (run.out_dir / "checkpoint.pt").exists():
            run.restarts += 1
            append(
                handle.log_path,
                f"\n=== {now()} the Ray actor was lost ({reason}); again from its checkpoint\n".encode(),
            )
            self._launch(run, handle.config_path, handle.log_path)
            handle.engine_id = actor_id(run.actor)
            return None
        append(handle.log_path, f"\nError: the Ray worker running this job was lost: {reason}\n".encode())
        run.returncode = 1
        return run.returncode

    def _store(self, run: RayRun, log_path: Path, pulled: dict) -> None:
        if pulled["log"]:
            append(log_path, pulled["log"])
            run.log_offset += len(pulled["log"])
        if pulled["checkpoint"] is not None:
            atomic_write_bytes(run.out_dir / "checkpoint.pt", pulled["checkpoint"])
            run.checkpoint_stamp = pulled["checkpoint_stamp"]
        # whole lines only (the rest comes with the next pull): the copy here then ends with a whole line
        # when the actor is lost, and the lines of the run started again do not join a broken one
        progress = pulled["progress"][: pulled["progress"].rfind(b"\n") + 1]
        if progress:  # after the checkpoint: an epoch's line never comes before its checkpoint
            append(run.out_dir / PROGRESS_FILE, progress)
            run.progress_offset += len(progress)

    def _write_results(self, run: RayRun, results: dict[str, bytes]) -> None:
        for name, data in sorted(results.items(), key=lambda item: item[0] == ray_training.RESULT_LAST):
            if name == "config.json":
                data = json.dumps(server_config(json.loads(data), run.config), indent=2).encode()
            atomic_write_bytes(run.out_dir / name, data)

    def _end(self, run: RayRun, returncode: int) -> None:
        ray = self.connect()
        if run.started:
            try:
                ray.get(run.actor.cleanup.remote(), timeout=30)
            except Exception:
                pass
        try:
            ray.kill(run.actor, no_restart=True)
        except Exception:
            pass
        # the kill is asynchronous: a start of the same job right after (the out-of-memory retry) must not
        # find the dying actor by its name and attach to it, nor be refused the name
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._existing(run.name) is not None:
            time.sleep(0.1)
        run.returncode = returncode


def run_name(config_path: Path) -> str:
    """The actor's name: the same for every start of one job's config on one server machine."""
    key = f"{socket.gethostname()}:{Path(config_path).resolve()}"
    return "job-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def lost_reason(exc: Exception) -> str:
    """What Ray says about a lost actor: its first line, and the cause it adds last (one line each)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return " ".join(dict.fromkeys((lines[0][:300], lines[-1][:300])))


def killed_out_of_memory(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(marker in text for marker in RAY_OOM_MARKERS)


def meta_path(config_path: Path) -> Path:
    return Path(config_path).parent / "ray_run.json"


def actor_id(actor) -> str | None:
    return actor._actor_id.hex() if actor is not None else None


def put_path(ray, path: Path):
    """A file's bytes, or a folder's files by relative path, into the object store."""
    if path.is_dir():
        return {str(p.relative_to(path)): ray.put(p.read_bytes()) for p in sorted(path.rglob("*")) if p.is_file()}
    return ray.put(path.read_bytes())


def server_config(remote: dict, sent: dict) -> dict:
    """The config a remote run saved, with the server's paths in place of the worker's."""
    fields = (*ray_training.PATH_LIST_FIELDS, *ray_training.PATH_FIELDS, "out_dir", "speed_cache")
    return {**remote, **{key: sent.get(key) for key in fields if key in sent}}


def describe(resources: dict, workers: int = 1) -> str:
    if workers > 1:
        return f"{workers} GPUs as {workers} DDP ranks (Ray Train workers)"
    if resources["num_gpus"]:
        return f"{resources['num_gpus']} GPU(s)"
    return f"{resources['num_cpus']} CPU(s)"


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
