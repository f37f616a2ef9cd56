"""A 3D U-Net trained on the painted slices alone, against the product's 2.5D pipeline, along each painting axis.

    python -m bench.sparse_3d --axes 0,1,2 --seeds 3            # 10 volumes x 3 slices, the label_efficiency split
    python -m bench.sparse_3d --axes 1 --seeds 1 --steps 50     # a smoke run

Why: a 2D network that is painted across a long structure (the hippocampus along voxel axis 1) sees only a
few of its cross-sections and must guess the rest slice by slice; a 3D network sees the painted slices
inside their volume, so the painting axis should matter less (the original 3D U-Net, Cicek et al. 2016,
was trained this way, from a few annotated slices). This is an experiment, not a product path: no
contrastive stage, supervised on the painted voxels only (IGNORE elsewhere), the nnU-Net "ignore label"
way.

Protocol: bench/label_efficiency.py's split (split seed 0: 141 train / 20 validation / 40 test; the test
volumes are only read to score), the same 10 labelled volumes per seed (`labeled_order`) and the same 3
painted slices (`even_slices`). Training: random patches (`--patch`, centred on a random painted voxel, so
each holds paint) with random mirrors along the three axes and a random contrast / brightness / noise,
CE + Dice over the painted voxels, Adam, a fixed number of steps (`--steps`, so runs do not depend on the
machine's load). Scores: mean Dice over the 2 classes on the 40 test volumes and on the 10 painted volumes
against their full truth, plain and with mirrors averaged + the "auto" clean-up chosen on the painted voxels
(as the product decides). `--baseline` reads label_efficiency results.json files of the 2.5D pipeline
(`{axis}` in the path is each axis) and prints paired differences for the seeds both have.
Results: <out>/results.json and the markdown table (`--md`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import ROOT, SHARED_DATA, provenance, save_runs, split_volumes
from bench.label_efficiency_protocol import NUM_CLASSES, even_slices, labeled_order, sparse_label, volume_names
from bench.label_efficiency_report import write_markdown
from data.io import read_volume
from data.mask_cleanup import choose_cleanup
from data.volume import IGNORE
from model.device import runtime_for
from model.inference import softmax_sum
from model.losses import ce_dice
from model.slices import intensity_stats
from model.train import dice_per_class
from model.unet import UNet

MIRRORS = ((), (2,), (3,), (4,))  # as it is and mirrored along each axis of an (N, C, D, H, W) batch
FP32_CPU = runtime_for("cpu", "off", "off", "off")


def patch_around(shape: tuple[int, ...], centre: np.ndarray, patch: int) -> tuple[slice, ...]:
    """A window of `patch` voxels per axis (the whole axis where it is shorter) holding `centre`."""
    out = []
    for n, c in zip(shape, centre):
        size = min(n, patch)
        start = int(np.clip(c - size // 2, 0, n - size))
        out.append(slice(start, start + size))
    return tuple(out)


def training_batch(volumes, rng: np.random.Generator, batch: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` patches of (normalised image, sparse label), each centred on a painted voxel and mirrored at
    random; shorter axes are padded with IGNORE (label) and 0 (image) up to `patch`."""
    xs, ys = [], []
    for _ in range(batch):
        image, label, painted = volumes[rng.integers(len(volumes))]
        window = patch_around(image.shape, painted[rng.integers(len(painted))], patch)
        x, y = image[window], label[window]
        pad = [(0, patch - n) for n in x.shape]
        x, y = np.pad(x, pad), np.pad(y, pad, constant_values=IGNORE)
        for axis in range(3):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis), np.flip(y, axis)
        x = x * rng.uniform(0.75, 1.25) + rng.uniform(-0.2, 0.2) + rng.normal(0, rng.uniform(0, 0.1), x.shape)
        xs.append(np.ascontiguousarray(x, dtype=np.float32))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys)).long()


def train_3d(volumes, args, seed: int) -> tuple[UNet, list[float]]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = UNet(1, NUM_CLASSES, args.widths, dims=3)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=1e-5)
    losses = []
    for _ in range(args.steps):
        x, y = training_batch(volumes, rng, args.batch, args.patch)
        loss = ce_dice(net(x), y, num_classes=NUM_CLASSES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return net.eval(), losses


@torch.no_grad()
def predict_3d(net: UNet, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the plain labels, the labels with the softmax averaged over the volume and its 3 mirrors)."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    plain, _ = softmax_sum(net, x, FP32_CPU, MIRRORS[:1])
    mirrored, _ = softmax_sum(net, x, FP32_CPU, MIRRORS[1:])
    return plain.argmax(1)[0].numpy().astype(np.uint8), (plain + mirrored).argmax(1)[0].numpy().astype(np.uint8)


def run_one(args, split, axis: int, seed: int) -> dict:
    data = Path(args.data)

    def read(folder, name):
        return np.asarray(read_volume(str(data / folder / name)).array)

    volumes, labelled = [], []
    for name in labeled_order(split["train"], seed)[: args.volumes]:
        image, truth = read("imagesTr", name), read("labelsTr", name).astype(np.uint8)
        label = sparse_label(truth, axis, even_slices(truth, axis, args.slices))
        normalised = intensity_stats(image).apply(image)
        volumes.append((normalised, label, np.argwhere(label != IGNORE)))
        labelled.append((normalised, label, truth))
    t0 = time.monotonic()
    net, losses = train_3d(volumes, args, seed)
    train_s = time.monotonic() - t0

    own = [(predict_3d(net, image), label, truth) for image, label, truth in labelled]
    cleanup, _ = choose_cleanup([p[1] for p, _, _ in own], [label for _, label, _ in own], NUM_CLASSES)

    def scores(pairs):
        plain = [np.mean(dice_per_class(p[0], t, NUM_CLASSES)) for p, t in pairs]
        full = [np.mean(dice_per_class(cleanup.apply(p[1]), t, NUM_CLASSES)) for p, t in pairs]
        return float(np.mean(plain)), float(np.mean(full))

    test = []
    for name in split["test"]:
        image = read("imagesTr", name)
        test.append((predict_3d(net, intensity_stats(image).apply(image)), read("labelsTr", name)))
    test_plain, test_full = scores(test)
    own_plain, own_full = scores([(p, truth) for p, _, truth in own])
    return {
        "axis": axis,
        "seed": seed,
        "train_s": round(train_s, 1),
        "final_loss": float(np.mean(losses[-20:])),
        "cleanup": cleanup.to_dict(),
        "test": {"plain": test_plain, "flip+auto": test_full},
        "labelled": {"plain": own_plain, "flip+auto": own_full},
    }


def pm(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def baseline_runs(pattern: str | None, axis: int) -> dict[int, dict]:
    """seed -> variants of the 2.5D full+pseudo row of a label_efficiency results.json."""
    if not pattern:
        return {}
    path = Path(pattern.format(axis=axis))
    if not path.exists():
        return {}
    runs = json.loads(path.read_text())["runs"]
    return {r["seed"]: r["variants"] for r in runs if r.get("kind") == "row" and r.get("row") == "full+pseudo"}


def table(results: list[dict], baseline: str | None) -> str:
    lines = [
        "| painted along | seeds | 3D plain test / labelled | 3D flip+auto test / labelled | 2.5D flip+auto test / labelled"
        " (same seeds) | paired 3D - 2.5D, flip+auto test / labelled | 3D training s |",
        "|---|---:|---|---|---|---|---:|",
    ]
    for axis in sorted({r["axis"] for r in results}):
        rows = [r for r in results if r["axis"] == axis]
        base = baseline_runs(baseline, axis)
        paired = [r for r in rows if r["seed"] in base]
        b_test = [base[r["seed"]]["flip+auto"]["test_dice_mean"] for r in paired]
        b_own = [base[r["seed"]]["flip+auto"]["labelled_dice_mean"] for r in paired]
        d_test = [r["test"]["flip+auto"] - b for r, b in zip(paired, b_test)]
        d_own = [r["labelled"]["flip+auto"] - b for r, b in zip(paired, b_own)]
        lines.append(
            f"| {axis} | {len(rows)} | {pm([r['test']['plain'] for r in rows])} / {pm([r['labelled']['plain'] for r in rows])}"
            f" | {pm([r['test']['flip+auto'] for r in rows])} / {pm([r['labelled']['flip+auto'] for r in rows])}"
            + (f" | {pm(b_test)} / {pm(b_own)} | {pm(d_test)} / {pm(d_own)}" if paired else " | - | -")
            + f" | {np.mean([r['train_s'] for r in rows]):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED_DATA / "hippocampus"))
    p.add_argument("--axes", default="0,1,2")
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    p.add_argument("--volumes", type=int, default=10)
    p.add_argument("--slices", type=int, default=3)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--widths", default="16,32,64")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--n-val", type=int, default=20)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--baseline", help="label_efficiency results.json of the 2.5D runs, {axis} for the axis")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "sparse_3d"))
    p.add_argument("--md", default=str(ROOT / "docs" / "benchmarks" / "sparse_3d.md"))
    args = p.parse_args(argv)
    args.widths = tuple(int(w) for w in args.widths.split(","))
    axes = [int(a) for a in args.axes.split(",")]
    if any(a not in (0, 1, 2) for a in axes) or args.seeds < 1 or args.steps < 1:
        raise SystemExit("--axes takes 0, 1, 2; --seeds and --steps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    split = split_volumes(volume_names(Path(args.data)), args.split_seed, args.n_val, args.n_test)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text())["runs"] if results_path.exists() else []
    for axis in axes:
        for seed in range(args.seeds):
            if any(r["axis"] == axis and r["seed"] == seed for r in results):
                continue
            r = run_one(args, split, axis, seed)
            print(f"axis {axis} seed {seed}: test {r['test']}, labelled {r['labelled']}, {r['train_s']} s", flush=True)
            results.append(r)
            save_runs(results_path, results)
    header = (
        f"# A 3D U-Net on the painted slices alone (bench/sparse_3d.py)\n\n{provenance()}\n- split: seed {args.split_seed}, "
        f"{len(split['train'])} train / {args.n_val} validation / {args.n_test} test (test volumes only scored); {args.volumes} volumes x "
        f"{args.slices} painted slices per seed, as bench/label_efficiency.py picks them\n- 3D: widths {args.widths}, "
        f"{args.steps} steps of {args.batch} patches of {args.patch}^3, Adam lr {args.lr}\n\n"
    )
    write_markdown(Path(args.md), header + table(results, args.baseline) + "\n")
    print(table(results, args.baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
