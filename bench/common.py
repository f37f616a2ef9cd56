"""What every benchmark records next to its numbers (the machine, the commit and the command), and what the
benchmarks against a running server share: starting `slicewise serve`, a synthetic volume, waiting on jobs."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np

from data.store import FINISHED_STATES

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ONE_LABEL = [{"value": 1, "name": "structure", "color": "#e6194b"}]


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def commit() -> str:
    """The short commit hash, saying so when the work tree has uncommitted changes."""
    sha = git("rev-parse", "--short", "HEAD")
    return sha + (" (+ uncommitted changes)" if git("status", "--porcelain") not in ("", "unknown") else "")


def cpu_model() -> str:
    """`lscpu`'s "Model name", else what Python knows."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


def torch_version() -> str:
    try:
        import torch

        return torch.__version__
    except Exception:
        return "?"


def machine() -> str:
    """e.g. "AMD EPYC 9454, 2 cores" or "..., 16 cores, GPU NVIDIA H200"."""
    gpu = gpu_name()
    return f"{cpu_model()}, {os.cpu_count()} cores" + (f", GPU {gpu}" if gpu else "")


def command(argv: list[str] | None = None) -> str:
    """How this benchmark was started, as `python -m bench.NAME ARGS`."""
    module = Path(sys.argv[0]).stem
    return " ".join(["python", "-m", f"bench.{module}", *(sys.argv[1:] if argv is None else argv)])


def provenance() -> str:
    """The commit, machine and command lines under a benchmark report's title."""
    return f"- commit: {git('rev-parse', '--short', 'HEAD')}; machine: {machine()}; torch {torch_version()}\n- command: `{command()}`"


def save_runs(path: Path, runs: list[dict]) -> None:
    """A benchmark's runs so far, rewritten after each one so that a stopped benchmark keeps them."""
    path.write_text(json.dumps({"runs": runs}, indent=1))


def report_header(started: float) -> str:
    """The machine, commit, date and command lines that head a benchmark's report (`started`: time.time())."""
    return "\n".join(
        [
            f"- machine: {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, no GPU",
            f"- commit: {commit()}",
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}",
            f"- command: `{command()}` (wall time {time.time() - started:.0f} s)",
        ]
    )


def wait_job(client, job_id: int, predicate, timeout: float = 1800, poll_s: float = 0.5, context=None) -> dict:
    """Poll GET /api/jobs/{id} until `predicate(job)` -> the job; TimeoutError after `timeout` seconds, saying
    where the job got to and, when given, what `context()` returns (e.g. the server's log)."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(poll_s)
    raise TimeoutError(
        f"job {job_id} never got there in {timeout:.0f} s: {job}" + (f"\n{context()}" if context else "")
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workspace: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`slicewise serve` on a free loopback port (CPU, no demo project) -> (process, base URL), once healthy."""
    port = free_port()
    script = Path(sys.executable).with_name("slicewise")
    serve = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [*serve, "serve", "--workspace", str(workspace), "--port", str(port), "--no-demo", "--device", "cpu"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "SLICEWISE_LOG_LEVEL": "warning"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"server did not start:\n{log_path.read_text()}")


def synthetic_volume(path: Path, shape) -> np.ndarray:
    """Write an int16 NIfTI of a bright cylinder in noise to `path` -> its mask (uint8, 1 inside)."""
    rng = np.random.default_rng(0)
    zz = np.linspace(-1, 1, shape[0])[:, None, None] ** 2 + np.linspace(-1, 1, shape[1])[None, :, None] ** 2
    image = (1000 * (zz < 0.3) + rng.normal(0, 50, (shape[0], shape[1], 1))).astype(np.int16)
    image = np.repeat(image, shape[2], axis=2)
    nib.save(nib.Nifti1Image(image, np.diag([0.7, 0.7, 1.5, 1.0])), path)
    return (image > 500).astype(np.uint8)


def train_predicting_model(client: httpx.Client, project_id: int) -> dict:
    """A tiny model (quick preset, fine-tune only, 2 steps) so that predictions exist -> the finished job."""
    job = client.post(
        f"/api/projects/{project_id}/train",
        json={"preset": "quick", "stages": {"global": False, "local": False, "finetune": {"epochs": 1, "steps": 2}}},
    ).json()
    job = wait_job(client, job["id"], lambda j: j["state"] in FINISHED_STATES)
    if job["state"] != "succeeded":
        raise SystemExit(f"set-up training failed: {job}")
    return job


def start_background_training(client: httpx.Client, project_id: int, finetune_epochs: int) -> dict:
    """A `cpu`-preset job, returned once its subprocess is training (or it has ended): the load to measure under."""
    job = client.post(
        f"/api/projects/{project_id}/train",
        json={"preset": "cpu", "stages": {"finetune": {"epochs": finetune_epochs}}},
    ).json()
    wait_job(
        client, job["id"], lambda j: j["state"] == "running" and j["progress"] > 0 or j["state"] in FINISHED_STATES
    )
    return job


def split_volumes(names: list[str], seed: int, n_val: int, n_test: int) -> dict[str, list[str]]:
    """Deterministic train / val / test split of `names` for `seed` (independent of the input order); every
    benchmark on the hippocampus volumes uses it, so their test volumes are the same."""
    names = sorted(names)
    if n_val + n_test >= len(names):
        raise ValueError(f"{len(names)} volumes cannot give {n_val} validation + {n_test} test + any train")
    perm = np.random.default_rng(seed).permutation(len(names))
    test = sorted(names[i] for i in perm[:n_test])
    val = sorted(names[i] for i in perm[n_test : n_test + n_val])
    train = sorted(names[i] for i in perm[n_test + n_val :])
    return {"train": train, "val": val, "test": test}
