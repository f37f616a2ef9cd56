"""Kept models with and without the clean-up step that puts classes in order along an axis (data/class_order.py).

    python -m bench.class_order OUT [OUT ...] [--rows full+pseudo] [--data DIR] [--json FILE]

Each OUT is a `--keep-models --validate` folder of bench.label_efficiency. For every kept model the "auto"
clean-up is decided twice as the product decides it (model/postprocess.py: the raw masks of its first
`cleanup_volumes` painted volumes against their paint), once without the step (`off`) and once with it
(`on`), and the model predicts as the product predicts (its flips and smoothing along the slicing axis)
three sets, each scored as the mean Dice over the classes against the full truth:
- `val`: the split's validation volumes; `test`: its held-out test volumes;
- `painted`: the model's painted volumes as a clinician downloads them (paint taken as certain).
Nothing is retrained: one raw prediction per volume, both decisions applied to it. Printed per model, then
per OUT the mean ± std of off, on and the paired on − off with each model's difference.

    python -m bench.class_order --pair BASE_JSON VARIANT_JSON

scores nothing: it pairs two `--json` files by seed and budget (one kept model each; the row may differ, as in
full − supervised) and prints variant − base for every set, with and without the step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.common import SHARED_DATA
from bench.paired import _pm
from bench.slice_smoothing import model_dirs
from data.annotations import impose_paint
from data.io import read_volume
from data.mask_cleanup import choose_cleanup
from model.inference import load_predictor
from model.train import dice_per_class

SETS = ("val", "test", "painted")
WAYS = ("off", "on")


def mean_dice(pred: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean(dice_per_class(pred, truth, k)))


def evaluate_model(run_dir: Path, split: dict, data: Path) -> dict:
    predictor = load_predictor(run_dir, device="cpu")
    k = predictor.num_classes
    config = json.loads((run_dir / "config.json").read_text())
    painted_pairs = [(i, lab) for i, lab in zip(config["images"], config["labels"]) if lab]
    raws, painted, downloads = [], [], []
    for image_path, label_path in painted_pairs:
        volume = read_volume(image_path)
        paint = np.asarray(read_volume(label_path).array)
        own, certain, _ = predictor.predict_with_paint(np.asarray(volume.array), paint, volume.spacing, clean=False)
        if len(raws) < config["cleanup_volumes"]:
            raws.append(own)
            painted.append(paint)
        truth = np.asarray(read_volume(str(data / "labelsTr" / Path(image_path).name)).array)
        downloads.append((certain, paint, truth))
    decisions = {way: choose_cleanup(raws, painted, k, order=way == "on") for way in WAYS}
    scores = {s: {w: [] for w in WAYS} for s in SETS}
    for way, (cleanup, _) in decisions.items():
        for certain, paint, truth in downloads:
            scores["painted"][way].append(mean_dice(impose_paint(cleanup.apply(certain), paint), truth, k))
    for which in ("val", "test"):
        for name in split[which]:
            volume = read_volume(str(data / "imagesTr" / name))
            truth = np.asarray(read_volume(str(data / "labelsTr" / name)).array)
            raw = predictor.predict(np.asarray(volume.array), volume.spacing, clean=False)[0]
            for way, (cleanup, _) in decisions.items():
                scores[which][way].append(mean_dice(cleanup.apply(raw), truth, k))
    return {
        "axis": decisions["on"][0].classes_along,
        "shares": {a: r["share"] for a, r in (decisions["on"][1]["order"]["axes"] or {}).items()},
        **{s: {w: float(np.mean(v)) for w, v in by.items()} for s, by in scores.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outs", type=Path, nargs="*")
    parser.add_argument("--rows", default="full+pseudo", help="comma-separated rows of the kept models to score")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "hippocampus")
    parser.add_argument("--json", type=Path, help="also write every model's scores here")
    parser.add_argument("--pair", type=Path, nargs=2, metavar=("BASE_JSON", "VARIANT_JSON"))
    args = parser.parse_args(argv)
    if args.pair:
        if args.outs:
            parser.error("--pair scores nothing: give it two --json files and no OUT")
        base, variant = (by_seed_and_budget(path, parser) for path in args.pair)
        print(render_pairs(base, variant))
        return 0
    if not args.outs:
        parser.error("give at least one OUT folder to score, or --pair BASE_JSON VARIANT_JSON")
    rows = set(args.rows.split(","))
    everything = {}
    for out in args.outs:
        if not (out / "results.json").is_file():
            parser.error(f"{out / 'results.json'} does not exist: give a --out folder of bench.label_efficiency")
        split = json.loads((out / "results.json").read_text())["meta"]["split"]
        per_model = {}
        for run_dir in model_dirs(out):
            if run_dir.name not in rows:
                continue
            job = "/".join(run_dir.relative_to(out / "runs").parts)
            per_model[job] = result = evaluate_model(run_dir, split, args.data)
            cells = " ".join(f"{s} {result[s]['off']:.4f} -> {result[s]['on']:.4f}" for s in SETS)
            print(f"{out.name}/{job}: axis {result['axis']} (shares {result['shares']}) {cells}", flush=True)
        if not per_model:
            parser.error(f"no kept model of rows {sorted(rows)} in {out}")
        everything[str(out)] = per_model
        print(f"\n{out}, {len(per_model)} models\n")
        print("| set | off | on | on − off | per model |\n|---|---|---|---|---|")
        for s in SETS:
            off = [m[s]["off"] for m in per_model.values()]
            on = [m[s]["on"] for m in per_model.values()]
            diff = [b - a for a, b in zip(off, on)]
            each = ", ".join(f"{d:+.3f}" for d in diff)
            print(f"| {s} | {_pm(off)} | {_pm(on)} | {_pm(diff, signed=True)} | {each} |")
        print()
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    return 0


def by_seed_and_budget(path: Path, parser: argparse.ArgumentParser) -> dict[str, dict]:
    """{"seed/budget": scores} of a --json file; each seed and budget must have one kept model."""
    if not path.is_file():
        parser.error(f"{path} does not exist: give files written by --json")
    models = {}
    for per_model in json.loads(path.read_text()).values():
        for job, scores in per_model.items():
            key = "/".join(job.split("/")[:2])
            if key in models:
                parser.error(f"{path} holds two models of {key}: pair files with one row each")
            models[key] = scores
    return models


def render_pairs(base: dict[str, dict], variant: dict[str, dict]) -> str:
    jobs = sorted(set(base) & set(variant))
    if not jobs:
        return "no seed and budget in both files"
    lines = [
        f"{len(jobs)} paired models ({', '.join(jobs)})\n",
        "| set | step | base | variant | variant − base | per model |",
        "|---|---|---|---|---|---|",
    ]
    for s in SETS:
        for way in reversed(WAYS):
            a = [base[j][s][way] for j in jobs]
            b = [variant[j][s][way] for j in jobs]
            diff = [y - x for x, y in zip(a, b)]
            each = ", ".join(f"{d:+.3f}" for d in diff)
            lines.append(f"| {s} | {way} | {_pm(a)} | {_pm(b)} | {_pm(diff, signed=True)} | {each} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
