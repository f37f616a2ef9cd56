"""Start the real `slicewise serve` process on a free loopback port, for tests that need HTTP end to end.

    with running_server(tmp_path / "ws") as server:
        httpx.get(server.url("/api/health"))

Other test files (retrain service, browser tests) reuse this; keep its signature stable.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import wait_job as poll_job

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@dataclass
class ServerHandle:
    base_url: str
    port: int
    workspace: Path
    process: subprocess.Popen
    log_path: Path

    def url(self, path: str) -> str:
        return self.base_url + path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kwargs.pop("timeout", 30), **kwargs)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slicewise_command() -> list[str]:
    """The installed console script when there is one (what users run), else the same entry point via -m."""
    script = Path(sys.executable).with_name("slicewise")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def _stop(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def _wait_healthy(handle: ServerHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise RuntimeError(
                f"slicewise serve exited with code {handle.process.returncode} before it was healthy:\n{handle.log()}"
            )
        try:
            if httpx.get(handle.url("/api/health"), timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"slicewise serve was not healthy within {timeout:.0f} s:\n{handle.log()}")


@contextlib.contextmanager
def running_server(
    workspace: Path | None = None,
    *,
    demo: bool = False,
    extra_args: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    startup_timeout: float = 60,
) -> Iterator[ServerHandle]:
    """Run `slicewise serve --workspace WORKSPACE --host 127.0.0.1 --port <free>`; stop it on exit.

    demo=False passes --no-demo (most tests want an empty workspace). `env` is added to the current
    environment. cwd defaults to the repo root, so ../shared/data is found as it is for a user.
    The server's stdout+stderr go to a log file (handle.log()), shown when start-up fails.
    """
    with contextlib.ExitStack() as stack:
        if workspace is None:
            workspace = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slicewise-ws-"))) / "workspace"
        workspace = Path(workspace)
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slicewise-log-")))
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
        last_error: Exception | None = None
        for attempt in range(3):  # the free port can be taken by someone else between probe and bind
            port = free_port()
            log_path = log_dir / f"serve-{attempt}.log"
            command = [
                *slicewise_command(),
                "serve",
                "--workspace",
                str(workspace),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *([] if demo else ["--no-demo"]),
                *extra_args,
            ]
            with open(log_path, "wb") as log_file:
                process = subprocess.Popen(
                    command, cwd=cwd or REPO_ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
                )
            handle = ServerHandle(f"http://127.0.0.1:{port}", port, workspace, process, log_path)
            try:
                _wait_healthy(handle, startup_timeout)
            except Exception as exc:
                _stop(process)
                last_error = exc
                if "address already in use" in handle.log().lower():
                    continue
                raise
            try:
                yield handle
            finally:
                _stop(process)
            return
        raise RuntimeError(f"could not start slicewise serve: {last_error}")


def wait_job(client, job_id, predicate, timeout=420, server=None) -> dict:
    """The benchmarks' job poll, polling faster and showing the end of the server's log when it times out."""
    context = (lambda: server.log()[-3000:]) if server else None
    return poll_job(client, job_id, predicate, timeout, poll_s=0.2, context=context)
