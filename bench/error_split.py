"""Where a model's Dice goes: finding the structure (foreground against background) or telling its classes apart.

    python -m bench.error_split RUN_DIR [--volumes val|test] [--limit 10]

RUN_DIR is a kept model of bench.label_efficiency (`--keep-models`; the folder holding model.pt) inside a
`--out` folder, whose results.json names the split. For each volume of the split, the model's plain
prediction (no mirrors, no clean-up) is compared with the truth three ways:
- foreground Dice: every class merged into one;
- class Dice: per class, averaged (what the benchmarks report);
- confused: the share of voxels both call foreground that carry the wrong class.
If confused is small, the classes are not the problem and a better class cue cannot raise the Dice by
more than the gap between foreground and class Dice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.common import SHARED_DATA
from data.io import read_volume
from model.inference import load_predictor, predict_array


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def split_scores(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, float]:
    both = (pred > 0) & (truth > 0)
    return {
        "foreground": dice(pred > 0, truth > 0),
        "classes": float(np.mean([dice(pred == c, truth == c) for c in range(1, num_classes)])),
        "confused": float(((pred != truth) & both).sum() / max(1, int(both.sum()))),
    }


def results_of(run_dir: Path) -> dict:
    for folder in [run_dir, *run_dir.parents]:
        if (folder / "results.json").is_file():
            return json.loads((folder / "results.json").read_text())
    raise SystemExit(f"no results.json of bench.label_efficiency above {run_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--volumes", choices=("val", "test"), default="val")
    parser.add_argument("--limit", type=int, default=10, help="the first N volumes of the split")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "hippocampus")
    args = parser.parse_args(argv)
    if not (args.run_dir / "model.pt").is_file():
        raise SystemExit(f"{args.run_dir / 'model.pt'} does not exist: run bench.label_efficiency with --keep-models")
    names = results_of(args.run_dir)["meta"]["split"][args.volumes][: args.limit]
    predictor = load_predictor(args.run_dir, device="cpu")
    rows = []
    print(f"| {args.volumes} volume | foreground Dice | class Dice | confused |\n|---|---|---|---|")
    for name in names:
        image = np.asarray(read_volume(str(args.data / "imagesTr" / name)).array)
        truth = np.asarray(read_volume(str(args.data / "labelsTr" / name)).array)
        pred, _ = predict_array(predictor.net, image, predictor.info, predictor.runtime, predictor.num_classes)
        scores = split_scores(pred, truth, predictor.num_classes)
        rows.append(scores)
        print(f"| {name} | {scores['foreground']:.3f} | {scores['classes']:.3f} | {scores['confused']:.3f} |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("foreground", "classes", "confused")}
    print(f"| mean of {len(rows)} | {mean['foreground']:.3f} | {mean['classes']:.3f} | {mean['confused']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
