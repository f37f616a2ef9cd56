"""API latency on a big volume: slice PNG fetch, annotation save and prediction slice fetch, p50 / p95,
with the server idle and while a training job runs.

    python -m bench.api_latency [--requests 200] [--shape 512 512 200] [--out docs/benchmarks/api_latency.md]

Starts a real `slicewise serve` on a free loopback port with a temporary workspace, uploads a synthetic
512x512x200 int16 volume, paints two slices, trains a tiny model (quick preset, fine-tune only) so a
prediction exists, then times sequential requests from one client. "During training" runs a `cpu`
preset job on the same volume and measures while its subprocess trains. Target: p95 under 100 ms for
slice fetch and save on a 2-core machine, so painting never waits on the server.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import (
    ONE_LABEL,
    report_header,
    start_background_training,
    start_server,
    synthetic_volume,
    train_predicting_model,
)
from bench.common import ROOT as REPO

TARGET_MS = 100.0


def timed(client: httpx.Client, n: int, request) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        r = request(client, i)
        times.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:300]}")
    return times


def percentiles(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 200])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "api_latency.md")
    args = parser.parse_args()
    shape = tuple(args.shape)
    started = time.time()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="slicewise-bench-") as tmp:
        tmp = Path(tmp)
        truth = synthetic_volume(tmp / "big.nii.gz", shape)
        server, url = start_server(tmp / "ws", tmp / "server.log")
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                project = client.post("/api/projects", json={"name": "bench", "labels": ONE_LABEL}).json()
                with open(tmp / "big.nii.gz", "rb") as f:
                    volume = client.post(
                        f"/api/projects/{project['id']}/volumes", files={"file": ("big.nii.gz", f)}
                    ).json()
                vid = volume["id"]
                painted = [shape[2] // 3, 2 * shape[2] // 3]
                for k in painted:
                    client.put(
                        f"/api/volumes/{vid}/annotations/2/{k}",
                        content=np.ascontiguousarray(truth[:, :, k]).tobytes(),
                        headers={"Content-Type": "application/octet-stream"},
                    )
                t0 = time.monotonic()
                train_predicting_model(client, project["id"])
                setup_train_s = time.monotonic() - t0

                masks = [
                    np.ascontiguousarray((truth[:, :, k] * ((i % 2) + 0)).astype(np.uint8)).tobytes()
                    for i, k in enumerate([1, 2])
                ]
                rng = random.Random(0)
                ops = {
                    "slice PNG fetch (512x512)": lambda c, i: c.get(
                        f"/api/volumes/{vid}/slices/2/{rng.randrange(shape[2])}.png"
                    ),
                    "annotation save (512x512 raw)": lambda c, i: c.put(
                        f"/api/volumes/{vid}/annotations/2/{10 + i % 20}",
                        content=masks[i % 2],
                        headers={"Content-Type": "application/octet-stream"},
                    ),
                    "prediction slice fetch (512x512)": lambda c, i: c.get(
                        f"/api/volumes/{vid}/prediction/slices/2/{rng.randrange(shape[2])}.png"
                    ),
                }
                for op in ops.values():  # warm caches (window percentiles, memory maps)
                    timed(client, 3, op)
                idle = {name: percentiles(timed(client, args.requests, op)) for name, op in ops.items()}

                busy_job = start_background_training(client, project["id"], finetune_epochs=50)
                busy = {name: percentiles(timed(client, args.requests, op)) for name, op in ops.items()}
                still_running = client.get(f"/api/jobs/{busy_job['id']}").json()["state"] == "running"
                client.post(f"/api/jobs/{busy_job['id']}/cancel")
        finally:
            server.terminate()
            server.wait(timeout=30)
    load_after = os.getloadavg()[0]

    rows = []
    for name in idle:
        (i50, i95), (b50, b95) = idle[name], busy[name]
        rows.append(f"| {name} | {i50:.1f} | {i95:.1f} | {b50:.1f} | {b95:.1f} |")
    table = "\n".join(
        [
            "| request | idle p50 (ms) | idle p95 (ms) | training p50 (ms) | training p95 (ms) |",
            "|---|---:|---:|---:|---:|",
            *rows,
        ]
    )
    meets = all(idle[n][1] < TARGET_MS and busy[n][1] < TARGET_MS for n in list(idle)[:2])
    text = f"""# API latency on a {shape[0]}x{shape[1]}x{shape[2]} volume

{report_header(started)}
- load average (1 min) before / after: {load_before:.2f} / {load_after:.2f} (the machine may be shared)
- one client, sequential requests over loopback to a real `slicewise serve`; {args.requests} requests per row;
  slices along axis 2 (512x512), random indices; saves alternate between 20 slices (each save a new version).
- "training": a `cpu`-preset job training on the same volume in its subprocess during the measurement
  (still running at the end: {still_running}); set-up training of the predicting model took {setup_train_s:.0f} s.

{table}

Target: p95 under {TARGET_MS:.0f} ms for slice fetch and annotation save: **{"met" if meets else "not met"}**.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
