"""Multi-planar self-training and a tri-planar ensemble, on top of the product's trained models.

    python -m bench.triplanar --runs bench/out/label_efficiency/base_axis1   # every kept model there
    python -m bench.triplanar --runs DIR --steps 30 --max-test 4             # a smoke run

Why: a 2D network painted across a long structure (the hippocampus along voxel axis 1) sees a few of its
cross-sections and must guess every other one slice by slice; its masks jitter from slice to slice. The
other two axes show the structure lengthwise, where that jitter is a visible streak. Here the product's
model (2.5D, the full pipeline with self-training, painted along one axis) labels its painted volumes
with its confident voxels (the paint wins where there is paint); the same network then goes on training
on slices along all three axes of those volumes, and predicts along each axis, the three softmaxes
averaged. The issue's "orthogonal-plane training and a tri-planar ensemble": training on the painted
lines alone in the other axes lost badly (docs/benchmarks/label_efficiency_axes.md, partial_slices);
this gives those axes whole pseudo-labelled slices.

Input: a bench/label_efficiency.py output folder run with `--keep-models` (its results.json, the runs'
model.pt and the painted label files), so the split (its seed in the folder's results.json meta), the
labelled volumes, the painted slices and the model of each seed are exactly those of the table it
belongs to; the test volumes are only read to score.

Variants, each with in-plane mirrors averaged and the "auto" clean-up chosen on the painted voxels of the
painted volumes (as the product decides): `model` (the product's model along its axis: the baseline),
`model 3 axes` (the same model along all three axes, no training: does the ensemble alone help?),
`mp` (after multi-planar training, along the painted axis only) and `mp 3 axes` (the tri-planar
ensemble). Scores: mean Dice over the classes on the test volumes, the validation volumes and the painted
volumes against their full truth. Results: <out>/results.json and the markdown table (`--md`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import ROOT, SHARED_DATA, provenance, save_runs
from bench.label_efficiency_protocol import NUM_CLASSES
from bench.label_efficiency_report import write_markdown
from data.io import read_volume
from data.mask_cleanup import choose_cleanup
from data.volume import IGNORE
from model import checkpoint, slices
from model.augment import random_intensity, random_spatial
from model.device import autocast, prepare_input, prepare_model, runtime_for
from model.inference import model_from_file, predict_array
from model.losses import ce_dice
from model.train import dice_per_class

VARIANTS = ("model", "model 3 axes", "mp", "mp 3 axes")


def axis_info(info: dict, axis: int, shapes: list[tuple[int, int, int]]) -> dict:
    """The model's slice geometry for slicing along `axis` (the square side its training volumes need)."""
    size = slices.training_size(shapes, axis, int(info["max_size"]), int(info["multiple"]))
    return {**info, "axis": axis, "size": size}


def mean_probs(net, image: np.ndarray, infos: list[dict], runtime, num_classes: int) -> np.ndarray:
    """(K, *image.shape) softmax, mirrors averaged, averaged over the slicing axes of `infos`."""
    total = None
    for info in infos:
        _, probs = predict_array(net, image, info, runtime, num_classes, return_probs=True, flip=True)
        total = probs.astype(np.float32) if total is None else total + probs
    return total / len(infos)


def pseudo_volume(probs: np.ndarray, painted: np.ndarray, threshold: float) -> np.ndarray:
    """Confident argmax where the softmax reaches `threshold`, IGNORE elsewhere; painted voxels keep their paint."""
    out = np.where(probs.max(axis=0) >= threshold, probs.argmax(axis=0), IGNORE).astype(np.uint8)
    return np.where(painted != IGNORE, painted, out).astype(np.uint8)


def train_multiplanar(net, cfg, info, images, labels, steps: int, lr: float, seed: int, runtime) -> list[float]:
    """Go on training `net` on slices along every axis (one axis per step, in turn) of the labelled volumes."""
    if cfg.position_channel:
        raise ValueError("the tri-planar benchmark does not handle models trained with position_channel")
    g = torch.Generator().manual_seed(seed)
    sets = [
        slices.build_slices(images, labels, a, cfg.max_size, int(info["multiple"]), True, cfg.context_slices)
        for a in range(3)
    ]
    spatial = cfg.spatial_augment("finetune")
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    net.train()
    losses = []
    for step in range(steps):
        s = sets[step % 3]
        idx = s.labeled[torch.randint(0, len(s.labeled), (cfg.pseudo_batch,), generator=g)]
        x, y = s.stack(idx).float(), s.labels[idx]
        x, y = random_spatial(x, y, g=g, **spatial)
        x = random_intensity(x, g=g) if cfg.intensity else x
        with autocast(runtime):
            logits = net(prepare_input(x, runtime))
        loss = ce_dice(logits.float(), y.long(), dice_weight=cfg.dice_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    return losses


def run_one(args, run: dict, folder: Path, split: dict) -> dict:
    data = Path(args.data)
    read = lambda sub, name: np.asarray(read_volume(str(data / sub / name)).array)  # noqa: E731
    saved = checkpoint.load(folder / "runs" / run["job"] / "model.pt")
    net, cfg, info, num_classes = model_from_file(saved)
    runtime = runtime_for(args.device, cfg.channels_last, "off", cfg.bf16)
    net = prepare_model(net.eval(), runtime)
    names = sorted(run["labeled_volumes"])
    label_dir = folder / "labels" / f"seed{run['seed']}" / run["budget"]
    images = [read("imagesTr", n) for n in names]
    painted = [np.asarray(read_volume(str(label_dir / n)).array) for n in names]
    truths = [read("labelsTr", n) for n in names]
    shapes = [im.shape for im in images]
    held_out = {
        part: [(read("imagesTr", n), read("labelsTr", n)) for n in split[part][: args.max_test or None]]
        for part in ("val", "test")
    }  # read once: every variant scores them
    own_axis = int(info["axis"])
    along = [axis_info(info, a, shapes) for a in range(3)]
    along[own_axis] = info

    def predict(infos):
        return lambda image: mean_probs(net, image, infos, runtime, num_classes).argmax(axis=0).astype(np.uint8)

    t0 = time.monotonic()
    pseudo = [
        pseudo_volume(mean_probs(net, im, [info], runtime, num_classes), p, cfg.pseudo_threshold)
        for im, p in zip(images, painted)
    ]
    scored = {}
    before = {"model": predict([info]), "model 3 axes": predict(along)}
    scored.update(score_variants(before, images, painted, truths, held_out))
    losses = train_multiplanar(net, cfg, info, images, pseudo, args.steps, args.lr, cfg.seed, runtime)
    for again in range(1, args.rounds):  # the ensemble's own confident voxels label the next round
        pseudo = [
            pseudo_volume(mean_probs(net, im, along, runtime, num_classes), p, cfg.pseudo_threshold)
            for im, p in zip(images, painted)
        ]
        losses = train_multiplanar(net, cfg, info, images, pseudo, args.steps, args.lr, cfg.seed + again, runtime)
    after = {"mp": predict([info]), "mp 3 axes": predict(along)}
    scored.update(score_variants(after, images, painted, truths, held_out))
    confident = float(np.mean([(p != IGNORE).mean() for p in pseudo]))
    return {
        "job": run["job"],
        "seed": run["seed"],
        "axis": own_axis,
        "steps": args.steps,
        "rounds": args.rounds,
        "lr": args.lr,
        "confident_fraction": round(confident, 4),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "wall_s": round(time.monotonic() - t0, 1),
        "baseline_flip_auto_test": run["variants"]["flip+auto"]["test_dice_mean"],
        "variants": scored,
    }


def score_variants(predictors: dict, images, painted, truths, held_out: dict) -> dict:
    """Mean Dice of each predictor with its "auto" clean-up, chosen on the painted voxels as the product does.
    `held_out`: part ("val", "test") -> (image, truth) arrays."""
    out = {}
    for name, predict in predictors.items():
        own = [predict(im) for im in images]
        cleanup, _ = choose_cleanup(own, painted, NUM_CLASSES)
        scores = {"labelled": _mean_dice([cleanup.apply(p) for p in own], truths)}
        for part, volumes in held_out.items():
            scores[part] = _mean_dice([cleanup.apply(predict(im)) for im, _ in volumes], [t for _, t in volumes])
        out[name] = {**scores, "cleanup": cleanup.to_dict()}
    return out


def _mean_dice(preds, truths) -> float:
    return float(np.mean([np.mean(dice_per_class(p, t, NUM_CLASSES)) for p, t in zip(preds, truths)]))


def pm(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def table(results: list[dict]) -> str:
    lines = [
        "| painted along | multi-planar steps x rounds | seeds | variant | test | validation | painted volumes"
        " | paired - model, test | paired - model, validation |",
        "|---|---|---:|---|---|---|---|---|---|",
    ]
    for axis, steps, rounds in sorted({(r["axis"], r["steps"], r.get("rounds", 1)) for r in results}):
        rows = [r for r in results if (r["axis"], r["steps"], r.get("rounds", 1)) == (axis, steps, rounds)]
        for v in VARIANTS:
            get = lambda part: [r["variants"][v][part] for r in rows]  # noqa: E731
            diff = lambda part: pm([r["variants"][v][part] - r["variants"]["model"][part] for r in rows])  # noqa: E731
            lines.append(
                f"| {axis} | {steps} x {rounds} | {len(rows)} | {v} | {pm(get('test'))} | {pm(get('val'))}"
                f" | {pm(get('labelled'))} | {'-' if v == 'model' else diff('test')}"
                f" | {'-' if v == 'model' else diff('val')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", action="append", required=True, help="a label_efficiency --keep-models output folder")
    p.add_argument("--data", default=str(SHARED_DATA / "hippocampus"))
    p.add_argument("--steps", type=int, default=240, help="multi-planar steps (80 per axis by default)")
    p.add_argument(
        "--rounds", type=int, default=1, help="rounds of pseudo-labelling and training (2+: by the ensemble)"
    )
    p.add_argument("--lr", type=float, default=5e-4, help="Adam lr (the cpu preset's self-training lr)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--max-test", type=int, default=0, help="score only this many val / test volumes (smoke runs)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "triplanar"))
    p.add_argument("--md", default=str(ROOT / "docs" / "benchmarks" / "triplanar.md"))
    args = p.parse_args(argv)
    if args.steps < 0 or args.rounds < 1:
        raise SystemExit("--steps must be >= 0 and --rounds >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text())["runs"] if results_path.exists() else []
    for folder in map(Path, args.runs):
        bench = json.loads((folder / "results.json").read_text())
        split = bench["meta"]["split"]
        for run in bench["runs"]:
            if run.get("kind") != "row" or not (folder / "runs" / run["job"] / "model.pt").is_file():
                continue
            key = (run["job"], str(folder), args.steps, args.rounds)
            if any((r["job"], r["folder"], r["steps"], r.get("rounds", 1)) == key for r in results):
                continue
            r = {"folder": str(folder), **run_one(args, run, folder, split)}
            print(json.dumps({k: r[k] for k in ("job", "axis", "wall_s")}), json.dumps(r["variants"]), flush=True)
            results.append(r)
            save_runs(results_path, results)
    header = (
        f"# Multi-planar self-training and a tri-planar ensemble (bench/triplanar.py)\n\n{provenance()}\n- models: bench/label_efficiency.py runs (sparse 10 x 3, full+pseudo, cpu preset) in "
        f"{', '.join(args.runs)}; {args.steps} multi-planar steps, Adam lr {args.lr}\n\n"
    )
    write_markdown(Path(args.md), header + table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
