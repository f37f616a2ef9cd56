"""A simulated clinician: paint the suggested slice, refresh the model, repeat; Dice against painted slices.

    python -m bench.simulated_annotator                      # the bounded CPU run (see the defaults)
    python -m bench.simulated_annotator --rounds 2 --volumes 2 --eval-volumes 2   # smoke run

Split. The 201 labelled MSD hippocampus volumes are split exactly as bench/label_efficiency.py does
(split seed 0: 141 train / 20 validation / 40 test). The simulated clinician works only on test volumes:
`--volumes` of them are the volumes being annotated ("work" volumes), `--eval-volumes` other test
volumes are never painted and only measure generalisation. No train or validation volume is used, no
stage sees a test volume's label except the painted slices, and nothing here is tuned on these
volumes: the strategies, the mix weights (app/suggest.py MIX_WEIGHTS) and the schedules were fixed
before the run.

Loop, per strategy (all start from the same seed, no pretrained encoder):
  round 1..R: for every work volume, rank its slices along axis 0 with the strategy (using the current
  model's prediction of that volume) and paint the top one (a copy of its ground-truth slice); then
  fine-tune: round 1 from scratch (`--first-steps` steps), later rounds a fine-tune refresh that starts
  from the previous model.pt (`--refresh-steps` steps), as app retrains do (model/config.retrain_config);
  then predict every work and eval volume and record Dice (mean of the two hippocampus classes).
Strategies: random (uniform over unpainted slices), even (largest gap over the whole axis, what the
app does without a model: app/suggest.even_scores), even_extent (largest gap inside the structure's
first..last slice from the ground truth: a person who can see where the hippocampus is),
entropy (slice-mean predictive entropy), margin, disagreement (current vs previous round's labels),
coverage (distance in the model's bottleneck-embedding space to the nearest painted slice,
model/inference.Predictor.embed + app/suggest.coverage_scores),
mix (app/suggest.mix_scores: entropy + distance, the app's default before this benchmark).

Outputs: docs/benchmarks/simulated_annotator.{md,png} and bench/out/simulated_annotator/results.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from app import suggest as sg
from bench.common import ROOT, git, machine, split_volumes
from data.volume import IGNORE

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hippocampus"
OUT = ROOT / "bench" / "out" / "simulated_annotator"
DOCS = ROOT / "docs" / "benchmarks"
NUM_CLASSES, AXIS = 3, 0
STRATEGIES = ("random", "even", "even_extent", "entropy", "margin", "disagreement", "coverage", "mix")
THRESHOLDS = (0.75, 0.80, 0.85)


def dice_mean(pred: np.ndarray, truth: np.ndarray) -> float:
    from model.train import dice_per_class

    return float(np.mean(dice_per_class(pred, truth, NUM_CLASSES)))


def structure_extent(truth: np.ndarray) -> tuple[int, int]:
    """First and last slice (axis 0) holding any foreground: what a person sees before painting."""
    present = np.nonzero((truth > 0).any(axis=(1, 2)))[0]
    return (int(present[0]), int(present[-1])) if present.size else (0, truth.shape[0] - 1)


def pick(
    strategy: str, n: int, painted: list[int], probs, labels, prev_labels, rng, truth=None, embeddings=None
) -> int:
    """The slice (axis 0) a strategy asks the clinician to paint next."""
    if strategy == "random":
        free = [i for i in range(n) if i not in set(painted)]
        return int(rng.choice(free))
    if strategy == "even_extent":  # a person: evenly spaced inside the structure they can see
        return sg.rank(sg.even_scores(n, painted, structure_extent(truth)), painted, 1)[0]
    entropy = margin = disagree = None
    if probs is not None:
        entropy = sg.slice_scores(sg.entropy_map(probs, class_axis=0), AXIS)
        margin = sg.slice_scores(sg.margin_map(probs, class_axis=0), AXIS)
    if labels is not None and prev_labels is not None:
        disagree = sg.disagreement(labels, prev_labels, AXIS)
    scores = sg.strategy_scores(
        strategy, n, painted, entropy=entropy, margin=margin, disagree=disagree, embeddings=embeddings
    )
    return sg.rank(scores, painted, 1)[0]


class Bench:
    def __init__(self, args):
        self.args = args
        from data.io import read_volume

        self.read_volume = read_volume
        data = Path(args.data)
        names = sorted(
            {p.name for p in (data / "imagesTr").iterdir()} & {p.name for p in (data / "labelsTr").iterdir()}
        )
        self.split = split_volumes(names, args.split_seed, 20, 40)
        order = [self.split["test"][i] for i in np.random.default_rng(args.seed).permutation(len(self.split["test"]))]
        self.work_names = order[: args.volumes]
        self.eval_names = order[args.volumes : args.volumes + args.eval_volumes]
        self.vols = {}
        for name in self.work_names + self.eval_names:
            img = read_volume(str(data / "imagesTr" / name))
            lab = read_volume(str(data / "labelsTr" / name))
            self.vols[name] = (
                str(data / "imagesTr" / name),
                np.asarray(img.array),
                np.asarray(lab.array).astype(np.uint8),
                lab,
            )
        self.out = Path(args.out)

    def config(self, out_dir: Path, label_paths: list[str], init_from: str | None, steps: int):
        from model.config import preset

        return preset(
            "cpu",
            images=[self.vols[n][0] for n in self.work_names],
            labels=label_paths,
            axis=AXIS,
            num_classes=NUM_CLASSES,
            out_dir=str(out_dir),
            device="cpu",
            threads=self.args.threads,
            seed=self.args.seed,
            global_stage=False,
            local_stage=False,
            finetune_stage=True,
            widths=tuple(self.args.widths),
            finetune_epochs=1,
            finetune_steps=steps,
            finetune_batch=self.args.batch,
            init_from=init_from,
            budget_s=None,  # fixed steps: reproducible rounds
        )

    def run_strategy(self, strategy: str) -> list[dict]:
        from data.io import write_mask
        from model.inference import load_predictor
        from model.train import train

        rng = np.random.default_rng(1000 + self.args.seed)
        folder = self.out / strategy
        if folder.exists():
            shutil.rmtree(folder)
        painted = {n: [] for n in self.work_names}
        probs, labels, prev_labels, embeddings = {}, {}, {}, {}
        model_dir, rows = None, []
        for r in range(1, self.args.rounds + 1):
            t0 = time.monotonic()
            for name in self.work_names:
                n = self.vols[name][1].shape[AXIS]
                painted[name].append(
                    pick(
                        strategy,
                        n,
                        painted[name],
                        probs.get(name),
                        labels.get(name),
                        prev_labels.get(name),
                        rng,
                        truth=self.vols[name][2],
                        embeddings=embeddings.get(name),
                    )
                )
            label_paths = []
            for name in self.work_names:
                _, _, truth, lab_vol = self.vols[name]
                sparse = np.full(truth.shape, IGNORE, dtype=np.uint8)
                sparse[painted[name]] = truth[painted[name]]
                path = folder / f"labels_r{r}" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                write_mask(sparse, lab_vol, path)
                label_paths.append(str(path))
            out_dir = folder / f"model_r{r}"
            steps = self.args.first_steps if model_dir is None else self.args.refresh_steps
            init = None if model_dir is None else str(model_dir / "model.pt")
            train(self.config(out_dir, label_paths, init, steps))
            train_s = time.monotonic() - t0
            predictor = load_predictor(out_dir, "cpu")
            prev_labels = labels
            probs, labels = {}, {}
            work_dice, eval_dice = [], []
            for name in self.work_names + self.eval_names:
                _, image, truth, volume = self.vols[name]
                pred, p = predictor.predict(image, volume.spacing, return_probs=name in self.work_names)
                (work_dice if name in self.work_names else eval_dice).append(dice_mean(pred, truth))
                if name in self.work_names:
                    probs[name], labels[name] = np.asarray(p, dtype=np.float32), pred
                    if strategy == "coverage":
                        embeddings[name] = predictor.embed(image)
            if model_dir is not None:
                (model_dir / "checkpoint.pt").unlink(missing_ok=True)
                if r > 2:
                    shutil.rmtree(folder / f"model_r{r - 2}", ignore_errors=True)
            model_dir = out_dir
            rows.append(
                {
                    "strategy": strategy,
                    "round": r,
                    "painted_slices": sum(len(v) for v in painted.values()),
                    "painted": {k: list(map(int, v)) for k, v in painted.items()},
                    "work_dice": float(np.mean(work_dice)),
                    "eval_dice": float(np.mean(eval_dice)) if eval_dice else None,
                    "work_dice_per_volume": work_dice,
                    "round_s": round(time.monotonic() - t0, 1),
                    "train_s": round(train_s, 1),
                }
            )
            print(
                json.dumps({k: v for k, v in rows[-1].items() if k not in ("painted", "work_dice_per_volume")}),
                flush=True,
            )
        return rows


# ------------------------------------------------------------------------------------------------ output
def slices_to_reach(rows: list[dict], key: str, threshold: float) -> str:
    for row in rows:
        if row[key] is not None and row[key] >= threshold:
            return str(row["painted_slices"])
    return "not reached"


def plot(results: dict[str, list[dict]], path: Path, key: str = "work_dice") -> None:
    """Dice against painted slices, one line per strategy, drawn with PIL (matplotlib is not installed)."""
    from PIL import Image, ImageDraw

    W, H, L, R, T, B = 900, 560, 70, 170, 40, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [row["painted_slices"] for rows in results.values() for row in rows]
    ys = [row[k] for rows in results.values() for row in rows for k in ("work_dice", "eval_dice") if row[k] is not None]
    x0, x1 = 0, max(xs) if xs else 1
    y0, y1 = max(0.0, np.floor(min(ys) * 10) / 10) if ys else 0.0, 1.0

    def px(x, y):
        return L + (x - x0) / (x1 - x0 or 1) * (W - L - R), H - B - (y - y0) / (y1 - y0 or 1) * (H - T - B)

    d.rectangle([L, T, W - R, H - B], outline="black")
    for yv in np.arange(y0, y1 + 1e-9, 0.1):
        _, yy = px(0, yv)
        d.line([L, yy, W - R, yy], fill=(225, 225, 225))
        d.text((L - 40, yy - 6), f"{yv:.1f}", fill="black")
    for xv in sorted(set(xs)):
        xx, _ = px(xv, y0)
        d.text((xx - 6, H - B + 6), str(xv), fill="black")
    for thr in THRESHOLDS:
        _, yy = px(0, thr)
        d.line([L, yy, W - R, yy], fill=(200, 200, 255))
    d.text((L + (W - L - R) / 2 - 60, H - 30), "painted slices (all work volumes)", fill="black")
    d.text((10, 10), f"simulated annotator: Dice ({key.replace('_', ' ')}; dashed = eval volumes)", fill="black")
    colours = [
        (200, 40, 40),
        (40, 120, 200),
        (40, 160, 60),
        (160, 90, 200),
        (230, 140, 0),
        (0, 0, 0),
        (0, 170, 170),
        (130, 130, 130),
    ]
    for (name, rows), colour in zip(results.items(), colours):
        pts = [px(row["painted_slices"], row["work_dice"]) for row in rows]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=3)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        ev = [px(row["painted_slices"], row["eval_dice"]) for row in rows if row["eval_dice"] is not None]
        for a, b in zip(ev, ev[1:]):  # dashed: every other tenth of each segment
            for s in range(0, 10, 2):
                d.line(
                    [
                        a[0] + (b[0] - a[0]) * s / 10,
                        a[1] + (b[1] - a[1]) * s / 10,
                        a[0] + (b[0] - a[0]) * (s + 1) / 10,
                        a[1] + (b[1] - a[1]) * (s + 1) / 10,
                    ],
                    fill=colour,
                    width=2,
                )
        i = list(results).index(name)
        d.line([W - R + 15, T + 20 + 22 * i, W - R + 45, T + 20 + 22 * i], fill=colour, width=3)
        d.text((W - R + 52, T + 14 + 22 * i), name, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def render(meta: dict, results: dict[str, list[dict]]) -> str:
    a = meta["args"]
    lines = [
        "# Simulated annotator: which slice to paint next",
        "",
        f"Generated by `{meta['command']}` on {meta['started']} (commit `{meta['commit']}`"
        f"{', with uncommitted changes' if meta['dirty'] else ''}); machine: {meta['machine']}; load average at start "
        f"{meta['load_start']}; wall {meta['wall_min']:.1f} min.",
        "",
        f"Setup: {a['volumes']} held-out MSD hippocampus test volumes are annotated (one slice per volume per round, "
        f"axis 0), {a['eval_volumes']} other test volumes are never painted (generalisation). Split seed "
        f"{a['split_seed']} (same test split as bench/label_efficiency.py); **1 seed ({a['seed']})**, so differences "
        "smaller than a few Dice points are within noise. Model: U-Net widths "
        f"{a['widths']}, fine-tune only (no contrastive stages), batch {a['batch']}; round 1 trains "
        f"{a['first_steps']} steps from scratch, every later round is a fine-tune refresh of {a['refresh_steps']} steps "
        "from the previous round's model.pt. Nothing was tuned on these volumes.",
        "",
        "Dice = mean over the two hippocampus classes and over volumes: **work** = the volumes being painted "
        "(whole volume, painted slices included: the masks the clinician gets), **eval** = the unpainted ones.",
        "",
        "## Dice against painted slices (work / eval)",
        "",
    ]
    rounds = max(len(r) for r in results.values())
    strategies = list(results)
    lines.append("| painted slices | " + " | ".join(strategies) + " |")
    lines.append("|---" * (len(strategies) + 1) + "|")
    for i in range(rounds):
        cells = []
        for s in strategies:
            row = results[s][i] if i < len(results[s]) else None
            cells.append(
                "-"
                if row is None
                else f"{row['work_dice']:.3f} / {row['eval_dice']:.3f}"
                if row["eval_dice"] is not None
                else f"{row['work_dice']:.3f}"
            )
        n = next(results[s][i]["painted_slices"] for s in strategies if i < len(results[s]))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Painted slices needed to reach a Dice (work volumes; eval volumes in brackets)",
        "",
        "| strategy | " + " | ".join(f"Dice {t:.2f}" for t in THRESHOLDS) + " | mean Dice over rounds (work) |",
        "|---" * (len(THRESHOLDS) + 2) + "|",
    ]
    for s in strategies:
        rows = results[s]
        cells = [
            f"{slices_to_reach(rows, 'work_dice', t)} ({slices_to_reach(rows, 'eval_dice', t)})" for t in THRESHOLDS
        ]
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {np.mean([r['work_dice'] for r in rows]):.3f} |")
    lines += [
        "",
        "Wall time per round (s, mean): "
        + ", ".join(f"{s} {np.mean([r['round_s'] for r in results[s]]):.0f}" for s in strategies)
        + ".",
        "",
        "![Dice against painted slices](simulated_annotator.png)",
        "",
    ]
    if meta.get("conclusion"):
        lines += ["## What the numbers show", "", meta["conclusion"], ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--md", default=str(DOCS / "simulated_annotator.md"))
    p.add_argument("--png", default=str(DOCS / "simulated_annotator.png"))
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--volumes", type=int, default=4)
    p.add_argument("--eval-volumes", type=int, default=6)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--first-steps", type=int, default=200)
    p.add_argument("--refresh-steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--conclusion", default="", help="text for the 'What the numbers show' section")
    p.add_argument("--render-only", action="store_true", help="rewrite md/png from results.json, train nothing")
    p.add_argument(
        "--merge",
        nargs="*",
        default=[],
        help="with --render-only: more results.json files whose "
        "strategies are added (runs of the same setup split over several invocations)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    if args.render_only:
        saved = json.loads(results_path.read_text())
        meta, results = saved["meta"], saved["results"]
        for extra in args.merge:
            other = json.loads(Path(extra).read_text())
            results.update(other["results"])
            meta["wall_min"] = meta.get("wall_min", 0) + other["meta"].get("wall_min", 0)
            meta["command"] += " ; python -m bench.simulated_annotator " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in other["meta"]["args"].items() if k in ("strategies", "out")
            )
        order = [s for s in STRATEGIES if s in results]
        results = {s: results[s] for s in order}
        if args.conclusion:
            meta["conclusion"] = args.conclusion
    else:
        strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
        unknown = [s for s in strategies if s not in STRATEGIES]
        if unknown:
            raise SystemExit(f"unknown strategies {unknown}; choose from {STRATEGIES}")
        start, load = time.monotonic(), os.getloadavg()
        meta = {
            "command": "python -m bench.simulated_annotator " + " ".join(sys.argv[1:] if argv is None else argv),
            "started": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain")),
            "machine": machine(),
            "load_start": [round(x, 1) for x in load],
            "args": vars(args),
            "conclusion": args.conclusion,
        }
        bench = Bench(args)
        meta["work_volumes"], meta["eval_volumes"] = bench.work_names, bench.eval_names
        results = {}
        for s in strategies:
            results[s] = bench.run_strategy(s)
            meta["wall_min"] = (time.monotonic() - start) / 60
            results_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    plot(results, Path(args.png))
    Path(args.md).write_text(render(meta, results))
    print(f"wrote {args.md} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
