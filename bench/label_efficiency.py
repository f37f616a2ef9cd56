"""Label efficiency of slicewise on the MSD hippocampus: Dice on held-out volumes against painted pixels.

    python -m bench.label_efficiency                 # cpu preset, the grid sized for the 2-core CPU
    python -m bench.label_efficiency --full          # paper preset, the whole grid (meant for a GPU)
    python -m bench.label_efficiency --quick         # quick preset, 1 seed, 2 budgets (smoke run, minutes)
    python -m bench.label_efficiency --plan          # print the jobs and their estimated times, run nothing

Split. The 201 labelled volumes of ../shared/data/hippocampus are split once, with a recorded seed
(`--split-seed`), into train / validation / test (141 / 20 / 40). Test volumes are read only by the
evaluation: no stage of any run, contrastive ones included, ever sees them.

Protocols (docs/method.md, section 3), all on the train volumes:
- paper: a fraction f of the train volumes fully labelled (5 / 10 / 20 % -> 7 / 14 / 28 volumes);
- sparse: N volumes x k painted slices, the k slices evenly spaced through the extent of the
  structure along the training axis (the centres of k equal bins between its first and last
  slice); every other voxel of those volumes is 255 (not annotated).
In both, every other train volume is given as unlabeled. Which volumes get labels depends on the
training seed (a seeded permutation of the train volumes; budgets of one seed are nested).

Rows, all with the preset's fine-tune schedule on the same painted pixels:
- supervised: fine-tune stage only (the nnU-Net "ignore label" baseline);
- +global:    fine-tune, starting from the global (SimCLR) encoder;
- +local:     local contrastive stage, then fine-tune (no global stage);
- full:       global encoder, local stage, fine-tune (the product's pipeline).
The global stage uses no labels, so it runs once per seed on every train slice and every row
that needs it starts from its global.pt via `init_from`, as the product does across retrains.
Local-loss modes (stride / block / exact) are compared at one budget with an equal (shortened)
local schedule, because `exact` costs 10-30x a `stride` step on a CPU.

Regularisation branch: rows `ft+cpc` (supervised + the CPC branch of model/regularizer.py during
fine-tune) and `full+cpc` (the full pipeline + the branch) run last in the default order.

Options for a partial or added run: `--budgets sparse-10x3,paper-5pct` and `--rows supervised,full+cpc`
choose jobs (the global stages those rows need come along); `--set finetune_epochs=32` overrides a preset
value for every run; `--append` keeps the runs already in <out>/results.json and runs only the missing
jobs (a global stage counts as done while its global.pt is still there), so seeds or rows can be added to a
table without redoing it.

The default grid is ordered by priority (supervised and full for every budget and seed first) and
stops starting jobs that would not end before `--deadline-min`; the markdown table lists what ran
and what was left out. The table is rewritten after every job, and the raw per-volume Dice of every
run goes to bench/out/label_efficiency/<grid>/results.json.

Modules: the split, painted slices, grid and job order in bench/label_efficiency_protocol.py, the test Dice
in bench/label_efficiency_eval.py, the worker processes in bench/label_efficiency_pool.py, the table in
bench/label_efficiency_report.py; this one holds an invocation (`Bench`) and the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, SHARED_DATA, command, git, machine, split_volumes, torch_version
from bench.label_efficiency_eval import evaluate
from bench.label_efficiency_pool import run_jobs
from bench.label_efficiency_protocol import (
    ALL_ROWS,
    EXTRA_BUDGETS,
    NUM_CLASSES,
    ROW_BRANCH,
    ROW_PSEUDO,
    ROW_STAGES,
    Budget,
    Grid,
    Job,
    across_slice,
    end_slices,
    even_slices,
    job_from_json,
    labeled_order,
    make_grid,
    paper_count,
    parse_seeds,
    plan_jobs,
    select_jobs,
    sparse_label,
    volume_names,
)
from bench.label_efficiency_report import render_markdown, write_markdown
from data.volume import IGNORE
from model.config import DEVICES

DEFAULT_DATA = SHARED_DATA / "hippocampus"
OUT_ROOT = ROOT / "bench" / "out" / "label_efficiency"

# Seconds per step before any run measured them: the cpu preset on the shared 2-core machine under load
# (measured 2026-11-25 with load average 3-6). The estimates only decide what still fits the deadline.
PRIOR_RATE = {"global": 0.6, "local:stride": 2.0, "local:block": 10.0, "local:exact": 10.0, "finetune": 0.6}
PRIOR_OVERHEAD_S = 15.0
# A guess for the paper preset on one H100 shared by several workers, replaced by measured rates after the
# first jobs; without it the CPU numbers above would make the deadline drop every paper-preset job.
PRIOR_RATE_CUDA = {"global": 0.04, "local:stride": 0.04, "local:block": 0.06, "local:exact": 0.1, "finetune": 0.03}
PRIOR_OVERHEAD_CUDA_S = 60.0  # process start, data loading, torch.compile


class Bench:
    """One invocation: the split, each job's labels and config, one job's run (in its worker process), the time
    estimates the deadline goes by, and results.json with the table."""

    def __init__(self, args, grid: Grid):
        from data.io import read_volume

        self.args, self.grid = args, grid
        self.data = Path(args.data).resolve()
        self.out = Path(args.out).resolve() if args.out else OUT_ROOT / grid.name
        self.out.mkdir(parents=True, exist_ok=True)
        names = volume_names(self.data)
        self.split = split_volumes(names, args.split_seed, args.n_val, args.n_test)
        self.image = lambda n: str(self.data / "imagesTr" / n)
        self.label = lambda n: str(self.data / "labelsTr" / n)
        self.read_volume = read_volume
        self._test = None
        self.results_path = self.out / "results.json"
        self.results: list[dict] = []
        self.skipped: list[str] = []
        self.rates: dict[str, list[float]] = {}
        self.overheads: list[float] = []
        self.failed: list[str] = []
        self.workers = args.workers or (2 if grid.name == "cpu" else 1)
        self.threads = args.threads or (1 if self.workers > 1 else None)
        self.validate = args.validate or grid.name == "full"
        self.on_cuda = args.device == "cuda" or (args.device == "auto" and _cuda_available())
        self.commit_at_start = git("rev-parse", "--short", "HEAD")
        self.history: list[dict] = []  # earlier invocations whose runs --append kept
        if getattr(args, "append", False) and self.results_path.is_file() and not args.run_job:
            old = json.loads(self.results_path.read_text())
            self.results = old["runs"]
            self.skipped, self.failed = [], []  # recomputed for what this invocation leaves out
            m = old["meta"]
            self.history = m.get("history", []) + [
                {k: m[k] for k in ("command", "commit", "started_utc", "elapsed_s", "machine")}
            ]
            for extra in args.merge:  # runs of the same split made elsewhere (another --out)
                known = {r["job"] for r in self.results}
                self.results += [r for r in json.loads(Path(extra).read_text())["runs"] if r["job"] not in known]
            for record in self.results:  # per-step rates for the deadline's estimates
                self.learn(record)
        self.start = time.monotonic()
        self.started_at = _dt.datetime.now(_dt.UTC)
        self.load_start = os.getloadavg()
        self.md_path = (
            Path(args.md)
            if args.md
            else (
                ROOT
                / "docs"
                / "benchmarks"
                / ("label_efficiency.md" if grid.name == "cpu" else f"label_efficiency_{grid.name}.md")
                if grid.name != "quick"
                else self.out / "label_efficiency_quick.md"
            )
        )

    # ---- labels for a budget ------------------------------------------------------------------
    def labels_for(self, seed: int, budget: Budget) -> tuple[list[str], list[str], list[str], dict]:
        """(labelled image paths, their label paths, unlabeled image paths, what was painted)."""
        order = labeled_order(self.split["train"], seed)
        if budget.protocol == "paper":
            n = paper_count(budget.fraction, len(order))
            chosen = order[:n]
            painted = {name: "all" for name in chosen}
            label_paths = [self.label(name) for name in chosen]
        else:
            chosen = order[: budget.volumes]
            folder = self.out / "labels" / f"seed{seed}" / budget.key
            folder.mkdir(parents=True, exist_ok=True)
            painted, label_paths = {}, []
            for name in chosen:
                truth_vol = self.read_volume(self.label(name))
                truth = np.asarray(truth_vol.array)
                idx = even_slices(truth, self.args.axis, budget.slices)
                if budget.ends:
                    idx = sorted(idx + end_slices(truth, self.args.axis))
                path = folder / name
                sparse = sparse_label(truth, self.args.axis, idx)
                if budget.across:
                    other, index = across_slice(truth, self.args.axis)
                    crossing = sparse_label(truth, other, [index])
                    sparse = np.where(crossing != IGNORE, crossing, sparse).astype(np.uint8)
                if not path.exists():
                    from data.io import write_mask

                    write_mask(sparse, truth_vol, path)
                painted[name] = idx if not budget.across else {"axis": idx, "across": [other, index]}
                label_paths.append(str(path))
        unlabeled = [self.image(n) for n in self.split["train"] if n not in set(chosen)]
        return [self.image(n) for n in chosen], label_paths, unlabeled, painted

    def config(self, job: Job, out_dir: Path, **changes):
        from model.config import preset

        base = dict(
            axis=self.args.axis,
            num_classes=NUM_CLASSES,
            seed=job.seed,
            device=self.args.device,
            out_dir=str(out_dir),
            budget_s=None,  # the fixed step counts, so a row is reproducible whatever the machine's load
        )
        if self.validate:
            base.update(
                val_images=[self.image(n) for n in self.split["val"]],
                val_labels=[self.label(n) for n in self.split["val"]],
            )
        if self.threads:
            base["threads"] = self.threads
        return preset(self.grid.preset, **{**base, **self.grid.overrides, **changes})

    def global_path(self, seed: int) -> Path:
        return self.out / "runs" / f"seed{seed}" / "global" / "global.pt"

    # ---- estimates ----------------------------------------------------------------------------
    def rate(self, key: str) -> float:
        if self.rates.get(key):
            return float(np.median(self.rates[key]))
        if key in ("local:exact", "local:block") and self.rates.get("local:stride"):
            return 6 * float(np.median(self.rates["local:stride"]))
        return (PRIOR_RATE_CUDA if self.on_cuda else PRIOR_RATE)[key]

    def estimate(self, job: Job) -> float:
        cfg = self.config(job, Path("/nonexistent"))
        overhead = (
            float(np.median(self.overheads))
            if self.overheads
            else (PRIOR_OVERHEAD_CUDA_S if self.on_cuda else PRIOR_OVERHEAD_S)
        )
        # A stage without a fixed step count makes one pass over its pool per epoch (model.train.stage_plan);
        # hippocampus volumes have about 36 slices along axis 0.
        painted = (
            (
                job.budget.volumes * job.budget.slices
                if job.budget.protocol == "sparse"
                else 36 * paper_count(job.budget.fraction, len(self.split["train"]))
            )
            if job.budget
            else 0
        )

        def steps(stage: str, pool: int) -> int:
            return getattr(cfg, f"{stage}_steps") or -(-pool // getattr(cfg, f"{stage}_batch"))

        if job.kind == "global":
            return overhead + cfg.global_epochs * steps("global", 36 * len(self.split["train"])) * self.rate("global")
        growth = cfg.paint_growth(painted)
        t = overhead + cfg.finetune_epochs * growth * steps("finetune", painted) * self.rate("finetune")
        if job.row in ROW_PSEUDO:
            t += cfg.pseudo_epochs * growth * steps("pseudo", painted) * self.rate("finetune")
        if ROW_STAGES[job.row][1]:
            epochs = job.local_epochs if job.local_epochs is not None else cfg.local_epochs
            n = job.local_steps if job.local_steps is not None else steps("local", painted)
            t += epochs * n * self.rate(f"local:{job.mode or cfg.local_mode}")
        return t

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    # ---- one job ------------------------------------------------------------------------------
    def run(self, job: Job) -> dict | None:
        from model.train import train

        out_dir = self.out / "runs" / job.name
        if job.kind == "global":
            # The global stage reads no label: every train volume, none painted. (The seed's first labelled
            # volume goes first, the order runs before 2026-11-25 16:40 used, so their slices are drawn alike.)
            first = self.image(labeled_order(self.split["train"], job.seed)[0])
            all_images = [first] + [self.image(n) for n in self.split["train"] if self.image(n) != first]
            cfg = self.config(
                job,
                out_dir,
                images=all_images,
                labels=[],
                global_stage=True,
                local_stage=False,
                finetune_stage=False,
                pseudo_stage=False,
                val_images=[],
                val_labels=[],
            )
            painted = {}
        else:
            init, local = ROW_STAGES[job.row]
            if init and not self.global_path(job.seed).is_file():
                self.skipped.append(f"{job.name} (its seed's global stage did not run)")
                return None
            images, label_paths, unlabeled, painted = self.labels_for(job.seed, job.budget)
            changes = dict(
                images=images,
                labels=label_paths,
                unlabeled=unlabeled,
                global_stage=False,
                local_stage=local,
                finetune_stage=True,
                branch=ROW_BRANCH.get(job.row, "none"),
                pseudo_stage=job.row in ROW_PSEUDO,
                init_from=str(self.global_path(job.seed)) if init else None,
            )
            if job.mode:
                changes["local_mode"] = job.mode
            if job.local_epochs is not None:
                changes.update(local_epochs=job.local_epochs, local_steps=job.local_steps)
            cfg = self.config(job, out_dir, **changes)
        if out_dir.exists():
            shutil.rmtree(out_dir)  # a half-run from an earlier attempt; never resume into a benchmark
        t0 = time.monotonic()
        metrics = train(cfg)
        train_s = time.monotonic() - t0
        record = {
            "job": job.name,
            "kind": job.kind,
            "seed": job.seed,
            "table": job.table,
            "train_wall_s": round(train_s, 2),
            "stages": metrics["stages"],
            "data": metrics["data"],
            "local_mode": cfg.local_mode,
            "threads": cfg.threads,
            "load_avg": os.getloadavg(),
        }
        if job.kind == "global":
            record["global_pt"] = str(self.global_path(job.seed))
            record["eval_wall_s"] = 0.0
            (out_dir / "checkpoint.pt").unlink(missing_ok=True)
            return record
        t1 = time.monotonic()
        labelled = [(image, label, self.label(Path(image).name)) for image, label in zip(images, label_paths)]
        per_volume, variants = evaluate(out_dir, self.args.device, labelled, self.test)
        eval_s = time.monotonic() - t1
        per_class = np.mean(list(per_volume.values()), axis=0)
        record.update(
            {
                "protocol": job.budget.protocol,
                "budget": job.budget.key,
                "row": job.row,
                "mode": cfg.local_mode if ROW_STAGES[job.row][1] else None,
                "local_schedule": [cfg.local_epochs, cfg.local_steps] if ROW_STAGES[job.row][1] else None,
                "finetune_schedule": [cfg.finetune_epochs, cfg.finetune_steps, cfg.finetune_batch],
                "branch": cfg.branch,
                "branch_weight": cfg.branch_weight if cfg.branch != "none" else None,
                "labeled_volumes": painted,
                "painted_slices": metrics["data"]["painted_slices"],
                "eval_wall_s": round(eval_s, 2),
                "row_wall_s": round(train_s + eval_s, 2),
                "test_dice_per_volume": per_volume,
                "test_dice_per_class": per_class.tolist(),
                "test_dice_mean": float(per_class.mean()),
                "val_dice_mean": metrics.get("validation", {}).get("dice_mean"),
                "variants": variants,
            }
        )
        (out_dir / "checkpoint.pt").unlink(missing_ok=True)
        if not self.args.keep_models:
            (out_dir / "model.pt").unlink(missing_ok=True)
        return record

    def learn(self, record: dict) -> None:
        """Per-step rates and per-run overhead from a finished job, for the estimates."""
        stage_total = 0.0
        for stage, m in record["stages"].items():
            key = f"local:{record['local_mode']}" if stage == "local" else stage
            self.rates.setdefault(key, []).append(m["wall_s"] / (m["epochs"] * m["steps_per_epoch"]))
            stage_total += m["wall_s"]
        self.overheads.append(record["train_wall_s"] - stage_total + record.get("eval_wall_s", 0.0))

    @property
    def test(self):
        if self._test is None:
            self._test = [
                (n, np.asarray(image.array), np.asarray(self.read_volume(self.label(n)).array), image.spacing)
                for n in self.split["test"]
                for image in [self.read_volume(self.image(n))]
            ]
        return self._test

    # ---- reporting ----------------------------------------------------------------------------
    def done_jobs(self) -> set[str]:
        """Jobs with a result already (--append); a global counts only while its global.pt is still there."""
        return {r["job"] for r in self.results if r["kind"] != "global" or self.global_path(r["seed"]).is_file()}

    def meta(self) -> dict:
        return {
            "history": self.history,
            "commit": git("rev-parse", "--short", "HEAD"),
            "commit_at_start": self.commit_at_start,
            "dirty": bool(git("status", "--porcelain")),
            "machine": machine(),
            "torch": torch_version(),
            "started_utc": self.started_at.strftime("%Y-%m-%d %H:%M UTC"),
            "elapsed_s": round(self.elapsed(), 1),
            "load_avg_start": [round(x, 2) for x in self.load_start],
            "load_avg_now": [round(x, 2) for x in os.getloadavg()],
            "command": command(),
            "grid": self.grid.name,
            "preset": self.grid.preset,
            "axis": self.args.axis,
            "split_seed": self.args.split_seed,
            "split": self.split,
            "data": str(self.data),
        }

    def write(self) -> None:
        meta = self.meta()
        blob = {"meta": meta, "skipped": self.skipped, "failed": self.failed, "runs": self.results}
        tmp = self.results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(blob, indent=1))
        tmp.replace(self.results_path)
        write_markdown(self.md_path, render_markdown(meta, self.results, self.skipped, self.grid, self, self.failed))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true", help="paper preset, whole grid, 3 seeds everywhere (GPU)")
    g.add_argument("--quick", action="store_true", help="quick preset, 1 seed, 2 budgets (smoke run)")
    p.add_argument("--plan", action="store_true", help="print the jobs with estimated times and exit")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=None, help="work folder (default bench/out/label_efficiency/<grid>)")
    p.add_argument(
        "--md", default=None, help="markdown table (default docs/benchmarks/label_efficiency.md for the cpu grid)"
    )
    p.add_argument(
        "--seeds", default=None, help="training seeds: a count (default 3: 0-2), a range (3-5) or a list (0,4)"
    )
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--n-val", type=int, default=20)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--axis", type=int, default=0, choices=(0, 1, 2))
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--deadline-min",
        type=float,
        default=None,
        help="start no job that would end after this many minutes (default 65 for the cpu grid, none otherwise)",
    )
    p.add_argument("--keep-models", action="store_true", help="keep every run's model.pt")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="jobs run at once, each in its own process (default 2 with 1 torch thread each for the cpu grid, else 1)",
    )
    p.add_argument(
        "--grace-min",
        type=float,
        default=3.0,
        help="a job still running this long after the deadline is killed (default 3)",
    )
    p.add_argument("--validate", action="store_true", help="also report Dice on the validation volumes (on for --full)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset value for every run (JSON value), e.g. --set finetune_epochs=32; repeatable",
    )
    p.add_argument(
        "--budgets", default=None, help="only these budgets, comma-separated keys (e.g. sparse-10x3,paper-5pct)"
    )
    p.add_argument(
        "--rows",
        default=None,
        help=f"only these rows, comma-separated (of {', '.join(ALL_ROWS)}; 'modes' = the mode table)",
    )
    p.add_argument(
        "--merge",
        nargs="*",
        default=[],
        metavar="RESULTS_JSON",
        help="with --append: also keep the runs of these results.json files (same split, another --out)",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="keep the runs already in <out>/results.json and run only the jobs not in it (adds rows or seeds to a table)",
    )
    p.add_argument("--run-job", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def parse_overrides(items: list[str]) -> dict:
    """`KEY=VALUE` strings to a dict; VALUE is read as JSON when it parses, else kept as a string."""
    from model.config import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        if key not in known:
            raise SystemExit(f"--set: {key!r} is not a training config key")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds) if args.seeds else None
    except ValueError as error:
        raise SystemExit(str(error)) from None
    grid = make_grid("full" if args.full else "quick" if args.quick else "cpu", seeds, args.deadline_min)
    grid.overrides.update(parse_overrides(args.set))
    bench = Bench(args, grid)
    if args.run_job:  # worker: one job, its record next to its run
        job = job_from_json(args.run_job)
        record = bench.run(job)
        if record is None:
            return 3
        path = bench.out / "runs" / job.name / "record.json"
        path.write_text(json.dumps(record))
        return 0
    wanted = set(args.budgets.split(",")) if args.budgets else set()
    grid.budgets += [b for b in EXTRA_BUDGETS if b.key in wanted and b not in grid.budgets]
    jobs = plan_jobs(grid)
    if args.budgets or args.rows:
        jobs = select_jobs(jobs, args.budgets, args.rows)
    if args.plan:
        total = 0.0
        for job in jobs:
            est = bench.estimate(job)
            total += est
            print(f"{job.name:55s} {est:7.0f} s  (cumulative {total / 60:6.1f} min)")
        return 0
    print(
        f"split seed {args.split_seed}: {len(bench.split['train'])} train / {len(bench.split['val'])} val / "
        f"{len(bench.split['test'])} test; {len(jobs)} jobs; table -> {bench.md_path}",
        flush=True,
    )
    run_jobs(bench, jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
