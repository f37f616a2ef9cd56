"""Load: N simulated annotators (1, 8, 32) against one real `slicewise serve` while a training job runs.

    python -m bench.load [--annotators 1 8 32] [--seconds 30] [--max-actions 60] [--think 0.5]
                         [--out docs/benchmarks/load.md]

Loopback only, bounded in time and count: a temporary workspace with the hippocampus volume
(../shared/data, if present) and a synthetic 256x256x100 volume; a quick model is trained first so
predictions exist, then a `cpu`-preset training job runs in its subprocess for the whole measurement.
Each annotator is a thread with its own HTTP connection that repeats one action - browse a slice (PNG),
save its own slice (If-Match: the version it last saw; distinct slices per annotator), fetch the
prediction of a slice - with a think time drawn uniformly from [0.5, 1.5] x --think seconds between actions
(a person paints, scrolls and looks; --think 0 is a closed loop), until --seconds or --max-actions.
Every answer that is not 2xx, and every transport error, counts as an error.
Target: 32 annotators, zero errors, p95 under 250 ms on a 2-core machine (a lab's annotators at once).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np

from bench.common import (
    ONE_LABEL,
    SHARED_DATA,
    report_header,
    start_background_training,
    start_server,
    synthetic_volume,
    train_predicting_model,
)
from bench.common import ROOT as REPO

HIPPO = SHARED_DATA / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
SHAPE = (256, 256, 100)
TARGET_P95_MS = 250.0
RAW = {"Content-Type": "application/octet-stream"}


class Annotator(threading.Thread):
    def __init__(
        self, n: int, url: str, volumes: list[dict], masks: dict, deadline: float, max_actions: int, think: float
    ):
        super().__init__(daemon=True)
        self.n, self.url, self.volumes, self.masks = n, url, volumes, masks
        self.deadline, self.max_actions, self.think = deadline, max_actions, think
        self.times: dict[str, list[float]] = {"slice": [], "save": [], "prediction": []}
        self.errors: list[str] = []
        self.transport_errors = 0
        self.rng = random.Random(n)

    def timed(self, kind: str, send, expected=(200,)) -> httpx.Response | None:
        t0 = time.perf_counter()
        try:
            r = send()
        except httpx.HTTPError as exc:
            self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            self.transport_errors += 1
            return None
        self.times[kind].append((time.perf_counter() - t0) * 1000)
        if r.status_code not in expected:
            self.errors.append(f"{kind}: {r.status_code} {r.text[:200]}")
        return r

    def run(self) -> None:
        versions: dict[int, int] = {}
        with httpx.Client(base_url=self.url, timeout=30) as c:
            for action in range(self.max_actions):
                if time.monotonic() > self.deadline:
                    return
                volume = self.volumes[self.rng.randrange(len(self.volumes))]
                vid, shape = volume["id"], volume["shape"]
                kind = ("slice", "save", "prediction")[action % 3]
                if kind == "slice":
                    index = self.rng.randrange(shape[2])
                    self.timed(kind, lambda: c.get(f"/api/volumes/{vid}/slices/2/{index}.png"))
                elif kind == "save":
                    index = (10 + self.n) % shape[2]  # this annotator's own slice: no one else saves it
                    body = self.masks[vid][action % 2]
                    if vid not in versions:  # as the viewer does: load the slice's annotation and its version first
                        r = self.timed(
                            "save", lambda: c.get(f"/api/volumes/{vid}/annotations/2/{index}"), expected=(200, 404)
                        )
                        if r is None:
                            continue
                        versions[vid] = int(r.headers["X-Annotation-Version"]) if r.status_code == 200 else 0
                    r = self.timed(
                        kind,
                        lambda: c.put(
                            f"/api/volumes/{vid}/annotations/2/{index}",
                            content=body,
                            headers={**RAW, "If-Match": f'"{versions.get(vid, 0)}"'},
                        ),
                    )
                    if r is not None and r.status_code == 200:
                        versions[vid] = r.json()["version"]
                else:
                    index = self.rng.randrange(shape[2])
                    self.timed(kind, lambda: c.get(f"/api/volumes/{vid}/prediction/slices/2/{index}.png"))
                if self.think > 0:
                    time.sleep(self.think * self.rng.uniform(0.5, 1.5))


def measure(url: str, n: int, volumes, masks, seconds: float, max_actions: int, think: float) -> dict:
    deadline = time.monotonic() + seconds
    started = time.perf_counter()
    annotators = [Annotator(i, url, volumes, masks, deadline, max_actions, think) for i in range(n)]
    for a in annotators:
        a.start()
    for a in annotators:
        a.join(seconds + 60)
    wall = time.perf_counter() - started
    times = [t for a in annotators for ts in a.times.values() for t in ts]
    by_kind = {k: [t for a in annotators for t in a.times[k]] for k in ("slice", "save", "prediction")}
    errors = [e for a in annotators for e in a.errors]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")
    return {
        "n": n,
        "requests": len(times) + sum(a.transport_errors for a in annotators),
        "rps": len(times) / wall,
        "p50": pct(times, 50),
        "p95": pct(times, 95),
        "p99": pct(times, 99),
        "max": max(times, default=float("nan")),
        "errors": errors,
        "wall": wall,
        "p95_by_kind": {k: pct(v, 95) for k, v in by_kind.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=30.0, help="per N (bound in time)")
    parser.add_argument("--max-actions", type=int, default=60, help="per annotator (bound in count)")
    parser.add_argument("--think", type=float, default=0.5, help="mean seconds between one annotator's actions")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "load.md")
    args = parser.parse_args()
    started = time.time()
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="slicewise-load-") as tmp:
        tmp = Path(tmp)
        truth = synthetic_volume(tmp / "synthetic.nii.gz", SHAPE)
        server, url = start_server(tmp / "ws", tmp / "server.log")
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                project = client.post("/api/projects", json={"name": "load", "labels": ONE_LABEL}).json()
                uploads = [tmp / "synthetic.nii.gz"] + ([HIPPO] if HIPPO.exists() else [])
                volumes, masks = [], {}
                for path in uploads:
                    with open(path, "rb") as f:
                        r = client.post(f"/api/projects/{project['id']}/volumes", files={"file": (path.name, f)})
                    r.raise_for_status()
                    volume = r.json()
                    volumes.append(volume)
                    rows, cols = volume["shape"][0], volume["shape"][1]
                    if path == HIPPO:
                        label = np.asarray(nib.load(path).dataobj) > np.percentile(nib.load(path).dataobj, 80)
                        painted = label.astype(np.uint8)
                    else:
                        painted = truth
                    masks[volume["id"]] = [
                        np.zeros((rows, cols), np.uint8).tobytes(),
                        np.ascontiguousarray(painted[:, :, 1]).tobytes(),
                    ]
                    for k in (volume["shape"][2] // 3, 2 * volume["shape"][2] // 3):
                        client.put(
                            f"/api/volumes/{volume['id']}/annotations/2/{k}",
                            content=np.ascontiguousarray(painted[:, :, k]).tobytes(),
                            headers=RAW,
                        ).raise_for_status()
                train_predicting_model(client, project["id"])
                busy = start_background_training(client, project["id"], finetune_epochs=200)
                for n in args.annotators:
                    result = measure(url, n, volumes, masks, args.seconds, args.max_actions, args.think)
                    result["training"] = client.get(f"/api/jobs/{busy['id']}").json()["state"] == "running"
                    results.append(result)
                    print(
                        f"N={n}: {result['rps']:.1f} req/s, p50 {result['p50']:.0f} ms, p95 {result['p95']:.0f} ms, "
                        f"p99 {result['p99']:.0f} ms, errors {len(result['errors'])} (training: {result['training']})",
                        flush=True,
                    )
                client.post(f"/api/jobs/{busy['id']}/cancel")
        finally:
            server.terminate()
            server.wait(timeout=60)
    load_after = os.getloadavg()

    rows = [
        f"| {r['n']} | {r['requests']} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | "
        f"{r['max']:.0f} | {r['p95_by_kind']['slice']:.0f} / {r['p95_by_kind']['save']:.0f} / "
        f"{r['p95_by_kind']['prediction']:.0f} | {len(r['errors'])} | {'yes' if r['training'] else 'no'} |"
        for r in results
    ]
    top = results[-1]
    met = top["n"] >= 32 and not top["errors"] and top["p95"] < TARGET_P95_MS
    first_errors = [e for r in results for e in r["errors"]][:5]
    text = f"""# Load: simulated annotators while a training job runs

{report_header(started)}
- load average (1/5/15 min) before: {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f};
  after: {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} (the machine is shared with other work)
- one real `slicewise serve` (uvicorn, default settings) over loopback; volumes: synthetic 256x256x100 int16
  {"and hippocampus_001 (35x51x35)" if HIPPO.exists() else "(hippocampus data absent)"}; a `cpu`-preset training job
  runs in its subprocess during every row ("training").
- each annotator: its own connection, repeating slice PNG (axis 2, random index) -> save its own slice
  (raw uint8, If-Match of the version it last saw; its first save of a slice is preceded by a GET
  of that slice's annotation, counted with the saves) -> prediction slice PNG, with a think time of
  {args.think:.2f} s x U[0.5, 1.5] between actions; at most {args.max_actions} actions or {args.seconds:.0f} s per row.
- latency is per request, measured by the client; an error is any non-2xx answer or transport error.

| annotators | requests | req/s | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) | p95 slice / save / prediction (ms) | errors | training |
|---:|---:|---:|---:|---:|---:|---:|---|---:|---|
{chr(10).join(rows)}

Target: {TARGET_P95_MS:.0f} ms p95 with 32 annotators and zero errors: **{"met" if met else "not met"}**.
{"" if not first_errors else chr(10) + "First errors: " + "; ".join(first_errors)}
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
