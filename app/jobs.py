"""How a training job runs: the `JobRunner` interface, the local subprocess runner, and the event hub.

Training never runs in the web process: `LocalRunner` starts `python -m model.train CONFIG.json` in its
own process group (so cancel can end it and everything it spawned), with stdout/stderr appended to a
log file that the worker reads to explain a failure. `RayRunner` (app/ray_runner.py) implements the
same methods on a Ray cluster; `runner_for` picks one from the settings.
"""

from __future__ import annotations

import abc
import errno
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_COMMAND = (sys.executable, "-m", "model.train")
OOM_MARKERS = ("out of memory", "memoryerror", "cannot allocate memory", "std::bad_alloc")


@dataclass
class RunHandle:
    """A started training run: enough to poll it, stop it, and find it again after a server restart."""

    pid: int
    config_path: Path
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)
    engine_id: str | None = None  # the engine's own id of the run (a Ray actor id); None for a local process
    ddp_workers: int | None = None  # the DDP ranks (Ray Train workers) it trains as, when more than one
    state: object = field(default=None, repr=False)  # what the runner keeps between polls


class JobRunner(abc.ABC):
    """Runs one training config to completion somewhere; the worker only talks to this."""

    name = "abstract"
    outlives_server = False  # True: a run goes on when the server stops, and start() attaches to it again
    parallel_jobs = 1  # how many jobs (of different projects) the worker runs at the same time
    # True: predict_many(model_path, volumes) infers a new model's masks on the engine's workers
    fans_out_predictions = False

    @abc.abstractmethod
    def start(self, config_path: Path, log_path: Path) -> RunHandle: ...

    @abc.abstractmethod
    def poll(self, handle: RunHandle) -> int | None:
        """The exit code once the run has ended, else None."""

    @abc.abstractmethod
    def cancel(self, handle: RunHandle, grace_s: float = 5.0) -> None:
        """End the run (and its children); returns when it is gone."""

    @abc.abstractmethod
    def kill_leftover(self, pid: int, config_path: Path) -> bool:
        """After a server crash: end a run of this config still alive under `pid`; True if one was."""

    def reattachable(self, config_path: Path) -> bool:
        """After a server restart: whether a run of this config still goes on, so start() follows it."""
        return False


class LocalRunner(JobRunner):
    """The default: one subprocess per run on this machine."""

    name = "local"

    def __init__(self, command: Sequence[str] = TRAIN_COMMAND, env: dict[str, str] | None = None):
        self.command = list(command)
        self.env = env

    def start(self, config_path: Path, log_path: Path) -> RunHandle:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        # `-m model.train` must find this checkout even when slicewise is not pip-installed
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(log_path, "ab") as log:
            log.write(
                f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self.command)} {config_path}\n".encode()
            )
            log.flush()
            process = subprocess.Popen(
                [*self.command, str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=env,
                start_new_session=True,  # own process group: cancel ends the whole tree
            )
        return RunHandle(pid=process.pid, config_path=config_path, log_path=log_path, process=process)

    def poll(self, handle: RunHandle) -> int | None:
        if handle.process is not None:
            return handle.process.poll()
        return None if process_alive(handle.pid) else -1

    def cancel(self, handle: RunHandle, grace_s: float = 5.0) -> None:
        signal_group(handle.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.poll(handle) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.poll(handle) is None:
            signal_group(handle.pid, signal.SIGKILL)
            if handle.process is not None:
                handle.process.wait()

    def kill_leftover(self, pid: int, config_path: Path) -> bool:
        if not pid or not process_alive(pid) or str(config_path) not in process_cmdline(pid):
            return False  # gone, or the pid now belongs to something else
        signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return True


def runner_for(settings) -> JobRunner:
    """The runner `slicewise serve` was asked for (--runner, SLICEWISE_RUNNER)."""
    if settings.runner == "ray":
        from app.ray_runner import RayRunner

        return RayRunner(
            settings.ray_address, cpus_per_job=settings.ray_cpus_per_job, gpus_per_job=settings.ray_gpus_per_job
        )
    return LocalRunner()


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    """True for a running process; a zombie (dead, not yet reaped by its new parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False


def looks_out_of_memory(returncode: int | None, log_tail: str) -> bool:
    """The kernel's OOM killer sends SIGKILL (-9); torch and Python say so in the log."""
    lowered = log_tail.lower()
    return returncode == -signal.SIGKILL or any(marker in lowered for marker in OOM_MARKERS)


def oom_retry_message(returncode: int | None, halved_config: dict) -> str:
    return (
        f"out of memory (exit code {returncode}); retrying once with half the batch size "
        f"(local {halved_config['local_batch']}, fine-tune {halved_config['finetune_batch']}) and the "
        "'block' local loss"
    )


def failure_message(returncode: int | None, log_tail: str, reported: str | None, after_oom_retry: bool) -> str:
    """Why a training run failed, from its exit code, the error it reported and its log."""
    reason = reported or last_error_line(log_tail) or "no output"
    if returncode is not None and returncode < 0:
        reason = f"killed by signal {-returncode}; {reason}"
    what = (
        "out of memory again after the retry with smaller batches"
        if after_oom_retry and looks_out_of_memory(returncode, log_tail)
        else f"training stopped with exit code {returncode}"
    )
    return f"{what}: {reason}"


def unexpected_failure_message(exc: Exception) -> str:
    """Why a job failed on an exception no step expected (a bug or a broken workspace)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the server's disk is full, so the job cannot write its files ({exc}); free some space and retrain"
    return f"internal error: {exc}"


def read_tail(path: Path, max_bytes: int = 20_000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def last_error_line(log_tail: str) -> str:
    """The most telling line of a crashed run's log: the exception line, else the last non-empty one."""
    lines = [line.strip() for line in log_tail.splitlines() if line.strip() and not line.startswith("===")]
    for line in reversed(lines):
        if ("Error" in line or "Exception" in line) and not line.startswith("File "):
            return line[:500]
    return lines[-1][:500] if lines else ""


class EventHub:
    """Fan-out of job events to Server-Sent-Event subscribers; thread-safe, in memory only.

    Subscribers get every event published after they subscribe; the SSE route sends the job's current
    row first, so nothing is missed between the two.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[int, list[queue.Queue]] = {}

    def subscribe(self, job_id: int) -> queue.Queue:
        q: queue.Queue = queue.Queue(maxsize=10_000)
        with self._lock:
            self._subscribers.setdefault(job_id, []).append(q)
        return q

    def unsubscribe(self, job_id: int, q: queue.Queue) -> None:
        with self._lock:
            subscribers = self._subscribers.get(job_id, [])
            if q in subscribers:
                subscribers.remove(q)
            if not subscribers:
                self._subscribers.pop(job_id, None)

    def publish(self, job_id: int, event: str, data: dict) -> None:
        with self._lock:
            subscribers = list(self._subscribers.get(job_id, []))
        for q in subscribers:
            try:
                q.put_nowait((event, data))
            except queue.Full:
                pass  # a stalled client loses intermediate progress, never the server's memory


def on_shutdown_signal(callback) -> None:
    """Call `callback` when SIGINT/SIGTERM arrives, then whatever handler was installed (uvicorn's).

    Uvicorn's graceful shutdown waits for open responses, and an event stream stays open until its job
    ends; this lets streams close at once instead. Outside the main thread (in-process test clients)
    signals cannot be handled, and nothing is installed.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous = signal.getsignal(sig)

            def handler(signum, frame, previous=previous):
                callback()
                if callable(previous):
                    previous(signum, frame)
                elif previous == signal.SIG_DFL:
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)

            signal.signal(sig, handler)
        except ValueError:
            return
