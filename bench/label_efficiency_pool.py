"""The job pool of bench/label_efficiency.py: every job runs as `python -m bench.label_efficiency --run-job`
in its own process, up to `workers` at once, and a job that would not end before the deadline is not started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from bench.common import ROOT
from bench.label_efficiency_protocol import ROW_STAGES, Job, job_to_json


def worker_command(bench, job: Job) -> list[str]:
    """The command line that runs one job of this invocation in its own process."""
    a = bench.args
    cmd = [
        sys.executable,
        "-m",
        "bench.label_efficiency",
        "--run-job",
        job_to_json(job),
        "--data",
        str(bench.data),
        "--out",
        str(bench.out),
        "--split-seed",
        str(a.split_seed),
        "--n-val",
        str(a.n_val),
        "--n-test",
        str(a.n_test),
        "--axis",
        str(a.axis),
        "--device",
        a.device,
        "--workers",
        str(bench.workers),
    ]
    cmd += ["--full"] if bench.grid.name == "full" else ["--quick"] if bench.grid.name == "quick" else []
    if a.seeds:
        cmd += ["--seeds", str(a.seeds)]
    if bench.threads:
        cmd += ["--threads", str(bench.threads)]
    if bench.validate:
        cmd.append("--validate")
    if a.keep_models:
        cmd.append("--keep-models")
    for item in a.set:
        cmd += ["--set", item]
    return cmd


def run_jobs(bench, jobs: list[Job]) -> None:
    """Run the jobs not done yet, up to bench.workers at once, each in its own process, in priority order and
    within the grid's deadline; the results and the table are written after every job."""
    deadline = bench.grid.deadline_min * 60 if bench.grid.deadline_min else None
    hard = deadline + bench.args.grace_min * 60 if deadline else None
    done = bench.done_jobs()
    pending, running = [j for j in jobs if j.name not in done], {}
    globals_done, globals_lost = {j.seed for j in jobs if j.kind == "global" and j.name in done}, set()
    bench.write()
    while pending or running:
        for name, (job, proc, t0, est) in list(running.items()):
            if proc.poll() is None:
                if hard is not None and bench.elapsed() > hard:
                    os.killpg(proc.pid, signal.SIGTERM)  # our own worker's process group
                    proc.wait()
                    bench.failed.append(
                        f"{name} (killed at the {hard / 60:.0f} min hard limit after {time.monotonic() - t0:.0f} s)"
                    )
                    globals_lost.add(job.seed) if job.kind == "global" else None
                    del running[name]
                    bench.write()
                continue
            del running[name]
            record_path = bench.out / "runs" / name / "record.json"
            if proc.returncode == 0 and record_path.is_file():
                record = json.loads(record_path.read_text())
                record["estimated_s"] = round(est, 1)
                record["started_at_s"] = round(t0 - bench.start, 1)
                bench.results.append(record)
                bench.learn(record)
                if job.kind == "global":
                    globals_done.add(job.seed)
                dice = record.get("test_dice_mean")
                print(
                    f"[{bench.elapsed():6.0f}s] done {name} in {time.monotonic() - t0:.0f} s (estimated {est:.0f})"
                    + (f", test Dice {dice:.3f}" if dice is not None else ""),
                    flush=True,
                )
            else:
                bench.failed.append(f"{name} (exit {proc.returncode}; log runs/{name}.log)")
                print(f"[{bench.elapsed():6.0f}s] FAILED {name} (exit {proc.returncode})", flush=True)
                if job.kind == "global":
                    globals_lost.add(job.seed)
            bench.write()
        while len(running) < bench.workers:
            job = _next(bench, pending, globals_done, globals_lost)
            if job is None:
                break
            est = bench.estimate(job)
            if deadline is not None and bench.elapsed() + est > deadline:
                bench.skipped.append(
                    f"{job.name} (estimated {est:.0f} s, {max(0, deadline - bench.elapsed()):.0f} s left)"
                )
                print(f"[{bench.elapsed():6.0f}s] skip {job.name}: estimated {est:.0f} s", flush=True)
                if job.kind == "global":
                    globals_lost.add(job.seed)
                continue
            log = bench.out / "runs" / f"{job.name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as f:
                proc = subprocess.Popen(
                    worker_command(bench, job), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
                )
            running[job.name] = (job, proc, time.monotonic(), est)
            print(
                f"[{bench.elapsed():6.0f}s] start {job.name} (estimated {est:.0f} s, {len(pending)} pending)",
                flush=True,
            )
        if not running and pending:
            # nothing can start: every pending job waits for a global stage that will not come
            for job in pending:
                bench.skipped.append(f"{job.name} (its seed's global stage did not run)")
            pending.clear()
        time.sleep(1.0)
    bench.write()
    print(f"[{bench.elapsed():6.0f}s] finished; table in {bench.md_path}", flush=True)


def _next(bench, pending: list[Job], globals_done: set, globals_lost: set) -> Job | None:
    """First pending job that can start now; drops jobs whose global stage will never exist."""
    for job in list(pending):
        needs_global = job.kind == "row" and ROW_STAGES[job.row][0]
        if needs_global and job.seed in globals_lost:
            pending.remove(job)
            bench.skipped.append(f"{job.name} (its seed's global stage did not run)")
            continue
        if needs_global and job.seed not in globals_done:
            continue
        pending.remove(job)
        return job
    return None
