"""Paired comparison of bench.label_efficiency results: the same rows, seeds and split, one setting changed.

    python -m bench.paired BASE_OUT VARIANT_OUT [VARIANT_OUT ...] [--names base,variant,...] [--budget-as V=B]
    python -m bench.paired OUT OUT --rows supervised,full+pseudo

Each OUT is a `--out` folder of bench.label_efficiency (its results.json). Rows are paired by their job
(seed / budget / row), so only the seeds both folders ran count; `--budget-as sparse-10x3-ends=sparse-10x3`
pairs a variant's budget with another of the base (the same volumes and seeds, more painted). Printed: one
markdown table per folder pair with plain and flip+auto held-out Dice, validation Dice (plain, with
`--validate`), the paired difference (variant - base, mean ± std over seeds, and per seed) and the mean
training seconds.

`--rows BASE_ROW,VARIANT_ROW` pairs two rows instead of two settings (the same seed and budget, so the same
painted slices): the base folder's BASE_ROW against the variant folder's VARIANT_ROW, one table per budget.
This is how "full − supervised" is read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

VARIANTS = ("plain", "flip+auto")


def load_rows(
    out: Path, budget_as: dict[str, str] | None = None, only_row: str | None = None
) -> tuple[dict, dict[str, dict]]:
    """(meta, {job name: row record}); `budget_as` renames budgets in the job names ({variant: base});
    `only_row` keeps that row alone and names its jobs without it ("seed/budget"), to pair two rows."""
    path = Path(out) / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: give a --out folder of bench.label_efficiency")
    results = json.loads(path.read_text())
    rows = {}
    for r in results["runs"]:
        if r.get("kind") == "row":
            seed, budget, row = r["job"].split("/", 2)
            budget = (budget_as or {}).get(budget, budget)
            if only_row is None:
                rows[f"{seed}/{budget}/{row}"] = r
            elif row == only_row:
                rows[f"{seed}/{budget}"] = r
    return results.get("meta", {}), rows


def of_budget(rows: dict[str, dict], budget: str | None) -> dict[str, dict]:
    """The jobs of one budget (all of them for None)."""
    return {job: r for job, r in rows.items() if budget is None or job.split("/")[1] == budget}


def scores(row: dict) -> dict[str, float | None]:
    out = {f"{v} test": row.get("variants", {}).get(v, {}).get("test_dice_mean") for v in VARIANTS}
    out["plain test"] = out["plain test"] if out["plain test"] is not None else row.get("test_dice_mean")
    out["plain val"] = row.get("val_dice_mean")
    return out


def _pm(values: list[float], signed: bool = False) -> str:
    if not values:
        return "–"
    mean = float(np.mean(values))
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text + (f" ± {float(np.std(values, ddof=1)):.3f}" if len(values) > 1 else "")


def compare(base: dict[str, dict], variant: dict[str, dict]) -> dict:
    """{"jobs": the paired jobs, "<score>": {"base": [...], "variant": [...], "diff": [...]}, "train_s": ...}."""
    jobs = sorted(set(base) & set(variant))
    table: dict = {"jobs": jobs}
    for key in ("plain test", "flip+auto test", "plain val"):
        pairs = [(scores(base[j])[key], scores(variant[j])[key]) for j in jobs]
        pairs = [(b, v) for b, v in pairs if b is not None and v is not None]
        table[key] = {
            "base": [b for b, _ in pairs],
            "variant": [v for _, v in pairs],
            "diff": [v - b for b, v in pairs],
        }
    table["train_s"] = {
        "base": [base[j].get("train_wall_s") for j in jobs],
        "variant": [variant[j].get("train_wall_s") for j in jobs],
    }
    return table


def render(table: dict, base_name: str, variant_name: str) -> str:
    lines = [
        f"| score | {base_name} | {variant_name} | paired, {variant_name} - {base_name} | per job |",
        "|---|---|---|---|---|",
    ]
    for key in ("plain test", "flip+auto test", "plain val"):
        t = table[key]
        per = ", ".join(f"{d:+.3f}" for d in t["diff"]) or "–"
        lines.append(f"| {key} | {_pm(t['base'])} | {_pm(t['variant'])} | {_pm(t['diff'], signed=True)} | {per} |")
    seconds = table["train_s"]

    def mean_s(values):
        values = [v for v in values if v is not None]
        return f"{np.mean(values):.0f}" if values else "–"

    lines.append(f"| training s (mean) | {mean_s(seconds['base'])} | {mean_s(seconds['variant'])} | | |")
    lines.append("")
    lines.append(f"Paired jobs ({len(table['jobs'])}): {', '.join(table['jobs']) or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("variants", type=Path, nargs="+")
    parser.add_argument("--names", default="", help="comma-separated names: the base's, then each variant's")
    parser.add_argument(
        "--budget-as", action="append", default=[], metavar="VARIANT=BASE", help="pair a variant budget with a base one"
    )
    parser.add_argument("--rows", default="", metavar="BASE_ROW,VARIANT_ROW", help="pair two rows, per budget")
    args = parser.parse_args(argv)
    pair_rows = [r for r in args.rows.split(",") if r]
    if args.rows and len(pair_rows) != 2:
        parser.error("--rows takes two row names, e.g. supervised,full+pseudo")
    if any("=" not in b for b in args.budget_as):
        parser.error("--budget-as takes VARIANT_BUDGET=BASE_BUDGET, e.g. sparse-10x3-ends=sparse-10x3")
    budget_as = dict(b.split("=", 1) for b in args.budget_as)
    names = [n for n in args.names.split(",") if n] or (pair_rows or [p.name for p in [args.base, *args.variants]])
    if len(names) != len(args.variants) + 1:
        parser.error(f"--names gives {len(names)} names for {len(args.variants) + 1} folders")
    base_row, variant_row = pair_rows or (None, None)
    base_meta, base = load_rows(args.base, only_row=base_row)
    for name, folder in zip(names[1:], args.variants):
        meta, variant = load_rows(folder, budget_as, only_row=variant_row)
        if meta.get("split") and base_meta.get("split") and meta["split"] != base_meta["split"]:
            print(f"{folder}: another split than {args.base}; rows cannot be paired", file=sys.stderr)
            return 2
        budgets = sorted({job.split("/")[1] for job in base}) if pair_rows else [None]
        for budget in budgets:
            print(f"## {name} against {names[0]}" + (f", {budget}" if budget else "") + "\n")
            print(render(compare(of_budget(base, budget), of_budget(variant, budget)), names[0], name))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
