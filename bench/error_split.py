"""Where a model's Dice goes: finding the structure (foreground against background) or telling its classes apart.

    python -m bench.error_split RUN_DIR [--volumes val|test] [--limit 10] [--by-position] [--strips]
                                [--ceilings] [--product]

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
`--ceilings` adds two scores that use the truth, to size a fix before building one (never a result):
- cut to the true extent: the class Dice with every predicted voxel outside the true structure's first..last
  slice along the model's axis removed (what perfect knowledge of where the structure ends would give);
- classes in one cut: the class Dice with the predicted foreground relabelled so that one class lies before a
  single cut along that axis and the other after it, the cut and order that agree with most predicted voxels
  (uses the prediction alone; for two classes that follow each other along the axis, as the MSD hippocampus's).
`--product` predicts as the product does (the model's flips, smoothing along the slicing axis and clean-up)
instead of the plain network output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.common import SHARED_DATA
from bench.label_efficiency_protocol import structure_extent
from data.class_order import in_order
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


def cut_to_extent(pred: np.ndarray, truth: np.ndarray, axis: int) -> np.ndarray:
    """`pred` with every slice along `axis` outside the truth's structure extent set to background."""
    lo, hi = structure_extent(truth, axis)
    inside = np.zeros(pred.shape[axis], dtype=bool)
    inside[lo : hi + 1] = True
    shape = [-1 if a == axis else 1 for a in range(pred.ndim)]
    return np.where(inside.reshape(shape), pred, 0).astype(pred.dtype)


def classes_in_one_cut(pred: np.ndarray, axis: int) -> np.ndarray:
    """The foreground of a two-class `pred` relabelled as class a before one cut along `axis` and class b
    from it on, (a, b) = (1, 2) or (2, 1) and the cut chosen to keep the most predicted labels (the product's
    clean-up step of data/class_order.py, along the model's own axis)."""
    return in_order(pred, axis, (1, 2))


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
    parser.add_argument("--ceilings", action="store_true", help="class Dice cut to the true extent / in one cut")
    parser.add_argument("--product", action="store_true", help="predict with the model's flips and clean-up")
    args = parser.parse_args(argv)
    if not (args.run_dir / "model.pt").is_file():
        raise SystemExit(f"{args.run_dir / 'model.pt'} does not exist: run bench.label_efficiency with --keep-models")
    names = results_of(args.run_dir)["meta"]["split"][args.volumes][: args.limit]
    predictor = load_predictor(args.run_dir, device="cpu")
    rows, by_place, strips = [], None, []
    axis = int(predictor.info["axis"])
    columns = ["foreground", "classes", "confused"] + (["cut to extent", "one cut"] if args.ceilings else [])
    if args.ceilings and predictor.num_classes != 3:
        raise SystemExit("--ceilings needs a model with two classes")
    header = " | ".join(["foreground Dice", "class Dice", "confused"] + columns[3:])
    print(f"| {args.volumes} volume | {header} |\n|---|" + "---|" * len(columns))
    for name in names:
        volume = read_volume(str(args.data / "imagesTr" / name))
        image = np.asarray(volume.array)
        truth = np.asarray(read_volume(str(args.data / "labelsTr" / name)).array)
        if args.product:
            pred = predictor.predict(image, volume.spacing)[0]
        else:
            pred, _ = predict_array(predictor.net, image, predictor.info, predictor.runtime, predictor.num_classes)
        scores = split_scores(pred, truth, predictor.num_classes)
        if args.ceilings:
            scores["cut to extent"] = split_scores(cut_to_extent(pred, truth, axis), truth, 3)["classes"]
            scores["one cut"] = split_scores(classes_in_one_cut(pred, axis), truth, 3)["classes"]
        rows.append(scores)
        if args.by_position:
            counts = position_errors(pred, truth, axis)
            by_place = counts if by_place is None else {k: by_place[k] + v for k, v in counts.items()}
        if args.strips:
            strips.append(f"{name}\n  truth       {class_strip(truth, axis)}\n  prediction  {class_strip(pred, axis)}")
        print(f"| {name} | " + " | ".join(f"{scores[k]:.3f}" for k in columns) + " |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in columns}
    print(f"| mean of {len(rows)} | " + " | ".join(f"{mean[k]:.3f}" for k in columns) + " |")
    if strips:
        print(f"\nMajority class of each slice along axis {axis} (. = no structure):\n")
        print("\n".join(strips))
    if by_place is not None:
        print(f"\nWrong voxels by place along axis {axis}, summed over the {len(rows)} volumes:\n")
        print(position_table(by_place))
    return 0


if __name__ == "__main__":
    sys.exit(main())
