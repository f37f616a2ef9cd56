"""The masks a clinician gets back for the volumes they painted: does keeping the painted slices help?

    python -m bench.painted_slices OUT_DIR [OUT_DIR ...] [--json FILE]

Each OUT_DIR is a `--keep-models` folder of bench.label_efficiency. For every kept model, each of its
painted (labelled) volumes is predicted as the product predicts (the model's flips, smoothing along the
slicing axis and decided clean-up) in three ways, and scored against the volume's full truth:

- `model`: the model's mask alone (bench.label_efficiency's `labelled` flip+auto);
- `kept`: the same mask with every painted voxel set to its painted value afterwards;
- `certain`: the painted voxels taken as certain inside the prediction (`Predictor.predict(painted=...)`):
  their softmax is the painted one-hot before the smoothing along the slicing axis, so a painted slice
  pulls its neighbours, then the clean-up, then the painted values again.

Dice is the mean over the classes, per volume, averaged over the model's painted volumes; `unpainted` is the
same over the voxels of the slices nobody painted (the painted slices excluded from truth and mask), which
shows whether a variant changes anything beyond the painted slices themselves. Held-out volumes have no paint,
so their masks are the same in all three ways and are not run. Printed per model, then per OUT_DIR the mean ±
std over its models of each variant and of each variant minus `model` (paired: same model, same volumes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.slice_smoothing import model_dirs
from data.annotations import impose_paint
from data.io import read_volume
from data.volume import IGNORE
from model.inference import load_predictor
from model.train import dice_per_class

VARIANTS = ("model", "kept", "certain")


def unpainted_dice(pred: np.ndarray, truth: np.ndarray, painted: np.ndarray, k: int) -> float:
    """Mean class Dice over the voxels no painted slice holds (each painted voxel set to background in both)."""
    mask = painted != IGNORE
    return float(np.mean(dice_per_class(np.where(mask, 0, pred), np.where(mask, 0, truth), k)))


def evaluate_model(run_dir: Path, truth_dir: Path) -> dict:
    predictor = load_predictor(run_dir, device="cpu")
    k = predictor.num_classes
    config = json.loads((run_dir / "config.json").read_text())
    scores: dict[str, dict[str, list[float]]] = {v: {"all": [], "unpainted": []} for v in VARIANTS}
    for image_path, label_path in zip(config["images"], config["labels"]):
        if not label_path:
            continue
        volume = read_volume(image_path)
        image = np.asarray(volume.array)
        painted = np.asarray(read_volume(label_path).array)
        truth = np.asarray(read_volume(str(truth_dir / Path(image_path).name)).array)
        alone = predictor.predict(image, volume.spacing)[0]
        masks = {
            "model": alone,
            "kept": impose_paint(alone, painted),
            "certain": predictor.predict(image, volume.spacing, painted=painted)[0],
        }
        for variant, pred in masks.items():
            scores[variant]["all"].append(float(np.mean(dice_per_class(pred, truth, k))))
            scores[variant]["unpainted"].append(unpainted_dice(pred, truth, painted, k))
    return {v: {part: float(np.mean(d)) for part, d in by.items()} for v, by in scores.items()}


def mean_std(values: list[float], sign: str = "") -> str:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return f"{np.mean(values):{sign}.3f} ± {std:.3f}"


def summary(per_model: dict) -> list[str]:
    """Markdown rows: each variant's mean ± std over the models, and its paired difference to `model`."""
    rows = []
    for part in ("all", "unpainted"):
        for variant in VARIANTS:
            values = [m[variant][part] for m in per_model.values()]
            diff = [m[variant][part] - m["model"][part] for m in per_model.values()]
            paired = "–" if variant == "model" else mean_std(diff, "+")
            rows.append(f"| {part} | {variant} | {mean_std(values)} | {paired} | {len(values)} |")
    return rows


def report_kept_models(
    out_dirs: list[Path], evaluate, cells, table_head, summary, json_path: Path | None = None
) -> dict:
    """Scores every kept model under each OUT_DIR with `evaluate(run_dir)`, printing a line per model
    (`cells(result)`) and per OUT_DIR a table (`table_head(out_dir)`, then `summary(per_model)`'s rows);
    writes {out_dir: {run: result}} to `json_path` when given, and returns it."""
    everything = {}
    for out_dir in out_dirs:
        runs = model_dirs(out_dir)
        if not runs:
            raise SystemExit(f"no kept model under {out_dir}/runs: run bench.label_efficiency with --keep-models")
        per_model = {}
        for run_dir in runs:
            per_model[str(run_dir.relative_to(out_dir))] = result = evaluate(run_dir)
            print(f"{out_dir.name} {run_dir.relative_to(out_dir)} {cells(result)}", flush=True)
        everything[str(out_dir)] = per_model
        print(f"\n{table_head(out_dir)}")
        print("\n".join(summary(per_model)) + "\n")
    if json_path:
        json_path.write_text(json.dumps(everything, indent=1))
    return everything


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dirs", type=Path, nargs="+")
    parser.add_argument("--truth", type=Path, help="the full label volumes (default: the shared hippocampus labelsTr)")
    parser.add_argument("--json", type=Path, help="write every model's scores here")
    args = parser.parse_args(argv)
    from bench.common import SHARED_DATA

    truth_dir = args.truth or SHARED_DATA / "hippocampus" / "labelsTr"
    report_kept_models(
        args.out_dirs,
        lambda run_dir: evaluate_model(run_dir, truth_dir),
        lambda result: (
            "(all / unpainted): "
            + ", ".join(f"{v} {result[v]['all']:.4f} / {result[v]['unpainted']:.4f}" for v in VARIANTS)
        ),
        lambda out_dir: (
            f"{out_dir}\n\n| voxels | variant | Dice | minus model (paired) | models |\n|---|---|---|---|---:|"
        ),
        summary,
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
