"""Retrain throughput: the local runner against a Ray cluster of 1 and 2 worker nodes on this machine.

For each setup a real `slicewise serve` (--device cpu) gets N projects, each with one small synthetic
volume and 2 painted slices; first one retrain alone (the latency of one job: Ray's overhead against
local), then N retrains at once, one per project (throughput: jobs per minute from the first POST to
the last success). The Ray clusters are started here on loopback (tests/helpers_ray.py): a head with
no CPUs and worker nodes with `--cpus` CPUs each; a Ray job asks for that many CPUs.

    python -m bench.ray_throughput [--jobs 3] [--cpus 1] [--steps 20]

Writes docs/benchmarks/ray_throughput.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, command, commit, machine, torch_version, wait_job
from tests.helpers_ray import ray_cluster  # the tests' loopback cluster
from tests.helpers_retrain import LABELS, SHAPE, synthetic_nifti
from tests.helpers_server import running_server

OUT = ROOT / "docs" / "benchmarks" / "ray_throughput.md"
RAW = {"Content-Type": "application/octet-stream", "If-Match": '"0"'}


def painted_projects(client, folder: Path, count: int) -> list[int]:
    ids = []
    for n in range(count):
        project = client.post("/api/projects", json={"name": f"p{n}", "labels": LABELS}).json()
        path, label = synthetic_nifti(folder / f"p{n}.nii.gz", seed=n)
        volume = client.post(
            f"/api/projects/{project['id']}/volumes", files={"file": (path.name, path.read_bytes())}
        ).json()
        for index in (4, 7):
            r = client.put(
                f"/api/volumes/{volume['id']}/annotations/0/{index}", content=label[index].tobytes(), headers=RAW
            )
            r.raise_for_status()
        ids.append(project["id"])
    return ids


def timed_retrains(client, project_ids: list[int], train: dict) -> float:
    """Seconds from the first POST to the last job's success (every job must succeed)."""
    started = time.monotonic()
    jobs = [client.post(f"/api/projects/{p}/train", json=train).json() for p in project_ids]
    for job in jobs:
        done = wait_job(client, job["id"], lambda j: j["state"] in ("succeeded", "failed", "cancelled"))
        if done["state"] != "succeeded":
            raise SystemExit(f"job {job['id']} ended {done['state']}: {done.get('error')}")
    return time.monotonic() - started


def measure(name: str, jobs: int, train: dict, extra_args: list[str], env: dict | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="slicewise-bench-ray-") as tmp:
        with running_server(Path(tmp) / "ws", extra_args=["--device", "cpu", *extra_args], env=env) as server:
            with server.client(timeout=60) as client:
                ids = painted_projects(client, Path(tmp), jobs + 1)
                one = timed_retrains(client, ids[:1], train)
                many = timed_retrains(client, ids[1:], train)
    print(f"{name}: one job {one:.1f} s, {jobs} jobs {many:.1f} s", flush=True)
    return {"setup": name, "one_s": one, "many_s": many, "per_min": 60 * jobs / many}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3, help="retrains at once, one per project")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per Ray worker node (and per Ray job)")
    parser.add_argument("--steps", type=int, default=20, help="fine-tune steps per epoch (2 epochs)")
    args = parser.parse_args(argv)
    train = {
        "preset": "quick",
        "stages": {"global": False, "local": False, "finetune": {"epochs": 2, "steps": args.steps}},
    }
    load_before = os.getloadavg()
    started = time.time()
    rows = [measure("local runner", args.jobs, train, [], None)]
    for workers in (1, 2):
        with contextlib.ExitStack() as stack:
            cluster = stack.enter_context(ray_cluster(workers=workers, cpus=args.cpus))
            ray_args = ["--runner", "ray", "--ray-address", cluster.address]
            env = {**cluster.env, "SLICEWISE_RAY_CPUS_PER_JOB": str(args.cpus)}
            rows.append(measure(f"Ray, {workers} worker node(s) x {args.cpus} CPU", args.jobs, train, ray_args, env))
    write(rows, args, train, load_before, started)
    return 0


def write(rows: list[dict], args, train: dict, load_before, started: float) -> None:
    local = rows[0]
    lines = [
        "# Retrain throughput: local runner against Ray (1 and 2 worker nodes on one machine)",
        "",
        f"- commit: {commit()}",
        f"- machine: {machine()}, torch {torch_version()}, `slicewise serve --device cpu`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; elapsed {(time.time() - started) / 60:.1f} min",
        f"- load average (1/5/15 min) at start {' / '.join(f'{x:.2f}' for x in load_before)}, at end "
        f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- command: `{command()}`",
        f"- data: {args.jobs + 1} projects, each one synthetic {' x '.join(map(str, SHAPE))} "
        f"volume with 2 painted slices; retrain `{train}`",
        "- one job: a single retrain, POST to success (training, then predicting the volume in the server); "
        f"{args.jobs} jobs: one retrain per project posted together, first POST to last success. The local runner "
        "runs one job at a time with torch's default threads; a Ray job asks for and uses "
        f"{args.cpus} CPU(s) on a worker node (a head node without CPUs schedules nothing).",
        "",
        f"| setup | one job (s) | overhead vs local | {args.jobs} jobs (s) | jobs / min | throughput vs local |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['setup']} | {row['one_s']:.1f} | {row['one_s'] - local['one_s']:+.1f} s | {row['many_s']:.1f} | "
            f"{row['per_min']:.2f} | {row['per_min'] / local['per_min']:.2f}x |"
        )
    lines.append("")
    OUT.write_text("\n".join(lines))
    print(OUT.read_text())


if __name__ == "__main__":
    sys.exit(main())
