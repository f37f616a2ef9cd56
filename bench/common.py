"""What every benchmark records next to its numbers: the machine, the commit and the command."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


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


def wait_job(client, job_id: int, predicate, timeout: float = 1800) -> dict:
    """Poll GET /api/jobs/{id} until `predicate(job)`; exits the benchmark when it takes too long."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.5)
    raise SystemExit(f"job {job_id} timed out: {job}")


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
