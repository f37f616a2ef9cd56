"""Paired validation Dice of kept models with the product's inference, for settings that change inference too.

    python -m bench.product_val BASE_OUT VARIANT_OUT [--names base,variant] [--volumes val|test] [--data DIR]
                                [--json FILE]

Each OUT is a `--keep-models --validate` folder of bench.label_efficiency. bench.paired decides on the plain
validation Dice that training records; a setting that also changes how the model predicts (its mirrors, its
clean-up) is judged here instead: each kept model predicts the split's validation volumes as the product
predicts them (`Predictor.predict` with the model's own `predict_flip`, smoothing by the volume's spacing and
the decided clean-up) and is scored as the mean Dice over the classes. Models pair by their job (seed /
budget / row); the table prints both means, the paired difference (mean ± std over the jobs) and each job's.
`--volumes test` scores the held-out test volumes the same way, to report, never to decide.
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
from data.io import read_volume
from model.inference import load_predictor
from model.train import dice_per_class


def job_of(run_dir: Path, out: Path) -> str:
    return "/".join(run_dir.relative_to(out / "runs").parts)


def dice_as_predicted(run_dir: Path, names: list[str], data: Path) -> float:
    """Mean over the volumes `names` of each one's mean class Dice, predicted as the product predicts."""
    predictor = load_predictor(run_dir, device="cpu")
    per_volume = []
    for name in names:
        volume = read_volume(str(data / "imagesTr" / name))
        truth = np.asarray(read_volume(str(data / "labelsTr" / name)).array)
        pred = predictor.predict(np.asarray(volume.array), volume.spacing)[0]
        per_volume.append(float(np.mean(dice_per_class(pred, truth, predictor.num_classes))))
    return float(np.mean(per_volume))


def scores_of(out: Path, data: Path, volumes: str = "val") -> dict[str, float]:
    results = json.loads((out / "results.json").read_text())
    names = results["meta"]["split"][volumes]
    return {job_of(d, out): dice_as_predicted(d, names, data) for d in model_dirs(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("variant", type=Path)
    parser.add_argument("--names", default="base,variant", help="comma-separated: the base's name, the variant's")
    parser.add_argument("--volumes", choices=("val", "test"), default="val", help="the split's volumes to score")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "hippocampus")
    parser.add_argument("--json", type=Path, help="also write the per-job scores here")
    args = parser.parse_args(argv)
    names = args.names.split(",")
    if len(names) != 2:
        parser.error("--names takes two comma-separated names")
    for out in (args.base, args.variant):
        if not (out / "results.json").is_file():
            parser.error(f"{out / 'results.json'} does not exist: give a --out folder of bench.label_efficiency")
    splits = [json.loads((out / "results.json").read_text())["meta"]["split"] for out in (args.base, args.variant)]
    if splits[0] != splits[1]:
        print("the two folders ran on different splits; their models cannot be paired", file=sys.stderr)
        return 2
    base, variant = scores_of(args.base, args.data, args.volumes), scores_of(args.variant, args.data, args.volumes)
    jobs = sorted(set(base) & set(variant))
    if not jobs:
        print("no job has a kept model in both folders (run with --keep-models)", file=sys.stderr)
        return 2
    diff = [variant[j] - base[j] for j in jobs]
    print(
        f"| {'validation' if args.volumes == 'val' else 'held-out test'}, product inference | {names[0]} | {names[1]} | paired, {names[1]} - {names[0]} | per job |"
    )
    print("|---|---|---|---|---|")
    b, v = [base[j] for j in jobs], [variant[j] for j in jobs]
    print(
        f"| mean class Dice | {_pm(b)} | {_pm(v)} | {_pm(diff, signed=True)} | {', '.join(f'{d:+.3f}' for d in diff)} |"
    )
    print(f"\nPaired jobs ({len(jobs)}): {', '.join(jobs)}")
    if args.json:
        args.json.write_text(json.dumps({"jobs": jobs, names[0]: b, names[1]: v}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
