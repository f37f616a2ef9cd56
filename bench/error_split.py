"""Where a model's Dice goes: finding the structure (foreground against background) or telling its classes apart.

    python -m bench.error_split RUN_DIR [--volumes val|test] [--limit 10] [--by-position] [--strips]

RUN_DIR is a kept model of bench.label_efficiency (`--keep-models`; the folder holding model.pt) inside a
`--out` folder, whose results.json names the split. For each volume of the split, the model's plain
prediction (no mirrors, no clean-up) is compared with the truth three ways:
- foreground Dice: every class merged into one;
- class Dice: per class, averaged (what the benchmarks report);
- confused: the share of voxels both call foreground that carry the wrong class.
If confused is small, the classes are not the problem and a better class cue cannot raise the Dice by
more than the gap between foreground and class Dice.

`--by-position` adds where along the model's slicing axis the wrong voxels lie: each slice is placed in
the true structure's extent along that axis (0 = its first slice, 1 = its last; below 0 and above 1 lie
outside it) and its false-positive, missed and confused voxels are summed per bin over the volumes.
`--strips` prints, for each volume, the majority class of every slice along that axis for the truth and
the prediction (`.` = no structure): where the predicted structure starts, stops and changes class.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.common import SHARED_DATA
from bench.label_efficiency_protocol import structure_extent
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


POSITION_EDGES = (-0.3, -0.1, 0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3)


def position_errors(pred: np.ndarray, truth: np.ndarray, axis: int, edges=POSITION_EDGES) -> dict[str, np.ndarray]:
    """Voxel counts per bin of the slice's place in the structure's extent along `axis` (np.digitize of
    the place by `edges`: bin 0 lies below edges[0], the last above edges[-1])."""
    other = tuple(a for a in range(truth.ndim) if a != axis)
    lo, hi = structure_extent(truth, axis)
    place = (np.arange(truth.shape[axis]) - lo) / max(1, hi - lo)
    bins = np.digitize(place, edges)
    sums = {
        "truth": (truth > 0).sum(axis=other),
        "false positive": ((pred > 0) & (truth == 0)).sum(axis=other),
        "missed": ((pred == 0) & (truth > 0)).sum(axis=other),
        "confused": ((pred > 0) & (truth > 0) & (pred != truth)).sum(axis=other),
    }
    return {k: np.bincount(bins, weights=v, minlength=len(edges) + 1) for k, v in sums.items()}


def position_table(counts: dict[str, np.ndarray], edges=POSITION_EDGES) -> str:
    names = [f"< {edges[0]}"] + [f"{a} .. {b}" for a, b in zip(edges[:-1], edges[1:])] + [f"> {edges[-1]}"]
    wrong = counts["false positive"] + counts["missed"] + counts["confused"]
    lines = [
        "| place in the extent | truth voxels | false positive | missed | confused | share of wrong voxels |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, name in enumerate(names):
        cells = [int(counts[k][i]) for k in ("truth", "false positive", "missed", "confused")]
        share = wrong[i] / max(1.0, wrong.sum())
        lines.append(f"| {name} | " + " | ".join(str(c) for c in cells) + f" | {share:.2f} |")
    return "\n".join(lines)


def class_strip(labels: np.ndarray, axis: int) -> str:
    """The majority foreground class of each slice along `axis` as a digit, `.` where there is none."""
    out = []
    for i in range(labels.shape[axis]):
        found = np.take(labels, i, axis=axis)
        found = found[found > 0]
        out.append(str(int(np.bincount(found).argmax())) if found.size else ".")
    return "".join(out)


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
    parser.add_argument("--by-position", action="store_true", help="wrong voxels by place along the slicing axis")
    parser.add_argument("--strips", action="store_true", help="each slice's majority class, truth and prediction")
    args = parser.parse_args(argv)
    if not (args.run_dir / "model.pt").is_file():
        raise SystemExit(f"{args.run_dir / 'model.pt'} does not exist: run bench.label_efficiency with --keep-models")
    names = results_of(args.run_dir)["meta"]["split"][args.volumes][: args.limit]
    predictor = load_predictor(args.run_dir, device="cpu")
    rows, by_place, strips = [], None, []
    axis = int(predictor.info["axis"])
    print(f"| {args.volumes} volume | foreground Dice | class Dice | confused |\n|---|---|---|---|")
    for name in names:
        image = np.asarray(read_volume(str(args.data / "imagesTr" / name)).array)
        truth = np.asarray(read_volume(str(args.data / "labelsTr" / name)).array)
        pred, _ = predict_array(predictor.net, image, predictor.info, predictor.runtime, predictor.num_classes)
        scores = split_scores(pred, truth, predictor.num_classes)
        rows.append(scores)
        if args.by_position:
            counts = position_errors(pred, truth, axis)
            by_place = counts if by_place is None else {k: by_place[k] + v for k, v in counts.items()}
        if args.strips:
            strips.append(f"{name}\n  truth       {class_strip(truth, axis)}\n  prediction  {class_strip(pred, axis)}")
        print(f"| {name} | {scores['foreground']:.3f} | {scores['classes']:.3f} | {scores['confused']:.3f} |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("foreground", "classes", "confused")}
    print(f"| mean of {len(rows)} | {mean['foreground']:.3f} | {mean['classes']:.3f} | {mean['confused']:.3f} |")
    if strips:
        print(f"\nMajority class of each slice along axis {axis} (. = no structure):\n")
        print("\n".join(strips))
    if by_place is not None:
        print(f"\nWrong voxels by place along axis {axis}, summed over the {len(rows)} volumes:\n")
        print(position_table(by_place))
    return 0


if __name__ == "__main__":
    sys.exit(main())
