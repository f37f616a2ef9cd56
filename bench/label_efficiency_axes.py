"""One table over the painting axes: `python -m bench.label_efficiency_axes` after running

    python -m bench.label_efficiency --budgets sparse-10x3 --rows full+pseudo --axis A --seeds 3 \
        --workers 1 --threads 1 --out bench/out/label_efficiency/axisA          # for A = 0, 1, 2
    (optionally, training across the painted slices: --set axis=T --set partial_slices=true
        --out bench/out/label_efficiency/axisA_tT)

`--folders 'ctx1_axis*' --out FILE --title TEXT` renders other runs the same way (e.g. 2.5D input:
`--set context_slices=1 --out bench/out/label_efficiency/ctx1_axisA`); `--baseline d2` adds the paired
difference of every folder against the folder of the same axis named `d2_axisA` (same seeds, same split).

Reads each folder's results.json and writes docs/benchmarks/label_efficiency_axes.md: held-out test Dice
and Dice on the labelled volumes themselves for every inference variant (flip TTA, clean-up), mean ±
sample std over seeds, and the paired difference of each variant against the plain prediction.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.common import ROOT, git, machine

OUT = ROOT / "bench" / "out" / "label_efficiency"
VARIANTS = ("plain", "flip", "clean", "flip+clean", "auto", "flip+auto")


def pm(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f} (n=1)" if values else "–"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def pm_difference(d: np.ndarray) -> str:
    return f"{d.mean():+.3f} ± {d.std(ddof=1):.3f}" if len(d) > 1 else f"{d.mean():+.3f} (n=1)"


def runs_of(folder: Path) -> list[dict]:
    path = folder / "results.json"
    if not path.is_file():
        return []
    return sorted((r for r in json.loads(path.read_text())["runs"] if r.get("row")), key=lambda r: r["seed"])


def render(folders: dict[str, Path]) -> str:
    lines = [
        "# Label efficiency along each painting axis (MSD hippocampus, 10 volumes x 3 painted slices)",
        "",
        f"- commit: {git('rev-parse', '--short', 'HEAD')}; machine: {machine()}",
        "- command: the runs named in the module docstring of bench/label_efficiency_axes.py, then "
        "`python -m bench.label_efficiency_axes`",
        "- split: bench/label_efficiency.py, split seed 0: 141 train / 20 validation / 40 test; the 40 test "
        "volumes are seen by no stage. The seed picks the 10 labelled train volumes and seeds training; the 3 "
        "painted slices of each are evenly spaced through the structure along the painting axis. Row: the "
        "cpu preset's full pipeline (global, local, fine-tune, self-training) with its fixed step counts "
        "(budget off, so rows do not depend on the machine's load).",
        "- test = mean Dice (2 classes) over the 40 test volumes; labelled = over the 10 painted volumes "
        "against their full truth (the masks the clinician gets back). Mean ± sample std over seeds.",
        "- variants (one trained model each seed, only inference differs): flip = softmax averaged over the "
        "slice and its two in-plane mirrors; clean = largest component + hole filling for every class; auto "
        "= the clean-up steps chosen per class on the painted voxels of the labelled volumes.",
        "",
        "| painted along | trained along | seeds | " + " | ".join(f"{v} test / labelled" for v in VARIANTS) + " |",
        "|---|---|---:|" + "---|" * len(VARIANTS),
    ]
    diffs = []
    for name, folder in folders.items():
        runs = runs_of(folder)
        if not runs:
            continue
        painted = next(part for part in name.split("_") if part.startswith("axis")).removeprefix("axis")
        trained = runs[0]["data"]["axis"]
        cells = []
        for v in VARIANTS:
            test = [r["variants"][v]["test_dice_mean"] for r in runs]
            own = [r["variants"][v]["labelled_dice_mean"] for r in runs]
            cells.append(f"{pm(test)} / {pm(own)}")
        lines.append(f"| {painted} | {trained} | {len(runs)} | " + " | ".join(cells) + " |")
        plain = np.array([r["variants"]["plain"]["test_dice_mean"] for r in runs])
        row = []
        for v in VARIANTS[1:]:
            d = np.array([r["variants"][v]["test_dice_mean"] for r in runs]) - plain
            row.append(pm_difference(d))
        diffs.append(f"| {painted} | {trained} | " + " | ".join(row) + " |")
    lines += [
        "",
        "Paired differences on the test volumes against `plain` (same model), mean ± std over seeds:",
        "",
        "| painted along | trained along | " + " | ".join(VARIANTS[1:]) + " |",
        "|---|---|" + "---|" * (len(VARIANTS) - 1),
        *diffs,
        "",
    ]
    return "\n".join(lines)


def paired(folders: dict[str, Path], baseline: str) -> str:
    """Per variant: this folder's Dice minus the baseline folder's, seed by seed, mean ± std over seeds."""
    lines = [
        "",
        f"Paired differences against the `{baseline}_axisA` runs (same axis, same seeds; test / labelled), "
        "mean ± std over the seeds both have:",
        "",
        "| painted along | seeds | " + " | ".join(VARIANTS) + " |",
        "|---|---:|" + "---|" * len(VARIANTS),
    ]
    for name, folder in folders.items():
        axis = next(part for part in name.split("_") if part.startswith("axis"))
        base = {r["seed"]: r for r in runs_of(OUT / f"{baseline}_{axis}")}
        runs = [r for r in runs_of(folder) if r["seed"] in base]
        if not runs:
            continue
        cells = []
        for v in VARIANTS:
            parts = []
            for key in ("test_dice_mean", "labelled_dice_mean"):
                d = np.array([r["variants"][v][key] - base[r["seed"]]["variants"][v][key] for r in runs])
                parts.append(pm_difference(d))
            cells.append(" / ".join(parts))
        lines.append(f"| {axis.removeprefix('axis')} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "label_efficiency_axes.md"))
    p.add_argument("--folders", default="axis*", help="which folders of bench/out/label_efficiency (a glob)")
    p.add_argument("--title", default=None, help="the report's first line, without '# '")
    p.add_argument("--baseline", default=None, help="also the paired difference against <BASELINE>_axisA")
    args = p.parse_args(argv)
    folders = {f.name: f for f in sorted(OUT.glob(args.folders)) if f.is_dir()}
    text = render(folders)
    if args.baseline:
        text += paired(folders, args.baseline)
    if args.title:
        text = "# " + args.title + text[text.index("\n") :]
    marker = "<!-- notes"
    old = Path(args.out).read_text() if Path(args.out).is_file() else ""
    if marker in old:
        text += "\n" + old[old.index(marker) :]
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
