"""Retrain that keeps up with the clinician: seconds from pressing Retrain to masks, through the real app.

    python -m bench.retrain_timing            # cpu preset, 20 hippocampus volumes x 3 painted slices
    python -m bench.retrain_timing --quick    # quick preset, 3 volumes (smoke run, about a minute)
    python -m bench.retrain_timing --grid     # budgeted vs fixed schedule, 4 project sizes, AVX-512 as-is and
                                              # hidden, without the server (bench/retrain_grid.py)

Starts `slicewise serve --device cpu` on a temporary workspace (tests/helpers_server.py), creates a
project, uploads N train volumes of ../shared/data/hippocampus (the split of bench/label_efficiency.py:
`split_volumes(names, seed=0, n_val=20, n_test=40)`, the first N of its seed-0 labelling order) and
paints k slices of each from labelsTr over the API (`even_slices`: evenly spaced through the structure
along axis 0). Then, each time from the POST to the moment the job has succeeded (the worker makes the
new model active only after it wrote every volume's mask, which the script checks):

    a) POST train mode=full                   the whole pipeline (global stage trained)
    b) paint 1 more slice on 2 volumes, POST train (auto; must choose refresh)
    c) POST train mode=full                   the whole pipeline, the global stage reused

and the Dice cost of the refresh: mean 3D Dice (over the two classes) of the masks the app wrote for
the N volumes (downloaded as NIfTI) against labelsTr, and of the model on the 40 test volumes of the
split (model.inference.load_predictor on the model's folder), after b) against after c) (same paint).
Per-stage seconds come from the model's metrics (model.train's wall time per stage); "predict" is the
time the job spent writing masks. The table goes to docs/benchmarks/retrain_timing.md (--quick: to
bench/out/retrain_timing/quick.md) with the machine, commit, command, date and load averages.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, split_volumes
from bench.common import git as _git
from bench.common import machine as _machine
from bench.common import torch_version as _torch_version
from bench.label_efficiency_protocol import even_slices, labeled_order, volume_names

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hippocampus"
LABELS = [{"value": 1, "name": "anterior", "color": "#e6194b"}, {"value": 2, "name": "posterior", "color": "#3cb44b"}]
NUM_CLASSES = 3
AXIS = 0
TERMINAL = ("succeeded", "failed", "cancelled")
STAGE_NAMES = {"global": "global", "local": "local", "finetune": "fine-tune", "pseudo": "self-training"}
TARGETS = {"refresh": 60.0, "full": 600.0}  # seconds from Retrain to masks on the 2-core CPU
PHASES = (
    ("a", "full", "mode=full, first retrain"),
    ("b", "auto", "auto after 1 new slice on 2 volumes"),
    ("c", "full", "mode=full again, same paint as b"),
)


# --------------------------------------------------------------------------------------------
# pure functions (tests/test_bench_retrain_timing.py)
# --------------------------------------------------------------------------------------------
def choose_volumes(names: list[str], n: int) -> list[str]:
    """The first n train volumes of label_efficiency's split (seed 0) in its seed-0 labelling order."""
    train = split_volumes(names, seed=0, n_val=20, n_test=40)["train"]
    return labeled_order(train, seed=0)[:n]


def extra_slice(label: np.ndarray, axis: int, painted: list[int]) -> int:
    """One more slice to paint: the middle of the widest gap between painted slices inside the structure."""
    bounds = even_slices(label, axis, 1)  # the structure's middle, when nothing is painted
    picks = sorted(painted)
    if not picks:
        return bounds[0]
    gaps = [(b - a, (a + b) // 2) for a, b in zip(picks, picks[1:]) if b - a > 1]
    if not gaps:
        raise ValueError(f"no unpainted slice between {picks}")
    return max(gaps)[1]


def dice_3d(pred: np.ndarray, truth: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """Mean over the classes 1..K-1 of the 3D Dice (1 for a class absent from both)."""
    from model.train import dice_per_class

    return float(np.mean(dice_per_class(pred, truth, num_classes)))


def stage_seconds(metrics: dict) -> dict[str, float]:
    return {stage: float(m["wall_s"]) for stage, m in (metrics.get("stages") or {}).items()}


def _fmt(value, fmt="{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def render_markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# Retrain timing: from pressing Retrain to masks",
        "",
        f"- commit: {meta['commit']}{' + uncommitted changes' if meta['dirty'] else ''}",
        f"- machine: {meta['machine']}, torch {meta['torch']}, no GPU (`slicewise serve --device cpu`)",
        f"- date: {meta['started_utc']}; elapsed {meta['elapsed_s'] / 60:.1f} min",
        f"- load average (1/5/15 min) at start {meta['load_start']}, at end {meta['load_end']}"
        + (f"; {meta['busy_note']}" if meta.get("busy_note") else ""),
        f"- command: `{meta['command']}`",
        f"- data: {meta['n_volumes']} train volumes of `../shared/data/hippocampus` (split of "
        "`bench/label_efficiency.py`: seed 0, 20 validation, 40 test; the first volumes of its seed-0 labelling "
        f"order), {meta['slices']} slices each painted from labelsTr along axis {AXIS} (`even_slices`), preset "
        f"`{meta['preset']}`; for b) one more slice on 2 volumes. Test Dice: the model on the {meta['n_test']} test "
        "volumes of the split.",
        "- time = from the POST to the job's success, polled every 0.2 s; a job succeeds after the new model has "
        "written the masks of every volume of the project and become active. Stage seconds: model.train's wall "
        "time per stage (metrics.json); predict: the job's mask-writing phase; the rest of the time is the "
        "training process starting, reading the volumes and exporting the painted label volumes.",
        "",
    ]
    names = [s for s in STAGE_NAMES if any(s in r["stages"] for r in rows)]
    names += sorted({s for r in rows for s in r["stages"]} - set(names))  # a stage this script does not know yet
    lines += [
        "| phase | request | mode chosen | global stage | Retrain → masks (s) | "
        + " | ".join(f"{STAGE_NAMES.get(s, s)} (s)" for s in names)
        + " | predict (s) | other (s) | Dice, painted volumes | Dice, test volumes | target |",
        "|---|---|---|---|---:|" + "---:|" * len(names) + "---:|---:|---:|---:|---|",
    ]
    for r in rows:
        stages = r["stages"]
        other = r["seconds"] - sum(stages.values()) - (r["predict_s"] or 0.0)
        target = TARGETS.get(r["mode"])
        verdict = "–" if target is None else f"< {target:.0f} s: {'met' if r['seconds'] < target else '**missed**'}"
        lines.append(
            f"| {r['phase']} | {r['request']} | {r['mode']} | {r['global_stage'] or '–'} | {r['seconds']:.1f} | "
            + "".join(f"{_fmt(stages.get(s))} | " for s in names)
            + f"{_fmt(r['predict_s'])} | {other:.1f} | {_fmt(r['dice_train'], '{:.3f}')} | "
            f"{_fmt(r['dice_test'], '{:.3f}')} | {verdict} |"
        )
    by = {r["phase"]: r for r in rows}
    if "b" in by and "c" in by and by["b"]["dice_test"] is not None and by["c"]["dice_test"] is not None:
        lines += [
            "",
            f"Dice cost of the refresh (b) against a full retrain on the same paint (c): "
            f"{by['b']['dice_train'] - by['c']['dice_train']:+.3f} on the painted volumes, "
            f"{by['b']['dice_test'] - by['c']['dice_test']:+.3f} on the test volumes; the refresh took "
            f"{by['b']['seconds']:.0f} s against {by['c']['seconds']:.0f} s.",
        ]
    lines += ["", "Why each mode was chosen (the job's `mode_reason`):", ""]
    lines += [f"- {r['phase']}: {r['mode_reason']}" for r in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def _read(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def read_image(path: Path) -> tuple[np.ndarray, tuple]:
    """(voxels, mm per voxel axis): predictions smooth along the slicing axis by the spacing, as the app's do."""
    from data.io import read_volume

    volume = read_volume(str(path))
    return np.asarray(volume.array), tuple(volume.spacing)


def _busy() -> str:
    out = subprocess.run(["pgrep", "-f", "bench[./]label_efficiency"], capture_output=True, text=True).stdout.split()
    return f"bench/label_efficiency.py was running ({len(out)} processes)" if out else ""


class Run:
    def __init__(self, args):
        self.args = args
        self.data = Path(args.data)
        self.names = choose_volumes(volume_names(self.data), args.volumes)
        self.test_names = split_volumes(volume_names(self.data), seed=0, n_val=20, n_test=40)["test"][
            : args.test_volumes
        ]
        self.truth = {n: _read(self.data / "labelsTr" / n).astype(np.uint8) for n in self.names}
        self.painted: dict[str, list[int]] = {}
        self.volume_ids: dict[str, int] = {}
        self._test = None

    def setup(self, client) -> int:
        r = client.post("/api/projects", json={"name": "retrain-timing", "labels": LABELS})
        r.raise_for_status()
        project = r.json()["id"]
        for name in self.names:
            path = self.data / "imagesTr" / name
            r = client.post(f"/api/projects/{project}/volumes", files={"file": (name, path.read_bytes())})
            r.raise_for_status()
            self.volume_ids[name] = r.json()["id"]
            self.painted[name] = []
            for index in even_slices(self.truth[name], AXIS, self.args.slices):
                self.paint(client, name, index)
        return project

    def paint(self, client, name: str, index: int) -> None:
        mask = np.ascontiguousarray(np.take(self.truth[name], index, AXIS))
        r = client.put(
            f"/api/volumes/{self.volume_ids[name]}/annotations/{AXIS}/{index}",
            content=mask.tobytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        r.raise_for_status()
        self.painted[name].append(index)

    def retrain(self, client, project: int, body: dict) -> dict:
        """POST train, poll until the job ends -> the job JSON with seconds and the predict phase's seconds."""
        t0 = time.monotonic()
        r = client.post(f"/api/projects/{project}/train", json=body)
        r.raise_for_status()
        job_id, predict_from = r.json()["id"], None
        while True:
            job = client.get(f"/api/jobs/{job_id}").json()
            now = time.monotonic()
            if job["stage"] == "predict" and predict_from is None:
                predict_from = now
            if job["state"] in TERMINAL:
                break
            time.sleep(0.2)
        if job["state"] != "succeeded":
            raise RuntimeError(f"job {job_id} {job['state']}: {job.get('error') or job.get('message')}")
        return {**job, "seconds": now - t0, "predict_s": None if predict_from is None else now - predict_from}

    def masks_dice(self, client, model_id: int) -> float:
        """Mean 3D Dice of the masks the app wrote (downloaded), checking each is the new model's."""
        import nibabel as nib

        scores = []
        for name, vid in self.volume_ids.items():
            status = client.get(f"/api/volumes/{vid}/prediction").json()
            if status.get("status") != "ready" or status.get("model_id") != model_id:
                raise RuntimeError(f"volume {vid} has no mask of model {model_id}: {status}")
            r = client.get(f"/api/volumes/{vid}/prediction.nii.gz")
            r.raise_for_status()
            mask = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(r.content)).dataobj)
            scores.append(dice_3d(mask, self.truth[name]))
        return float(np.mean(scores))

    def test_dice(self, model_dir: Path) -> float | None:
        if not self.test_names:
            return None
        from model.inference import load_predictor

        if self._test is None:
            self._test = [
                (read_image(self.data / "imagesTr" / n), _read(self.data / "labelsTr" / n)) for n in self.test_names
            ]
        predictor = load_predictor(model_dir, "cpu")
        return float(np.mean([dice_3d(predictor.predict(*image)[0], truth) for image, truth in self._test]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="quick preset, 3 volumes, 5 test volumes (smoke run)")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--volumes", type=int, help="train volumes uploaded (default 20; --quick 3)")
    parser.add_argument("--slices", type=int, default=3, help="painted slices per volume")
    parser.add_argument(
        "--test-volumes", type=int, help="test volumes for the test Dice (default 40; --quick 5; 0 = none)"
    )
    parser.add_argument("--preset", help="default cpu; --quick: quick")
    parser.add_argument("--md", help="markdown output (default docs/benchmarks/retrain_timing.md; --quick: bench/out)")
    parser.add_argument("--grid", action="store_true", help="bench/retrain_grid.py: schedules x project sizes x ISA")
    parser.add_argument("--projects", nargs="+", default=["quick", "hippocampus", "mr", "ct"])
    parser.add_argument("--isa", nargs="+", default=["as-is", "AVX-512 hidden"], choices=["as-is", "AVX-512 hidden"])
    parser.add_argument("--schedules", nargs="+", default=["budget", "fixed"], choices=["budget", "fixed"])
    parser.add_argument("--fixed-cap", type=float, default=90.0, help="--grid: seconds before a fixed run is stopped")
    parser.add_argument("--ct-volumes", type=int, default=20, help="--grid: volumes of the 512 x 512 x 200 project")
    args = parser.parse_args(argv)
    if args.grid:
        return grid_main(args, argv)
    args.volumes = args.volumes or (3 if args.quick else 20)
    args.test_volumes = (5 if args.quick else 40) if args.test_volumes is None else args.test_volumes
    args.preset = args.preset or ("quick" if args.quick else "cpu")
    md = (
        Path(args.md)
        if args.md
        else (
            ROOT / "bench" / "out" / "retrain_timing" / "quick.md"
            if args.quick
            else ROOT / "docs" / "benchmarks" / "retrain_timing.md"
        )
    )
    from tests.helpers_server import running_server  # how the tests start a real server

    started, t_start = _dt.datetime.now(_dt.UTC), time.monotonic()
    load_start, busy_start = os.getloadavg(), _busy()
    run = Run(args)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="retrain-timing-") as tmp,
        running_server(Path(tmp) / "ws", extra_args=["--device", "cpu"]) as server,
        server.client(timeout=120) as client,
    ):
        from data.store import Workspace

        workspace = Workspace(server.workspace)  # read-only use: the model folders, for the test Dice
        project = run.setup(client)
        print(f"{len(run.names)} volumes uploaded, {sum(map(len, run.painted.values()))} slices painted", flush=True)
        for phase, mode, request in PHASES:
            if phase == "b":
                for name in run.names[:2]:
                    run.paint(client, name, extra_slice(run.truth[name], AXIS, run.painted[name]))
            body = {"preset": args.preset} | ({} if mode == "auto" else {"mode": mode})
            job = run.retrain(client, project, body)
            model = client.get(f"/api/models/{job['model_id']}").json()
            active = [m["id"] for m in client.get(f"/api/projects/{project}/models").json() if m["active"]]
            if active != [job["model_id"]]:
                raise RuntimeError(f"job {job['id']} succeeded but model {job['model_id']} is not the active one")
            if phase == "b" and job["mode"] != "refresh":
                raise RuntimeError(f"auto chose {job['mode']} after 2 new slices: {job['mode_reason']}")
            if phase == "c" and job["global_stage"] != "reused":
                raise RuntimeError(f"the second full retrain did not reuse the global stage: {job['global_stage']}")
            row = {
                "phase": phase,
                "request": request,
                "mode": job["mode"],
                "mode_reason": job["mode_reason"],
                "global_stage": job["global_stage"],
                "seconds": job["seconds"],
                "predict_s": job["predict_s"],
                "stages": stage_seconds(model["metrics"]),
                "job_id": job["id"],
                "model_id": job["model_id"],
            }
            row["dice_train"] = run.masks_dice(client, job["model_id"])
            row["dice_test"] = run.test_dice(Path(workspace.get_model(job["model_id"])["path"]))
            rows.append(row)
            print(
                f"{phase}) {request}: {job['mode']} in {job['seconds']:.1f} s (stages {row['stages']}, predict "
                f"{_fmt(job['predict_s'])} s); Dice {row['dice_train']:.3f} painted volumes, "
                f"{_fmt(row['dice_test'], '{:.3f}')} test",
                flush=True,
            )
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain"))
    busy_end = _busy()
    meta = {
        "commit": commit,
        "dirty": dirty,
        "machine": _machine(),
        "torch": _torch_version(),
        "started_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": time.monotonic() - t_start,
        "load_start": " / ".join(f"{x:.2f}" for x in load_start),
        "load_end": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "busy_note": "; ".join(
            x for x in (busy_start and f"at start {busy_start}", busy_end and f"at end {busy_end}") if x
        ),
        "command": " ".join(["python", "-m", "bench.retrain_timing", *(argv if argv is not None else sys.argv[1:])]),
        "n_volumes": len(run.names),
        "slices": args.slices,
        "preset": args.preset,
        "n_test": len(run.test_names),
    }
    text = render_markdown(meta, rows)
    md.parent.mkdir(parents=True, exist_ok=True)
    notes = ""
    if md.exists() and NOTES_MARKER in md.read_text():
        notes = md.read_text().split(NOTES_MARKER, 1)[1]
    md.write_text(text + "\n" + NOTES_MARKER + notes)
    (md.with_suffix(".json")).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(text)
    return 0


NOTES_MARKER = "<!-- notes: written by hand, kept when the script rewrites the table above -->"


def grid_main(args, argv) -> int:
    import platform

    from bench.retrain_grid import render_grid, run_grid

    args.test_volumes = 10 if args.test_volumes is None else args.test_volumes
    md = Path(args.md) if args.md else ROOT / "docs" / "benchmarks" / "retrain_budget.md"
    started, t_start, load_start = _dt.datetime.now(_dt.UTC), time.monotonic(), os.getloadavg()
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.lower().startswith("model name")
        ),
        platform.processor(),
    )
    with tempfile.TemporaryDirectory(prefix="retrain-grid-") as tmp:
        rows = run_grid(args, Path(tmp))
    meta = {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain")),
        "machine": _machine(),
        "cpu_model": cpu_model,
        "torch": _torch_version(),
        "started_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": time.monotonic() - t_start,
        "load_start": " / ".join(f"{x:.2f}" for x in load_start),
        "load_end": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "command": " ".join(["python", "bench/retrain_timing.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    text = render_grid(meta, rows)
    notes = md.read_text().split(NOTES_MARKER, 1)[1] if md.exists() and NOTES_MARKER in md.read_text() else ""
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text + "\n" + NOTES_MARKER + notes)
    md.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
