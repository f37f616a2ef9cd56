"""The first slices, before any model: which extra slices to paint, and spread over how many volumes.

    python -m bench.first_slices                         # the bounded CPU run (the defaults, ~15 min on 2 cores)
    python -m bench.first_slices --seeds 0 --volumes 3 --eval-volumes 2 --steps 20   # smoke run

Split. The MSD hippocampus volumes are split as bench/simulated_annotator.py and bench/label_efficiency.py
do (bench/common.split_volumes, split seed 0: 141 train / 20 validation / 40 test). Only test volumes are
used: for each seed, a permutation of the test split (numpy default_rng(seed)) gives `--volumes` work
volumes (the project being annotated) and the next `--eval-volumes` eval volumes (never painted). No
train or validation volume is used, no test label is seen except the painted slices, and nothing here
was tuned on these volumes.

The simulated clinician first paints ONE slice per work volume of their own choosing: the middle slice
of the hippocampus along axis 0 (from the ground truth; `clinician_first_slice`). Then, with no model,
each strategy asks for k more slices per volume (`pick_more`, greedily one at a time, every painted
slice a copy of its ground-truth slice):
  random           uniform over the unpainted slices;
  even             largest gap over the whole axis (app/suggest "even": the app's old pre-model behaviour);
  even_extent      largest gap inside the structure's first..last slice from the ground truth (a person
                   who sees where the hippocampus is; the extent of what is painted is a single slice
                   after the first one, so the ground-truth extent stands in for it);
  content+distance app/suggest.suggest with the painted masks' image content (the app's pre-model default).
Then ONE model is trained per configuration (fine-tune only, fixed steps, the simulated annotator's small
U-Net, training seed = seed) and Dice is measured on the work volumes (whole volume, painted slices
included) and the eval volumes. Configurations whose painted slices coincide are trained once.

Spread: the same number of painted slices on all work volumes (V x s) against half of them (V/2 x 2s),
content+distance picks after the clinician's slice; Dice over all V work volumes (the masks the project
gets, unpainted ones included) and the eval volumes.

Outputs: docs/benchmarks/first_slices.md and bench/out/first_slices/results.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from app import suggest as sg
from bench.common import ROOT, git, machine, split_volumes

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hippocampus"
OUT = ROOT / "bench" / "out" / "first_slices"
DOCS = ROOT / "docs" / "benchmarks"
NUM_CLASSES, AXIS = 3, 0
STRATEGIES = ("random", "even", "even_extent", "content+distance")
BASELINE = "even"


def structure_extent(truth: np.ndarray, axis: int = AXIS) -> tuple[int, int] | None:
    """First and last slice along `axis` holding any foreground; None for an empty mask."""
    other = tuple(a for a in range(truth.ndim) if a != axis)
    present = np.nonzero((np.asarray(truth) > 0).any(axis=other))[0]
    return (int(present[0]), int(present[-1])) if present.size else None


def clinician_first_slice(truth: np.ndarray, axis: int = AXIS) -> int:
    """The slice a person paints first: the middle of the structure's extent along `axis` (the middle of
    the volume when the structure is absent)."""
    extent = structure_extent(truth, axis)
    if extent is None:
        return truth.shape[axis] // 2
    return (extent[0] + extent[1]) // 2


def pick_more(
    strategy: str, image: np.ndarray, truth: np.ndarray, painted: list[int], k: int, rng: np.random.Generator
) -> list[int]:
    """`painted` plus k more slices along axis 0 chosen one at a time by `strategy`, each painted slice a
    copy of the ground truth (what the next pick's content signal sees)."""
    painted = list(painted)
    n = truth.shape[AXIS]
    for _ in range(k):
        free = [i for i in range(n) if i not in set(painted)]
        if not free:
            break
        if strategy == "random":
            painted.append(int(rng.choice(free)))
            continue
        if strategy == "even_extent":
            painted.append(sg.rank(sg.even_scores(n, painted, structure_extent(truth)), painted, 1)[0])
            continue
        if strategy not in ("even", "content+distance"):
            raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
        content_of = None
        if strategy == "content+distance":
            masks = {i: truth[i] for i in painted}
            content_of = lambda axis: sg.content_scores(image, axis, masks)  # noqa: E731
        out = sg.suggest(
            truth.shape, (1, 1, 1), [(AXIS, i) for i in painted], None, axis=AXIS, limit=1, content_of=content_of
        )
        painted.append(out["slices"][0]["index"])
    return painted


def paired(values: dict[int, float], baseline: dict[int, float]) -> tuple[float, float]:
    """Mean and sample std over seeds of (value - baseline), the seeds both have."""
    seeds = sorted(set(values) & set(baseline))
    d = np.array([values[s] - baseline[s] for s in seeds], dtype=np.float64)
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0


# ------------------------------------------------------------------------------------------------ data
def volume_names(data: Path) -> list[str]:
    return sorted({p.name for p in (data / "imagesTr").iterdir()} & {p.name for p in (data / "labelsTr").iterdir()})


def seed_volumes(names: list[str], split_seed: int, seed: int, n_work: int, n_eval: int) -> tuple[list, list]:
    test = split_volumes(names, split_seed, 20, 40)["test"]
    if n_work + n_eval > len(test):
        raise SystemExit(f"{n_work} work + {n_eval} eval volumes exceed the {len(test)} test volumes")
    order = [test[i] for i in np.random.default_rng(seed).permutation(len(test))]
    return order[:n_work], order[n_work : n_work + n_eval]


def read(data: Path, name: str):
    from data.io import read_volume

    image, label = read_volume(str(data / "imagesTr" / name)), read_volume(str(data / "labelsTr" / name))
    return np.asarray(image.array), np.asarray(label.array).astype(np.uint8), label


def plan_seed(args, seed: int, work: list[str], data: Path) -> dict[str, dict[str, list[int]]]:
    """Configuration name -> {work volume: painted slices} for one seed."""
    vols = {name: read(data, name) for name in work}
    first = {name: [clinician_first_slice(vols[name][1])] for name in work}
    configs = {"first slice only": first}
    for k in args.k:
        for strategy in STRATEGIES:
            rng = np.random.default_rng(1000 + seed)
            configs[f"{strategy} k={k}"] = {
                name: pick_more(strategy, vols[name][0], vols[name][1], first[name], k, rng) for name in work
            }
    half = work[: len(work) // 2]
    for per_volume in args.spread:
        if per_volume < 1:
            continue
        configs[f"spread {len(work)}x{per_volume}"] = {
            name: pick_more("content+distance", vols[name][0], vols[name][1], first[name], per_volume - 1, None)
            for name in work
        }
        configs[f"spread {len(half)}x{2 * per_volume}"] = {
            name: pick_more("content+distance", vols[name][0], vols[name][1], first[name], 2 * per_volume - 1, None)
            for name in half
        }
    return configs


# ------------------------------------------------------------------------------------------------ training
def train_and_score(task: dict) -> dict:
    """Paint, train one model, predict every work and eval volume; runs in a worker process."""
    from data.io import write_mask
    from data.volume import IGNORE
    from model.config import preset
    from model.inference import load_predictor
    from model.train import dice_per_class, train

    t0 = time.monotonic()
    data, folder = Path(task["data"]), Path(task["folder"])
    shutil.rmtree(folder, ignore_errors=True)
    images, labels = [], []
    for name, painted in task["painted"].items():
        _, truth, lab = read(data, name)
        sparse = np.full(truth.shape, IGNORE, dtype=np.uint8)
        sparse[painted] = truth[painted]
        path = folder / "labels" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mask(sparse, lab, path)
        images.append(str(data / "imagesTr" / name))
        labels.append(str(path))
    cfg = preset(
        "cpu",
        images=images,
        labels=labels,
        axis=AXIS,
        num_classes=NUM_CLASSES,
        out_dir=str(folder / "model"),
        device="cpu",
        threads=task["threads"],
        seed=task["seed"],
        global_stage=False,
        local_stage=False,
        finetune_stage=True,
        widths=tuple(task["widths"]),
        finetune_epochs=1,
        finetune_steps=task["steps"],
        finetune_batch=task["batch"],
        pseudo_stage=False,
        bf16=task["bf16"],
        budget_s=None,  # fixed steps: the configurations differ only in the painted slices
    )
    train(cfg)
    train_s = time.monotonic() - t0
    predictor = load_predictor(folder / "model", "cpu")
    dice = {}
    for name in task["work"] + task["eval"]:
        image, truth, volume = read(data, name)
        pred, _ = predictor.predict(image, volume.spacing)
        dice[name] = float(np.mean(dice_per_class(pred, truth, NUM_CLASSES)))
    shutil.rmtree(folder, ignore_errors=True)
    return {"dice": dice, "train_s": round(train_s, 1), "total_s": round(time.monotonic() - t0, 1)}


def run(args) -> dict:
    data = Path(args.data)
    names = volume_names(data)
    seeds, trainings = {}, {}
    for seed in args.seeds:
        work, held_out = seed_volumes(names, args.split_seed, seed, args.volumes, args.eval_volumes)
        configs = plan_seed(args, seed, work, data)
        seeds[seed] = {"work": work, "eval": held_out, "configs": configs}
        for painted in configs.values():
            key = json.dumps([seed, sorted((n, sorted(map(int, p))) for n, p in painted.items())])
            trainings.setdefault(key, {"seed": seed, "painted": painted})
    tasks = []
    for i, (key, t) in enumerate(trainings.items()):
        s = seeds[t["seed"]]
        tasks.append(
            {
                "key": key,
                "data": str(data),
                "folder": str(Path(args.out) / f"run_{i}"),
                "painted": t["painted"],
                "work": s["work"],
                "eval": s["eval"],
                "seed": t["seed"],
                "threads": args.threads,
                "steps": args.steps,
                "batch": args.batch,
                "widths": args.widths,
                "bf16": args.bf16,
            }
        )
    print(f"{len(tasks)} trainings for {sum(len(s['configs']) for s in seeds.values())} configurations", flush=True)
    scores = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for task, result in zip(tasks, pool.map(train_and_score, tasks)):
            scores[task["key"]] = result
            print(json.dumps({"seed": task["seed"], "total_s": result["total_s"]}), flush=True)
    rows = []
    for seed, s in seeds.items():
        for config, painted in s["configs"].items():
            key = json.dumps([seed, sorted((n, sorted(map(int, p))) for n, p in painted.items())])
            result = scores[key]
            rows.append(
                {
                    "seed": seed,
                    "config": config,
                    "painted": {n: list(map(int, p)) for n, p in painted.items()},
                    "painted_slices": sum(len(p) for p in painted.values()),
                    "painted_volumes": len(painted),
                    "work_dice": float(np.mean([result["dice"][n] for n in s["work"]])),
                    "eval_dice": float(np.mean([result["dice"][n] for n in s["eval"]])),
                    "train_s": result["train_s"],
                }
            )
    return {"seeds": {str(k): {"work": v["work"], "eval": v["eval"]} for k, v in seeds.items()}, "rows": rows}


# ------------------------------------------------------------------------------------------------ output
def by_config(rows: list[dict], key: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        out.setdefault(row["config"], {})[row["seed"]] = row[key]
    return out


def mean_std(values: dict[int, float]) -> str:
    v = np.array(list(values.values()))
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def signed(mean: float, std: float) -> str:
    return f"{mean:+.3f} ± {std:.3f}"


def render(meta: dict, results: dict) -> str:
    a, rows = meta["args"], results["rows"]
    work, ev = by_config(rows, "work_dice"), by_config(rows, "eval_dice")
    slices = {r["config"]: r["painted_slices"] for r in rows}
    lines = [
        "# The first slices: which to paint before a model exists, and over how many volumes",
        "",
        f"Generated by `{meta['command']}` on {meta['started']} (commit `{meta['commit']}`"
        f"{', with uncommitted changes' if meta['dirty'] else ''}); machine: {meta['machine']} "
        f"({meta['cpu']}); load average at start {meta['load_start']}, at the end {meta['load_end']} "
        "(other agents share the cores); "
        f"wall {meta['wall_min']:.1f} min with {a['jobs']} parallel trainings x {a['threads']} torch thread.",
        "",
        f"Setup: MSD hippocampus, split seed {a['split_seed']} from bench/common.split_volumes (141 train / 20 "
        "validation / 40 test, the test split bench/simulated_annotator.py and bench/label_efficiency.py use). "
        f"Per seed ({', '.join(map(str, a['seeds']))}): a permutation of the 40 test volumes gives {a['volumes']} "
        f"work volumes (painted) and {a['eval_volumes']} eval volumes (never painted); the seed is also the "
        "training seed. The simulated clinician paints the middle slice of the hippocampus along axis 0 in every "
        "work volume first, then k more slices per volume chosen by each strategy without a model. One model per "
        f"configuration: U-Net widths {a['widths']}, fine-tune stage only, {a['steps']} steps of batch {a['batch']} "
        "from scratch (fixed steps). Dice = mean of the two hippocampus classes, mean over volumes; **work** = the "
        "painted volumes (whole volume), **eval** = the unpainted ones. Mean ± std over the seeds; paired "
        "difference = per seed (strategy - even), then mean ± std. Nothing was tuned on these volumes.",
        "",
        "## Which k slices after the clinician's first one",
        "",
        "| configuration | painted slices | work Dice | eval Dice | work - even (paired) | eval - even (paired) |",
        "|---|---|---|---|---|---|",
    ]
    configs = [c for c in work if not c.startswith("spread")]
    for c in configs:
        k = c.rsplit("k=", 1)[-1] if "k=" in c else None
        base = f"{BASELINE} k={k}" if k else None
        dw = signed(*paired(work[c], work[base])) if base and base != c and base in work else ""
        de = signed(*paired(ev[c], ev[base])) if base and base != c and base in ev else ""
        lines.append(f"| {c} | {slices[c]} | {mean_std(work[c])} | {mean_std(ev[c])} | {dw} | {de} |")
    spread = [c for c in work if c.startswith("spread")]
    if spread:
        lines += [
            "",
            "## The same paint spread over more volumes, or concentrated on fewer",
            "",
            "V x s = s slices on each of V work volumes (the clinician's middle slice, then content+distance "
            f"picks); Dice over all {a['volumes']} work volumes (unpainted ones included: the masks the project "
            "gets) and the eval volumes.",
            "",
            "| configuration | painted slices | work Dice (all work volumes) | eval Dice | spread - concentrated (work) "
            "| spread - concentrated (eval) |",
            "|---|---|---|---|---|---|",
        ]
        for wide, narrow in zip(spread[::2], spread[1::2]):
            for c in (wide, narrow):
                dw = signed(*paired(work[wide], work[narrow])) if c == wide else ""
                de = signed(*paired(ev[wide], ev[narrow])) if c == wide else ""
                lines.append(f"| {c} | {slices[c]} | {mean_std(work[c])} | {mean_std(ev[c])} | {dw} | {de} |")
    lines += ["", "## Volumes per seed", ""]
    for seed, s in results["seeds"].items():
        lines.append(f"- seed {seed}: work {', '.join(s['work'])}; eval {', '.join(s['eval'])}")
    lines += [
        "",
        f"Training time per model (s, mean over {len(rows)} rows, shared trainings counted once each row): "
        f"{np.mean([r['train_s'] for r in rows]):.0f}. The painted slices of every row are in "
        "bench/out/first_slices/results.json.",
        "",
    ]
    if meta.get("conclusion"):
        lines += ["## What the numbers show", "", meta["conclusion"], ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--md", default=str(DOCS / "first_slices.md"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--volumes", type=int, default=12)
    p.add_argument("--eval-volumes", type=int, default=8)
    p.add_argument("--k", type=int, nargs="+", default=[1, 2], help="more slices per volume after the first")
    p.add_argument(
        "--spread", type=int, nargs="*", default=[1, 2], help="s for the V x s against V/2 x 2s rows (0 skips)"
    )
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--bf16", default="auto", help="bf16 autocast (model/config: auto, on, off)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="trainings in parallel (worker processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training")
    p.add_argument("--conclusion", default="", help="text for the 'What the numbers show' section")
    p.add_argument("--render-only", action="store_true", help="rewrite the md from results.json, train nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    if args.render_only:
        saved = json.loads(results_path.read_text())
        meta, results = saved["meta"], saved["results"]
        if args.conclusion:
            meta["conclusion"] = args.conclusion
    else:
        from bench.common import cpu_model

        start = time.monotonic()
        meta = {
            "command": "python -m bench.first_slices " + " ".join(sys.argv[1:] if argv is None else argv),
            "started": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain")),
            "machine": machine(),
            "cpu": cpu_model(),
            "load_start": [round(x, 1) for x in os.getloadavg()],
            "args": vars(args),
            "conclusion": args.conclusion,
        }
        results = run(args)
        meta["wall_min"] = (time.monotonic() - start) / 60
        meta["load_end"] = [round(x, 1) for x in os.getloadavg()]
        results_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    Path(args.md).write_text(render(meta, results))
    print(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
