"""The protocol of bench/label_efficiency.py: which train volumes are labelled and which slices of them are
painted, the rows and budgets of the grid, and its jobs in priority order (no training; of the files, only the
volume names are read)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from data.volume import IGNORE

NUM_CLASSES = 3

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


# --------------------------------------------------------------------------------------------
# split and painted slices
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


def structure_extent(label: np.ndarray, axis: int) -> tuple[int, int]:
    """(first, last) slice along `axis` holding any foreground voxel (255, not annotated, is not one)."""
    label = np.asarray(label)
    other = tuple(a for a in range(label.ndim) if a != axis)
    present = np.nonzero(((label > 0) & (label != IGNORE)).any(axis=other))[0]
    if present.size == 0:
        raise ValueError("the label volume has no foreground along the axis")
    return int(present[0]), int(present[-1])


def even_slices(label: np.ndarray, axis: int, k: int) -> list[int]:
    """k slice indices evenly spaced through the structure's extent along `axis`.

    The extent is [first, last] slice holding any foreground voxel; the picks are the centres of k
    equal bins of it (so k = 1 is the middle slice, and no pick sits on the thin first/last slice).
    """
    lo, hi = structure_extent(label, axis)
    length = hi - lo + 1
    picks = [lo + int(np.floor(length * (j + 0.5) / k)) for j in range(k)]
    return sorted(set(min(hi, p) for p in picks))


def end_slices(label: np.ndarray, axis: int) -> list[int]:
    """The first slice past each end of the structure along `axis` (inside the volume): what a clinician
    marks as empty with "Clear slice" after scrolling to where the structure stops."""
    lo, hi = structure_extent(label, axis)
    return [i for i in (lo - 1, hi + 1) if 0 <= i < np.shape(label)[axis]]


def across_slice(label: np.ndarray, axis: int) -> tuple[int, int]:
    """(axis, index) of the slice painted across a `sparse-NxK+across` budget's slices along `axis`: the
    middle of the structure along the next axis."""
    other = (axis + 1) % 3
    return other, even_slices(label, other, 1)[0]


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
    ends: bool = False  # sparse: also the first empty slice past each end of the structure, cleared
    across: bool = False  # sparse: also the middle slice of the structure along the next axis, (axis + 1) % 3

    @property
    def key(self) -> str:
        if self.protocol == "paper":
            return f"paper-{round(self.fraction * 100)}pct"
        return (
            f"sparse-{self.volumes}x{self.slices}" + ("-ends" if self.ends else "") + ("+across" if self.across else "")
        )

    @property
    def label(self) -> str:
        if self.protocol == "paper":
            return f"{round(self.fraction * 100)} % volumes"
        return (
            f"{self.volumes} vol x {self.slices} slices"
            + (" + 2 cleared ends" if self.ends else "")
            + (" + 1 across" if self.across else "")
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
# Budgets outside every grid, run only when `--budgets` names them.
EXTRA_BUDGETS = [
    Budget("sparse", volumes=10, slices=3, ends=True),
    # more slices per volume, for the paint a slicing axis across the structure's long axis needs
    Budget("sparse", volumes=10, slices=5),
    Budget("sparse", volumes=10, slices=7),
    # paint in two planes, as a clinician might in a viewer that shows three: the trainer slices along the
    # most painted one, and the other slice reaches it as lines (TrainConfig.pseudo_paint_lines)
    Budget("sparse", volumes=10, slices=3, across=True),
]


def parse_seeds(text: str) -> list[int]:
    """--seeds: "6" is seeds 0-5, "3-5" is 3, 4 and 5, "0,4" is 0 and 4 (so seeds can be added to an earlier
    run's table without training its seeds again)."""
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",")]
        elif "-" in text:
            first, last = (int(part) for part in text.split("-"))
            seeds = list(range(first, last + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give a count (3), a range (3-5) or a list (0,4)") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: give at least one seed, none negative or repeated")
    return seeds


def make_grid(which: str, seeds: list[int] | None, deadline_min: float | None) -> Grid:
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
    s = list(seeds) if seeds else [0, 1, 2]
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
    9. the remaining ablations; 10. the mode comparison for the other seeds; 11. the regularisation and
    self-training rows at the sparse budgets; 12. the product's pipeline (full+pseudo) at the paper budgets.
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
    for s in seeds:
        order += [Job("row", s, b, "full+pseudo") for b in paper]
    unique, seen = [], set()
    for job in order:
        if job.name not in seen:
            seen.add(job.name)
            unique.append(job)
    return unique


def job_to_json(job: Job) -> str:
    d = {k: getattr(job, k) for k in ("kind", "seed", "row", "mode", "local_epochs", "local_steps", "table")}
    d["budget"] = None if job.budget is None else {f.name: getattr(job.budget, f.name) for f in fields(Budget)}
    return json.dumps(d)


def job_from_json(text: str) -> Job:
    d = json.loads(text)
    budget = None if d.pop("budget") is None else Budget(**json.loads(text)["budget"])
    return Job(budget=budget, **d)


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
