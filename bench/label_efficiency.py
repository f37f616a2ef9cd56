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
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import ROOT, SHARED_DATA, command, git, machine, split_volumes, torch_version
from data.volume import IGNORE
from model.config import DEVICES

DEFAULT_DATA = SHARED_DATA / "hippocampus"
OUT_ROOT = ROOT / "bench" / "out" / "label_efficiency"
NOTES_MARKER = "<!-- notes: written by hand, kept when the script rewrites the tables above -->"
NUM_CLASSES = 3
CLASS_NAMES = ("anterior", "posterior")

ROWS = ("supervised", "+global", "+local", "full")
# the regularisation branch (model/regularizer.py) during fine-tune; self-training (the pseudo stage)
BRANCH_ROWS = ("ft+cpc", "full+cpc", "ft+pseudo", "full+pseudo")
ALL_ROWS = ROWS + BRANCH_ROWS
# row -> (starts from the global encoder, runs the local stage)
ROW_STAGES = {
    "supervised": (False, False),
    "+global": (True, False),
    "+local": (False, True),
    "full": (True, True),
    "ft+cpc": (False, False),
    "full+cpc": (True, True),
    "ft+pseudo": (False, False),
    "full+pseudo": (True, True),
}
ROW_BRANCH = {"ft+cpc": "cpc", "full+cpc": "cpc"}  # every other row: no branch
ROW_PSEUDO = {"ft+pseudo", "full+pseudo"}  # every other row: no pseudo stage

PAPER_REFERENCE = {0.05: 0.824, 0.10: 0.849, 0.20: 0.866}  # Hu et al. 2021, global + local (block)
# an earlier supervised-only run: widths 16-128, 1000 steps x 32 slices, on its own split
EARLIER_BASELINE = {0.05: 0.841, 0.10: 0.850, 0.20: 0.853, (10, 3): 0.671}

# Seconds per step before any run measured them: the cpu preset on the shared 2-core machine under load
# (measured 2026-11-25 with load average 3-6). The estimates only decide what still fits the deadline.
PRIOR_RATE = {"global": 0.6, "local:stride": 2.0, "local:block": 10.0, "local:exact": 10.0, "finetune": 0.6}
PRIOR_OVERHEAD_S = 15.0
# A guess for the paper preset on one H100 shared by several workers, replaced by measured rates after the
# first jobs; without it the CPU numbers above would make the deadline drop every paper-preset job.
PRIOR_RATE_CUDA = {"global": 0.04, "local:stride": 0.04, "local:block": 0.06, "local:exact": 0.1, "finetune": 0.03}
PRIOR_OVERHEAD_CUDA_S = 60.0  # process start, data loading, torch.compile


# --------------------------------------------------------------------------------------------
# split and painted slices (pure functions; tests/test_bench_label_efficiency.py checks them)
# --------------------------------------------------------------------------------------------
def volume_names(data_dir: Path) -> list[str]:
    """Names present in both imagesTr and labelsTr, sorted."""
    images = {p.name for p in (data_dir / "imagesTr").iterdir() if p.name.endswith((".nii", ".nii.gz"))}
    labels = {p.name for p in (data_dir / "labelsTr").iterdir() if p.name.endswith((".nii", ".nii.gz"))}
    return sorted(images & labels)


def labeled_order(train: list[str], seed: int) -> list[str]:
    """The order in which train volumes receive labels for a training seed (budgets nest)."""
    perm = np.random.default_rng(10_000 + seed).permutation(len(train))
    return [sorted(train)[i] for i in perm]


def paper_count(fraction: float, n_train: int) -> int:
    return max(1, int(round(fraction * n_train)))


def even_slices(label: np.ndarray, axis: int, k: int) -> list[int]:
    """k slice indices evenly spaced through the structure's extent along `axis`.

    The extent is [first, last] slice holding any foreground voxel; the picks are the centres of k
    equal bins of it (so k = 1 is the middle slice, and no pick sits on the thin first/last slice).
    """
    label = np.asarray(label)
    other = tuple(a for a in range(label.ndim) if a != axis)
    present = np.nonzero(((label > 0) & (label != IGNORE)).any(axis=other))[0]
    if present.size == 0:
        raise ValueError("the label volume has no foreground to paint")
    lo, hi = int(present[0]), int(present[-1])
    length = hi - lo + 1
    picks = [lo + int(np.floor(length * (j + 0.5) / k)) for j in range(k)]
    return sorted(set(min(hi, p) for p in picks))


def sparse_label(label: np.ndarray, axis: int, indices: list[int]) -> np.ndarray:
    """A label volume that is 255 everywhere except the given whole slices along `axis`."""
    label = np.asarray(label)
    out = np.full(label.shape, IGNORE, dtype=np.uint8)
    src, dst = np.moveaxis(label, axis, 0), np.moveaxis(out, axis, 0)
    for i in indices:
        dst[i] = src[i]
    return out


# --------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    protocol: str  # "paper" | "sparse"
    fraction: float = 0.0  # paper
    volumes: int = 0  # sparse N
    slices: int = 0  # sparse k

    @property
    def key(self) -> str:
        return (
            f"paper-{round(self.fraction * 100)}pct"
            if self.protocol == "paper"
            else f"sparse-{self.volumes}x{self.slices}"
        )

    @property
    def label(self) -> str:
        return (
            f"{round(self.fraction * 100)} % volumes"
            if self.protocol == "paper"
            else f"{self.volumes} vol x {self.slices} slices"
        )

    @property
    def reference_key(self):
        return self.fraction if self.protocol == "paper" else (self.volumes, self.slices)


@dataclass(frozen=True)
class Job:
    kind: str  # "global" | "row"
    seed: int
    budget: Budget | None = None
    row: str = ""
    mode: str = ""  # local mode; "" = the preset's
    local_epochs: int | None = None  # shortened local schedule (mode comparison)
    local_steps: int | None = None
    table: str = "main"  # "main" | "modes"

    @property
    def name(self) -> str:
        if self.kind == "global":
            return f"seed{self.seed}/global"
        extra = f"-{self.mode}" if self.mode else ""
        extra += f"-L{self.local_epochs}x{self.local_steps}" if self.local_epochs is not None else ""
        return f"seed{self.seed}/{self.budget.key}/{self.row}{extra}"


@dataclass
class Grid:
    name: str
    preset: str
    seeds: list[int]
    ablation_seeds: list[int]  # seeds for +global / +local
    mode_seeds: list[int]  # seeds for the stride / block / exact comparison
    exact_seeds: list[int]
    budgets: list[Budget]
    mode_budget: Budget
    mode_local: tuple[int, int]  # (epochs, steps) of the shortened local stage of the mode comparison
    deadline_min: float | None
    overrides: dict = field(default_factory=dict)


PAPER_BUDGETS = [Budget("paper", fraction=f) for f in (0.05, 0.10, 0.20)]
SPARSE_BUDGETS = [Budget("sparse", volumes=n, slices=k) for n, k in ((5, 2), (10, 3), (20, 5))]
TEN_BY_THREE = Budget("sparse", volumes=10, slices=3)


def make_grid(which: str, seeds: int | None, deadline_min: float | None) -> Grid:
    if which == "quick":
        return Grid(
            "quick",
            "quick",
            [0],
            [0],
            [0],
            [0],
            [TEN_BY_THREE, Budget("paper", fraction=0.05)],
            TEN_BY_THREE,
            (1, 2),
            deadline_min,
        )
    s = list(range(seeds or 3))
    if which == "full":
        return Grid("full", "paper", s, s, s, s, SPARSE_BUDGETS + PAPER_BUDGETS, TEN_BY_THREE, (10, 50), deadline_min)
    return Grid(
        "cpu",
        "cpu",
        s,
        s,
        s,
        s[:1],
        SPARSE_BUDGETS + PAPER_BUDGETS,
        TEN_BY_THREE,
        (1, 20),
        65.0 if deadline_min is None else deadline_min,
    )


def plan_jobs(grid: Grid) -> list[Job]:
    """Every job of the grid, in priority order (what matters most runs first when time is short).

    1. the headline budget (the mode budget, 10 x 3): supervised + full for the first two seeds;
    2. +global / +local at the headline budget (first seed): does each stage help on its own?
    3. the other sparse budgets, first seed; 4. the local-mode comparison, first seed;
    5. the paper protocol, first seed; 6. the other sparse budgets, second seed;
    7. the third seed at the headline and sparse budgets; 8. the paper protocol, other seeds;
    9. the remaining ablations; 10. the mode comparison for the other seeds.
    A row that starts from the global encoder waits for its seed's global job.
    """
    seeds, head = grid.seeds, grid.mode_budget
    sparse = [b for b in grid.budgets if b.protocol == "sparse" and b != head]
    paper = [b for b in grid.budgets if b.protocol == "paper"]
    heads = [b for b in grid.budgets if b == head]

    def pair(seed, budgets):
        return [Job("row", seed, b, row) for b in budgets for row in ("supervised", "full")]

    def ablation(seed, budgets):
        if seed not in grid.ablation_seeds:
            return []
        return [Job("row", seed, b, row) for row in ("+global", "+local") for b in budgets]

    def branch(seed, budgets):
        return [Job("row", seed, b, row) for b in budgets for row in BRANCH_ROWS]

    def modes(seed):
        if seed not in grid.mode_seeds:
            return []
        e, s = grid.mode_local
        names = ("stride", "block") + (("exact",) if seed in grid.exact_seeds else ())
        return [Job("row", seed, head, "full", m, e, s, table="modes") for m in names]

    order: list[Job] = []
    for s in seeds[:2]:
        order += [Job("global", s)] + pair(s, heads)
    for s in seeds[:1]:
        order += ablation(s, heads) + pair(s, sparse) + modes(s) + pair(s, paper)
    for s in seeds[1:2]:
        order += pair(s, sparse)
    for s in seeds[2:]:
        order += [Job("global", s)] + pair(s, heads + sparse)
    for s in seeds[1:]:
        order += pair(s, paper)
    for s in seeds:
        order += ablation(s, grid.budgets)
    for s in seeds[1:]:
        order += modes(s)
    for s in seeds:
        order += branch(s, heads + sparse)
    unique, seen = [], set()
    for job in order:
        if job.name not in seen:
            seen.add(job.name)
            unique.append(job)
    return unique


def job_to_json(job: Job) -> str:
    d = {k: getattr(job, k) for k in ("kind", "seed", "row", "mode", "local_epochs", "local_steps", "table")}
    d["budget"] = (
        None
        if job.budget is None
        else {k: getattr(job.budget, k) for k in ("protocol", "fraction", "volumes", "slices")}
    )
    return json.dumps(d)


def job_from_json(text: str) -> Job:
    d = json.loads(text)
    budget = None if d.pop("budget") is None else Budget(**json.loads(text)["budget"])
    return Job(budget=budget, **d)


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
class Bench:
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
                path = folder / name
                if not path.exists():
                    from data.io import write_mask

                    write_mask(sparse_label(truth, self.args.axis, idx), truth_vol, path)
                painted[name] = idx
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
        t = overhead + cfg.finetune_epochs * steps("finetune", painted) * self.rate("finetune")
        if job.row in ROW_PSEUDO:
            t += cfg.pseudo_epochs * steps("pseudo", painted) * self.rate("finetune")
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
        per_volume, variants = self.evaluate(out_dir, images, label_paths)
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
                (
                    n,
                    np.asarray(self.read_volume(self.image(n)).array),
                    np.asarray(self.read_volume(self.label(n)).array),
                )
                for n in self.split["test"]
            ]
        return self._test

    def evaluate(self, model_dir: Path, images: list[str], label_paths: list[str]) -> tuple[dict, dict]:
        """Per-volume Dice of the plain prediction on the test volumes, and every inference variant's
        Dice on the test volumes and on the labelled volumes themselves (against their full truth: the
        masks the clinician gets back).

        Variants: `flip` (test-time flips), `clean` (largest component + hole filling for every class),
        `auto` (the clean-up chosen per class on the painted voxels of the labelled volumes, which is all
        the app knows), and their combinations with `flip`."""
        from data.mask_cleanup import Cleanup, choose_cleanup
        from model.inference import load_predictor
        from model.train import dice_per_class

        predictor = load_predictor(model_dir, self.args.device)

        def base(image):
            return {
                "plain": predictor.predict(image, flip=False, clean=False)[0],
                "flip": predictor.predict(image, flip=True, clean=False)[0],
            }

        labelled = []
        for image_path, label_path in zip(images, label_paths):
            name = Path(image_path).name
            image = np.asarray(self.read_volume(image_path).array)
            painted = np.asarray(self.read_volume(label_path).array)
            labelled.append((name, base(image), painted, np.asarray(self.read_volume(self.label(name)).array)))
        every = Cleanup.everything(NUM_CLASSES)
        auto = {
            key: choose_cleanup([b[key] for _, b, _, _ in labelled], [p for _, _, p, _ in labelled], NUM_CLASSES)
            for key in ("plain", "flip")
        }

        def variants(b):
            return {
                "plain": b["plain"],
                "flip": b["flip"],
                "clean": every.apply(b["plain"]),
                "flip+clean": every.apply(b["flip"]),
                "auto": auto["plain"][0].apply(b["plain"]),
                "flip+auto": auto["flip"][0].apply(b["flip"]),
            }

        test: dict[str, dict[str, list[float]]] = {}
        for name, image, truth in self.test:
            for variant, pred in variants(base(image)).items():
                test.setdefault(variant, {})[name] = dice_per_class(pred, truth, NUM_CLASSES)
        own: dict[str, dict[str, list[float]]] = {}
        for name, b, _, truth in labelled:
            for variant, pred in variants(b).items():
                own.setdefault(variant, {})[name] = dice_per_class(pred, truth, NUM_CLASSES)

        def mean(per_volume):
            return float(np.mean(list(per_volume.values())))

        summary = {
            variant: {
                "test_dice_mean": mean(test[variant]),
                "labelled_dice_mean": mean(own[variant]),
                "test_dice_per_volume": test[variant],
            }
            for variant in test
        }
        summary["auto_choice"] = {key: report for key, (_, report) in auto.items()}
        return test["plain"], summary

    # ---- the loop: up to `workers` jobs at once, each in its own process -------------------------
    def worker_command(self, job: Job) -> list[str]:
        a = self.args
        cmd = [
            sys.executable,
            "-m",
            "bench.label_efficiency",
            "--run-job",
            job_to_json(job),
            "--data",
            str(self.data),
            "--out",
            str(self.out),
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
            str(self.workers),
        ]
        cmd += ["--full"] if self.grid.name == "full" else ["--quick"] if self.grid.name == "quick" else []
        if a.seeds:
            cmd += ["--seeds", str(a.seeds)]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if self.validate:
            cmd.append("--validate")
        if a.keep_models:
            cmd.append("--keep-models")
        for item in a.set:
            cmd += ["--set", item]
        return cmd

    def go(self, jobs: list[Job]) -> None:
        deadline = self.grid.deadline_min * 60 if self.grid.deadline_min else None
        hard = deadline + self.args.grace_min * 60 if deadline else None
        done = self.done_jobs()
        pending, running = [j for j in jobs if j.name not in done], {}
        globals_done, globals_lost = {j.seed for j in jobs if j.kind == "global" and j.name in done}, set()
        self.write()
        while pending or running:
            for name, (job, proc, t0, est) in list(running.items()):
                if proc.poll() is None:
                    if hard is not None and self.elapsed() > hard:
                        os.killpg(proc.pid, signal.SIGTERM)  # our own worker's process group
                        proc.wait()
                        self.failed.append(
                            f"{name} (killed at the {hard / 60:.0f} min hard limit after {time.monotonic() - t0:.0f} s)"
                        )
                        globals_lost.add(job.seed) if job.kind == "global" else None
                        del running[name]
                        self.write()
                    continue
                del running[name]
                record_path = self.out / "runs" / name / "record.json"
                if proc.returncode == 0 and record_path.is_file():
                    record = json.loads(record_path.read_text())
                    record["estimated_s"] = round(est, 1)
                    record["started_at_s"] = round(t0 - self.start, 1)
                    self.results.append(record)
                    self.learn(record)
                    if job.kind == "global":
                        globals_done.add(job.seed)
                    dice = record.get("test_dice_mean")
                    print(
                        f"[{self.elapsed():6.0f}s] done {name} in {time.monotonic() - t0:.0f} s (estimated {est:.0f})"
                        + (f", test Dice {dice:.3f}" if dice is not None else ""),
                        flush=True,
                    )
                else:
                    self.failed.append(f"{name} (exit {proc.returncode}; log runs/{name}.log)")
                    print(f"[{self.elapsed():6.0f}s] FAILED {name} (exit {proc.returncode})", flush=True)
                    if job.kind == "global":
                        globals_lost.add(job.seed)
                self.write()
            while len(running) < self.workers:
                job = self._next(pending, globals_done, globals_lost)
                if job is None:
                    break
                est = self.estimate(job)
                if deadline is not None and self.elapsed() + est > deadline:
                    self.skipped.append(
                        f"{job.name} (estimated {est:.0f} s, {max(0, deadline - self.elapsed()):.0f} s left)"
                    )
                    print(f"[{self.elapsed():6.0f}s] skip {job.name}: estimated {est:.0f} s", flush=True)
                    if job.kind == "global":
                        globals_lost.add(job.seed)
                    continue
                log = self.out / "runs" / f"{job.name}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "w") as f:
                    proc = subprocess.Popen(
                        self.worker_command(job), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
                    )
                running[job.name] = (job, proc, time.monotonic(), est)
                print(
                    f"[{self.elapsed():6.0f}s] start {job.name} (estimated {est:.0f} s, {len(pending)} pending)",
                    flush=True,
                )
            if not running and pending:
                # nothing can start: every pending job waits for a global stage that will not come
                for job in pending:
                    self.skipped.append(f"{job.name} (its seed's global stage did not run)")
                pending.clear()
            time.sleep(1.0)
        self.write()
        print(f"[{self.elapsed():6.0f}s] finished; table in {self.md_path}", flush=True)

    def _next(self, pending: list[Job], globals_done: set, globals_lost: set) -> Job | None:
        """First pending job that can start now; drops jobs whose global stage will never exist."""
        for job in list(pending):
            needs_global = job.kind == "row" and ROW_STAGES[job.row][0]
            if needs_global and job.seed in globals_lost:
                pending.remove(job)
                self.skipped.append(f"{job.name} (its seed's global stage did not run)")
                continue
            if needs_global and job.seed not in globals_done:
                continue
            pending.remove(job)
            return job
        return None

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
        self.md_path.parent.mkdir(parents=True, exist_ok=True)
        text = render_markdown(meta, self.results, self.skipped, self.grid, self, self.failed)
        if self.md_path.is_file():  # hand-written notes below the marker survive a re-run
            old = self.md_path.read_text()
            if NOTES_MARKER in old:
                text += "\n" + old[old.index(NOTES_MARKER) :]
        tmp = self.md_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.md_path)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------
def _stats(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def _pm(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = _stats(values)
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "") + f" (n={len(values)})"


def _stage_s(run: dict, stage: str) -> float | None:
    m = run["stages"].get(stage)
    return None if m is None else m["wall_s"]


def _mean_or_dash(values, fmt="{:.0f}") -> str:
    values = [v for v in values if v is not None]
    return fmt.format(float(np.mean(values))) if values else "–"


def render_markdown(meta: dict, runs: list[dict], skipped: list[str], grid: Grid, bench=None, failed=()) -> str:
    split = meta["split"]
    lines = [
        "# Label efficiency on the MSD hippocampus",
        "",
        f"- commit: {meta['commit']}{' (+ uncommitted changes)' if meta['dirty'] else ''}"
        + (
            f" (HEAD was {meta['commit_at_start']} when the run started)"
            if meta.get("commit_at_start", meta["commit"]) != meta["commit"]
            else ""
        ),
        f"- machine: {meta['machine']}, torch {meta['torch']}",
        f"- date: {meta['started_utc']}; elapsed {meta['elapsed_s'] / 60:.1f} min"
        f"; load average (1/5/15 min) at start {meta['load_avg_start']}, at last write {meta['load_avg_now']}"
        " (the machine is shared: wall times are indicative)",
        f"- command: `{meta['command']}` (grid `{meta['grid']}`, preset `{meta['preset']}`)",
        *[
            f"- runs kept from an earlier invocation (`--append`): `{h['command']}` at {h['commit']}, {h['started_utc']}, "
            f"{h['elapsed_s'] / 60:.1f} min, {h['machine']}"
            for h in meta.get("history", [])
        ],
        f"- data: `../shared/data/hippocampus` imagesTr/labelsTr, {sum(len(v) for v in split.values())} volumes, "
        f"split with seed {meta['split_seed']} into {len(split['train'])} train / {len(split['val'])} validation / "
        f"{len(split['test'])} test (lists below and in results.json). Test volumes are seen by no stage of any run.",
        f"- slices along axis {meta['axis']}"
        + (f", padded to {runs[0]['data']['size']}x{runs[0]['data']['size']}" if runs else "")
        + "; Dice: 3D, per test volume, "
        "per class (1 anterior, 2 posterior) and their mean, averaged over the test volumes; "
        "then mean ± sample std over training seeds (n = seeds). The seed picks which train volumes are labelled "
        "and seeds the training.",
        "",
    ]
    by = {}
    for r in runs:
        if r["kind"] == "row":
            by.setdefault((r["table"], r["budget"], r["row"], r["mode"], tuple(r["local_schedule"] or ())), []).append(
                r
            )

    def cell(budget: Budget, row: str) -> list[dict]:
        return [r for k, rs in by.items() if k[0] == "main" and k[1] == budget.key and k[2] == row for r in rs]

    # ---- summary
    shown = ROWS + tuple(row for row in BRANCH_ROWS if any(k[2] == row for k in by))
    lines += [
        "## Mean Dice on the test volumes",
        "",
        "| budget | painted slices | "
        + " | ".join(shown)
        + " | full − supervised | paper | earlier supervised baseline |",
        "|---|---:|" + "---|" * len(shown) + "---:|---:|---:|",
    ]
    for b in grid.budgets:
        cells = {row: cell(b, row) for row in shown}
        painted = next((r["painted_slices"] for rs in cells.values() for r in rs), None)
        sup, full = ({r["seed"]: r["test_dice_mean"] for r in cells[x]} for x in ("supervised", "full"))
        both = sorted(set(sup) & set(full))
        diff = _pm([full[s] - sup[s] for s in both]) if both else "–"
        lines.append(
            f"| {b.label} | {painted if painted is not None else '–'} | "
            + " | ".join(_pm([r["test_dice_mean"] for r in cells[row]]) for row in shown)
            + f" | {diff} | {PAPER_REFERENCE.get(b.reference_key, '–')} | {EARLIER_BASELINE.get(b.reference_key, '–')} |"
        )
    lines += [
        "",
        "`full − supervised`: the per-seed difference (same labelled volumes, same seed), mean ± std. "
        "`paper`: Hu et al. 2021 (widths 64-512, global + local block, their split). "
        "`earlier supervised baseline`: a supervised-only run before this benchmark, widths 16-128, 1000 steps x 32 slices, its own split.",
        "",
    ]

    # ---- detail
    lines += [
        "## Per class and wall time",
        "",
        "| budget | row | seeds | anterior | posterior | mean | val mean | local s | fine-tune s | row wall s |",
        "|---|---|---:|---|---|---|---|---:|---:|---:|",
    ]
    for b in grid.budgets:
        for row in shown:
            rs = cell(b, row)
            if not rs:
                continue
            lines.append(
                f"| {b.label} | {row} | {len(rs)} | {_pm([r['test_dice_per_class'][0] for r in rs]).split(' (')[0]} | "
                f"{_pm([r['test_dice_per_class'][1] for r in rs]).split(' (')[0]} | {_pm([r['test_dice_mean'] for r in rs]).split(' (')[0]} | "
                f"{_pm([r['val_dice_mean'] for r in rs if r['val_dice_mean'] is not None]).split(' (')[0]} | "
                f"{_mean_or_dash([_stage_s(r, 'local') for r in rs])} | {_mean_or_dash([_stage_s(r, 'finetune') for r in rs])} | "
                f"{_mean_or_dash([r['row_wall_s'] for r in rs])} |"
            )
    globals_ = [r for r in runs if r["kind"] == "global"]
    lines += [
        "",
        "`row wall s`: the whole run (reading every train volume, the stages it runs"
        + (", validation" if bench is not None and bench.validate else "")
        + ") plus predicting the test volumes; mean over seeds. Rows `+global` and `full` "
        "also need the global stage, run once per seed and shared (below)."
        + (
            f" {bench.workers} jobs ran at once, {bench.threads or 'default'} torch thread(s) each, on a machine "
            "shared with other work: wall times include that contention."
            if bench is not None
            else ""
        ),
        "",
    ]
    if globals_:
        lines += ["| seed | global stage s | slices | run wall s |", "|---:|---:|---:|---:|"]
        for r in globals_:
            lines.append(
                f"| {r['seed']} | {_stage_s(r, 'global'):.0f} | {r['data']['slices']} | {r['train_wall_s']:.0f} |"
            )
        lines.append("")

    # ---- modes
    mode_runs = [r for r in runs if r["kind"] == "row" and r["table"] == "modes"]
    if mode_runs:
        e, s = grid.mode_local
        lines += [
            f"## Local loss mode at {grid.mode_budget.label} (full pipeline, local stage shortened to {e} x {s} steps)",
            "",
            "All three modes run the same shortened local schedule (exact costs 10-30x a stride step on a CPU), then the "
            "preset's fine-tune; compare them with each other, not with the `full` row above.",
            "",
            "| mode | seeds | anterior | posterior | mean | local s | local s/step | row wall s |",
            "|---|---:|---|---|---|---:|---:|---:|",
        ]
        for mode in ("stride", "block", "exact"):
            rs = [r for r in mode_runs if r["mode"] == mode]
            if not rs:
                continue
            per_step = [_stage_s(r, "local") / (r["local_schedule"][0] * r["local_schedule"][1]) for r in rs]
            lines.append(
                f"| {mode} | {len(rs)} | {_pm([r['test_dice_per_class'][0] for r in rs]).split(' (')[0]} | "
                f"{_pm([r['test_dice_per_class'][1] for r in rs]).split(' (')[0]} | {_pm([r['test_dice_mean'] for r in rs]).split(' (')[0]} | "
                f"{_mean_or_dash([_stage_s(r, 'local') for r in rs])} | {_mean_or_dash(per_step, '{:.2f}')} | "
                f"{_mean_or_dash([r['row_wall_s'] for r in rs])} |"
            )
        lines.append("")

    # ---- schedule
    if bench is not None:
        cfg = bench.config(Job("row", 0, TEN_BY_THREE, "full"), Path("/x"))
        lines += [
            "## Schedule",
            "",
            f"Preset `{grid.preset}`: U-Net widths {list(cfg.widths)}; global {cfg.global_epochs} x {cfg.global_steps} steps "
            f"of batch {cfg.global_batch} (lr {cfg.global_lr}); local {cfg.local_epochs} x {cfg.local_steps} steps of batch "
            f"{cfg.local_batch} (lr {cfg.local_lr}, mode {cfg.local_mode}); fine-tune {cfg.finetune_epochs} x "
            f"{cfg.finetune_steps} steps of batch {cfg.finetune_batch} (lr {cfg.finetune_lr}), the same for every row. "
            f"Seeds: {grid.seeds} (+global / +local: {grid.ablation_seeds}; modes: {grid.mode_seeds}, exact: {grid.exact_seeds})."
            + (
                f" Jobs run in priority order; a job is not started when its estimated time would end it after the "
                f"{grid.deadline_min:.0f} min deadline."
                if grid.deadline_min
                else ""
            ),
            "",
        ]
    if skipped or failed:
        lines += ["## Not run", "", *[f"- {s}" for s in failed], *[f"- {s}" for s in skipped], ""]
    lines += [
        "## Volumes",
        "",
        f"- test ({len(split['test'])}): {', '.join(n.split('.')[0].replace('hippocampus_', '') for n in split['test'])}",
        f"- validation ({len(split['val'])}): {', '.join(n.split('.')[0].replace('hippocampus_', '') for n in split['val'])}",
        f"- train: the other {len(split['train'])} (hippocampus_NNN.nii.gz); labelled volumes and painted slice "
        "indices per seed and budget are in results.json (`labeled_volumes`).",
        "",
    ]
    return "\n".join(lines)


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
    p.add_argument("--seeds", type=int, default=None, help="training seeds (default 3)")
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


def select_jobs(jobs: list[Job], budgets: str | None, rows: str | None) -> list[Job]:
    """The jobs of the chosen budgets and rows, plus the global stages those rows start from."""
    want_b = set(budgets.split(",")) if budgets else None
    want_r = set(rows.split(",")) if rows else None
    if want_r and not want_r <= set(ALL_ROWS) | {"modes"}:
        raise SystemExit(
            f"--rows: unknown {sorted(want_r - set(ALL_ROWS) - {'modes'})}; choose from {', '.join(ALL_ROWS)}, modes"
        )
    keep = []
    for job in jobs:
        if job.kind == "global":
            continue
        if want_b and job.budget.key not in want_b:
            continue
        if want_r and (("modes" if job.table == "modes" else job.row) not in want_r):
            continue
        keep.append(job)
    seeds_needing_global = {j.seed for j in keep if ROW_STAGES[j.row][0]}
    return [j for j in jobs if (j.kind == "global" and j.seed in seeds_needing_global) or j in keep]


def main(argv=None) -> int:
    args = parse_args(argv)
    grid = make_grid("full" if args.full else "quick" if args.quick else "cpu", args.seeds, args.deadline_min)
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
    bench.go(jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
