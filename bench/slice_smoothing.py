"""Does smoothing a 2D model's softmax along its slicing axis raise the 3D Dice?

    python -m bench.slice_smoothing OUT_DIR [OUT_DIR ...] [--sigmas 0.5,1,2] [--json FILE]

Each OUT_DIR is a `--keep-models` folder of bench.label_efficiency (its results.json names the split). For
every kept model in it, every validation and test volume is predicted once, with the mirrors (flip
test-time augmentation, as the product predicts) and without the model's own smoothing, and the softmax of
each slice is averaged with its neighbours' along the model's slicing axis by a Gaussian of std `sigma` mm
(`smooth_along`, in slices of the volume's spacing, with the weights `predict_smooth_mm` uses) before the
argmax. A 2D network labels each slice on its own, so along that axis alone nothing makes neighbouring
slices agree. Each variant then gets the product's "auto" clean-up, chosen per variant on the painted
voxels of the model's labelled volumes, as bench.label_efficiency_eval does for flip+auto. Sigma 0 is that
benchmark's flip+auto for a model that does not smooth.

Printed: per model the mean Dice of each sigma on the validation and the test volumes, then per OUT_DIR
the mean ± std over its models of each sigma minus sigma 0 (paired: same model, same volumes). Choose a
sigma on the validation volumes; the test volumes only report it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.common import SHARED_DATA
from bench.error_split import results_of
from data.io import read_volume
from data.mask_cleanup import choose_cleanup
from model.inference import load_predictor, predict_array, smoothing_slices, smoothing_weights
from model.train import dice_per_class


def smooth_along(probs: np.ndarray, axis: int, sigma: float) -> np.ndarray:
    """probs (K, *shape) averaged along spatial `axis` by a normalised Gaussian of `sigma` slices; the end
    slices repeat past the volume's ends. sigma 0 returns probs unchanged."""
    if sigma <= 0:
        return probs
    w = smoothing_weights(sigma).numpy()
    radius = len(w) // 2
    moved = np.moveaxis(probs.astype(np.float32), axis + 1, 1)
    padded = np.concatenate([moved[:, :1].repeat(radius, 1), moved, moved[:, -1:].repeat(radius, 1)], axis=1)
    n = moved.shape[1]
    out = sum(wi * padded[:, i : i + n] for i, wi in enumerate(w))
    return np.moveaxis(out, 1, axis + 1)


def model_dirs(out_dir: Path) -> list[Path]:
    return sorted(p.parent for p in out_dir.glob("runs/seed*/*/*/model.pt"))


def evaluate_model(run_dir: Path, split: dict, sigmas: list[float], data: Path) -> dict:
    predictor = load_predictor(run_dir, device="cpu")
    axis = int(predictor.info["axis"])
    k = predictor.num_classes
    config = json.loads((run_dir / "config.json").read_text())

    def labels_by_sigma(volume) -> dict[float, np.ndarray]:
        image = np.asarray(volume.array)
        labels, probs = predict_array(
            predictor.net, image, predictor.info, predictor.runtime, k, return_probs=True, flip=True
        )
        # sigma 0 keeps the argmax of the float32 softmax, as the product's labels are; the probabilities
        # come back as float16, whose rounding can flip a near tie
        return {
            s: smooth_along(probs, axis, smoothing_slices(s, volume.spacing, axis)).argmax(axis=0).astype(np.uint8)
            if s
            else labels
            for s in sigmas
        }

    painted_preds: dict[float, list[np.ndarray]] = {s: [] for s in sigmas}
    painted = []
    for image_path, label_path in zip(config["images"], config["labels"]):
        if not label_path:
            continue
        for s, pred in labels_by_sigma(read_volume(image_path)).items():
            painted_preds[s].append(pred)
        painted.append(np.asarray(read_volume(label_path).array))
    cleanups = {s: choose_cleanup(painted_preds[s], painted, k)[0] for s in sigmas}
    scores: dict[str, dict[float, list[float]]] = {}
    for part in ("val", "test"):
        scores[part] = {s: [] for s in sigmas}
        for name in split[part]:
            image = read_volume(str(data / "imagesTr" / name))
            truth = np.asarray(read_volume(str(data / "labelsTr" / name)).array)
            for s, pred in labels_by_sigma(image).items():
                scores[part][s].append(float(np.mean(dice_per_class(cleanups[s].apply(pred), truth, k))))
    return {part: {str(s): float(np.mean(v)) for s, v in by.items()} for part, by in scores.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dirs", type=Path, nargs="+")
    parser.add_argument("--sigmas", default="0.5,1,2", help="Gaussian stds in mm, besides 0")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "hippocampus")
    parser.add_argument("--json", type=Path, help="write every model's scores here")
    args = parser.parse_args(argv)
    sigmas = [0.0] + [float(s) for s in args.sigmas.split(",") if float(s) > 0]
    everything = {}
    for out_dir in args.out_dirs:
        runs = model_dirs(out_dir)
        if not runs:
            raise SystemExit(f"no kept model under {out_dir}/runs: run bench.label_efficiency with --keep-models")
        split = results_of(out_dir)["meta"]["split"]
        per_model = {}
        for run_dir in runs:
            per_model[str(run_dir.relative_to(out_dir))] = result = evaluate_model(run_dir, split, sigmas, args.data)
            cells = " | ".join(f"{result['val'][str(s)]:.4f} / {result['test'][str(s)]:.4f}" for s in sigmas)
            print(f"{out_dir.name} {run_dir.relative_to(out_dir)}: val / test at sigma {sigmas}: {cells}", flush=True)
        everything[str(out_dir)] = per_model
        for part in ("val", "test"):
            for s in sigmas[1:]:
                d = [m[part][str(s)] - m[part]["0.0"] for m in per_model.values()]
                std = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
                print(f"{out_dir.name} {part} sigma {s:g} - 0: {np.mean(d):+.4f} ± {std:.4f} (n={len(d)})")
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
