"""A real Ray cluster on loopback for the Ray runner tests: a head without CPUs (it schedules nothing) and
worker nodes that each offer `cpus` CPUs. Worker nodes can be started blind to a folder (the tests'
temporary root, where every workspace lives): they run in their own mount namespace with an empty
tmpfs over it, so a job that trains there cannot have read the server's workspace.

    with ray_cluster(workers=2, blind_to=tmp_root) as cluster:
        running_server(..., extra_args=["--runner", "ray", "--ray-address", cluster.address])
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers_server import free_port

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class RayCluster:
    address: str
    temp_dir: Path
    env: dict

    def python(self, code: str, timeout: float = 120) -> str:
        """Run `code` in a fresh driver connected to the cluster -> its stdout (for what tests ask Ray)."""
        done = subprocess.run(
            [sys.executable, "-c", f"import ray\nray.init(address={self.address!r}, log_to_driver=False)\n{code}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout


def ray_env() -> dict:
    return {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    }


def _run(command: list[str], env: dict) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )


@contextlib.contextmanager
def ray_cluster(workers: int = 2, cpus: int = 1, blind_to: Path | None = None) -> Iterator[RayCluster]:
    temp_dir = Path(tempfile.mkdtemp(prefix="swray-", dir="/tmp"))  # short: Ray's socket paths must fit
    env = ray_env()
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    try:
        _run(
            [
                RAY,
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=0",
                "--num-gpus=0",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
                *common,
            ],
            env,
        )
        for _ in range(workers):
            node = [RAY, "start", f"--address={address}", f"--num-cpus={cpus}", "--num-gpus=0", *common]
            if blind_to is not None:  # an empty tmpfs over the folder, seen only by this node's processes
                script = f'mount -t tmpfs tmpfs "{blind_to}" && exec "$@"'
                node = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *node]
            _run(node, env)
        cluster = RayCluster(address, temp_dir, env)
        _wait_nodes(cluster, workers + 1)
        yield cluster
    finally:
        stop_processes(cluster_pids(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def cluster_pids(temp_dir: Path) -> set[int]:
    """This cluster's processes (not another one's on the machine): those started with its temp dir in
    their command line (GCS, raylets, agents), and everything below them (workers rename themselves)."""
    parents, roots = {}, set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if str(temp_dir) in cmdline:
            roots.add(int(entry.name))
    found, grew = set(roots), True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in found} - found
        found |= below
        grew = bool(below)
    found.discard(os.getpid())
    return found


def stop_processes(pids: set[int], grace_s: float = 5) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() and not zombie(pid) for pid in pids):
            time.sleep(0.1)


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _wait_nodes(cluster: RayCluster, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = cluster.python("print(sum(1 for n in ray.nodes() if n['Alive']))").strip()
        if int(alive) >= count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray cluster at {cluster.address} did not have {count} nodes within {timeout} s")
