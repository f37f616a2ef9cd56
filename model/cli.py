"""`slicewise train` and `slicewise predict`: argument parsers and runners wired into app/cli.py.

Training always runs as a subprocess (`python -m model.train CONFIG.json`), the same way the web
app starts it, with its progress streamed to this terminal; this module never imports the loop.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from data.atomic import atomic_write
from data.errors import InvalidInput, SlicewiseError
from data.io import read_volume, write_mask
from model.config import DEVICES, PRESETS, preset
from model.inference import load_predictor

_SUFFIXES = (".nii.gz", ".nii", ".zip")


def volume_name(path: Path) -> str:
    """hippocampus_001.nii.gz -> hippocampus_001; a DICOM folder keeps its name."""
    for suffix in _SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _volumes_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InvalidInput(f"{folder} is not a folder")
    found = [
        p
        for p in sorted(folder.iterdir())
        if not p.name.startswith(".") and (p.is_dir() or p.name.lower().endswith(_SUFFIXES))
    ]
    return found


def match_labels(images_dir: Path, labels_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """(images, their labels, images without a label) matched by name; a label without image is an error."""
    images = {volume_name(p): p for p in _volumes_in(images_dir)}
    labels = {volume_name(p): p for p in _volumes_in(labels_dir)}
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise InvalidInput(f"label files without a matching image in {images_dir}: {', '.join(orphans)}")
    if not labels:
        raise InvalidInput(f"no label volumes found in {labels_dir} (expected files named like the images)")
    paired = sorted(set(images) & set(labels))
    unlabeled = sorted(set(images) - set(labels))
    return [str(images[n]) for n in paired], [str(labels[n]) for n in paired], [str(images[n]) for n in unlabeled]


# ---- train ------------------------------------------------------------------------------------
def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--images", required=True, type=Path, help="folder of image volumes (NIfTI, DICOM folders or zips)"
    )
    parser.add_argument(
        "--labels",
        required=True,
        type=Path,
        help="folder of sparse label volumes named like the images (255 = not annotated)",
    )
    parser.add_argument("--unlabeled", type=Path, default=None, help="folder of extra volumes without labels")
    parser.add_argument("--out", required=True, type=Path, help="model folder to create (or resume)")
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override one config value, e.g. --set finetune_epochs=10 (repeatable)",
    )
    return parser


def build_train_config(args: argparse.Namespace) -> dict:
    images, labels, unlabeled = match_labels(args.images, args.labels)
    if args.unlabeled is not None:
        unlabeled += [str(p) for p in _volumes_in(args.unlabeled)]
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    cfg = preset(
        args.preset,
        images=images,
        labels=labels,
        unlabeled=unlabeled,
        out_dir=str(args.out.resolve()),
        device=args.device,
        **overrides,
    )
    return cfg.to_dict()


def run_train(args: argparse.Namespace) -> int:
    try:
        config = build_train_config(args)
    except (SlicewiseError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(config["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "train_config.json"
    config_path.write_text(json.dumps(config, indent=2))
    # stdout/stderr are inherited: the loop's progress lines stream straight to this terminal
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "model.train", str(config_path)], cwd=root).returncode


# ---- predict ----------------------------------------------------------------------------------
def add_predict_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, type=Path, help="model folder written by `slicewise train`")
    parser.add_argument("inputs", nargs="+", type=Path, help="volumes to segment (NIfTI, DICOM folder or zip)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the masks (<name>.nii.gz)")
    parser.add_argument("--probs", action="store_true", help="also write <name>_probs.npy: float16 (classes, i, j, k)")
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="folder of sparse label volumes named like the inputs (255 = not painted), as for train: their painted "
        "voxels are kept exactly in the masks and taken as certain by the smoothing along the slicing axis",
    )
    parser.add_argument("--device", choices=DEVICES, default="auto")
    return parser


def painted_for(path: Path, labels_dir: Path | None, shape) -> np.ndarray | None:
    """The sparse label volume named like `path` in `labels_dir`, if there is one; InvalidInput if it does not fit."""
    if labels_dir is None:
        return None
    found = [p for p in _volumes_in(labels_dir) if volume_name(p) == volume_name(path)]
    if not found:
        return None
    painted = np.asarray(read_volume(found[0]).array)
    if painted.shape != tuple(shape):
        raise InvalidInput(f"label volume {found[0]} has shape {painted.shape}, but the image has {tuple(shape)}")
    return painted


def run_predict(args: argparse.Namespace) -> int:
    try:
        predictor = load_predictor(args.model, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.inputs:
        try:
            volume = read_volume(path)
            painted = painted_for(path, args.labels, volume.array.shape)
            labels, probs = predictor.predict(volume.array, volume.spacing, return_probs=args.probs, painted=painted)
            mask_path = write_mask(labels, like=volume, path=args.out / f"{volume_name(path)}.nii.gz")
            print(f"{path} -> {mask_path}", flush=True)
            if probs is not None:
                probs_path = args.out / f"{volume_name(path)}_probs.npy"
                with atomic_write(probs_path) as tmp, open(tmp, "wb") as f:
                    np.save(f, probs)
                print(f"{path} -> {probs_path}", flush=True)
        except (SlicewiseError, ValueError, OSError) as e:
            failed += 1
            print(f"error: {path}: {e}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m model.cli train|predict ...`); app/cli.py wires the same functions."""
    parser = argparse.ArgumentParser(prog="slicewise")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_args(sub.add_parser("train", help="train a model from painted slices"))
    add_predict_args(sub.add_parser("predict", help="write a mask for each input volume"))
    args = parser.parse_args(argv)
    return run_train(args) if args.command == "train" else run_predict(args)


if __name__ == "__main__":
    sys.exit(main())
