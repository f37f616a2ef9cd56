"""The markdown table of bench/label_efficiency.py, from its results (meta and runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.label_efficiency_protocol import BRANCH_ROWS, ROWS, TEN_BY_THREE, Budget, Grid, Job

NOTES_MARKER = "<!-- notes: written by hand, kept when the script rewrites the tables above -->"
PAPER_REFERENCE = {0.05: 0.824, 0.10: 0.849, 0.20: 0.866}  # Hu et al. 2021, global + local (block)
# an earlier supervised-only run: widths 16-128, 1000 steps x 32 slices, on its own split
EARLIER_BASELINE = {0.05: 0.841, 0.10: 0.850, 0.20: 0.853, (10, 3): 0.671}


def _stats(values: list[float]) -> tuple[float, float | None]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def _pm(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = _stats(values)
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "") + f" (n={len(values)})"


def _stage_s(run: dict, stage: str) -> float | None:
    m = run["stages"].get(stage)
    return None if m is None else m["wall_s"]


def _mean_or_dash(values, fmt="{:.0f}") -> str:
    values = [v for v in values if v is not None]
    return fmt.format(float(np.mean(values))) if values else "–"


def render_markdown(meta: dict, runs: list[dict], skipped: list[str], grid: Grid, bench=None, failed=()) -> str:
    split = meta["split"]
    lines = [
        "# Label efficiency on the MSD hippocampus",
        "",
        f"- commit: {meta['commit']}{' (+ uncommitted changes)' if meta['dirty'] else ''}"
        + (
            f" (HEAD was {meta['commit_at_start']} when the run started)"
            if meta.get("commit_at_start", meta["commit"]) != meta["commit"]
            else ""
        ),
        f"- machine: {meta['machine']}, torch {meta['torch']}",
        f"- date: {meta['started_utc']}; elapsed {meta['elapsed_s'] / 60:.1f} min"
        f"; load average (1/5/15 min) at start {meta['load_avg_start']}, at last write {meta['load_avg_now']}"
        " (the machine is shared: wall times are indicative)",
        f"- command: `{meta['command']}` (grid `{meta['grid']}`, preset `{meta['preset']}`)",
        *[
            f"- runs kept from an earlier invocation (`--append`): `{h['command']}` at {h['commit']}, {h['started_utc']}, "
            f"{h['elapsed_s'] / 60:.1f} min, {h['machine']}"
            for h in meta.get("history", [])
        ],
        f"- data: `../shared/data/hippocampus` imagesTr/labelsTr, {sum(len(v) for v in split.values())} volumes, "
        f"split with seed {meta['split_seed']} into {len(split['train'])} train / {len(split['val'])} validation / "
        f"{len(split['test'])} test (lists below and in results.json). Test volumes are seen by no stage of any run.",
        f"- slices along axis {meta['axis']}"
        + (f", padded to {runs[0]['data']['size']}x{runs[0]['data']['size']}" if runs else "")
        + "; Dice: 3D, per test volume, "
        "per class (1 anterior, 2 posterior) and their mean, averaged over the test volumes; "
        "then mean ± sample std over training seeds (n = seeds). The seed picks which train volumes are labelled "
        "and seeds the training.",
        "",
    ]
    by = {}
    for r in runs:
        if r["kind"] == "row":
            by.setdefault((r["table"], r["budget"], r["row"], r["mode"], tuple(r["local_schedule"] or ())), []).append(
                r
            )

    def cell(budget: Budget, row: str) -> list[dict]:
        return [r for k, rs in by.items() if k[0] == "main" and k[1] == budget.key and k[2] == row for r in rs]

    # ---- summary
    shown = ROWS + tuple(row for row in BRANCH_ROWS if any(k[2] == row for k in by))
    lines += [
        "## Mean Dice on the test volumes",
        "",
        "| budget | painted slices | "
        + " | ".join(shown)
        + " | full − supervised | paper | earlier supervised baseline |",
        "|---|---:|" + "---|" * len(shown) + "---:|---:|---:|",
    ]
    for b in grid.budgets:
        cells = {row: cell(b, row) for row in shown}
        painted = next((r["painted_slices"] for rs in cells.values() for r in rs), None)
        sup, full = ({r["seed"]: r["test_dice_mean"] for r in cells[x]} for x in ("supervised", "full"))
        both = sorted(set(sup) & set(full))
        diff = _pm([full[s] - sup[s] for s in both]) if both else "–"
        lines.append(
            f"| {b.label} | {painted if painted is not None else '–'} | "
            + " | ".join(_pm([r["test_dice_mean"] for r in cells[row]]) for row in shown)
            + f" | {diff} | {PAPER_REFERENCE.get(b.reference_key, '–')} | {EARLIER_BASELINE.get(b.reference_key, '–')} |"
        )
    lines += [
        "",
        "`full − supervised`: the per-seed difference (same labelled volumes, same seed), mean ± std. "
        "`paper`: Hu et al. 2021 (widths 64-512, global + local block, their split). "
        "`earlier supervised baseline`: a supervised-only run before this benchmark, widths 16-128, 1000 steps x 32 slices, its own split.",
        "",
    ]

    # ---- detail
    lines += [
        "## Per class and wall time",
        "",
        "| budget | row | seeds | anterior | posterior | mean | val mean | local s | fine-tune s | row wall s |",
        "|---|---|---:|---|---|---|---|---:|---:|---:|",
    ]
    for b in grid.budgets:
        for row in shown:
            rs = cell(b, row)
            if not rs:
                continue
            lines.append(
                f"| {b.label} | {row} | {len(rs)} | {_pm([r['test_dice_per_class'][0] for r in rs]).split(' (')[0]} | "
                f"{_pm([r['test_dice_per_class'][1] for r in rs]).split(' (')[0]} | {_pm([r['test_dice_mean'] for r in rs]).split(' (')[0]} | "
                f"{_pm([r['val_dice_mean'] for r in rs if r['val_dice_mean'] is not None]).split(' (')[0]} | "
                f"{_mean_or_dash([_stage_s(r, 'local') for r in rs])} | {_mean_or_dash([_stage_s(r, 'finetune') for r in rs])} | "
                f"{_mean_or_dash([r['row_wall_s'] for r in rs])} |"
            )
    globals_ = [r for r in runs if r["kind"] == "global"]
    lines += [
        "",
        "`row wall s`: the whole run (reading every train volume, the stages it runs"
        + (", validation" if bench is not None and bench.validate else "")
        + ") plus predicting the test volumes; mean over seeds. Rows `+global` and `full` "
        "also need the global stage, run once per seed and shared (below)."
        + (
            f" {bench.workers} jobs ran at once, {bench.threads or 'default'} torch thread(s) each, on a machine "
            "shared with other work: wall times include that contention."
            if bench is not None
            else ""
        ),
        "",
    ]
    if globals_:
        lines += ["| seed | global stage s | slices | run wall s |", "|---:|---:|---:|---:|"]
        for r in globals_:
            lines.append(
                f"| {r['seed']} | {_stage_s(r, 'global'):.0f} | {r['data']['slices']} | {r['train_wall_s']:.0f} |"
            )
        lines.append("")

    # ---- modes
    mode_runs = [r for r in runs if r["kind"] == "row" and r["table"] == "modes"]
    if mode_runs:
        e, s = grid.mode_local
        lines += [
            f"## Local loss mode at {grid.mode_budget.label} (full pipeline, local stage shortened to {e} x {s} steps)",
            "",
            "All three modes run the same shortened local schedule (exact costs 10-30x a stride step on a CPU), then the "
            "preset's fine-tune; compare them with each other, not with the `full` row above.",
            "",
            "| mode | seeds | anterior | posterior | mean | local s | local s/step | row wall s |",
            "|---|---:|---|---|---|---:|---:|---:|",
        ]
        for mode in ("stride", "block", "exact"):
            rs = [r for r in mode_runs if r["mode"] == mode]
            if not rs:
                continue
            per_step = [_stage_s(r, "local") / (r["local_schedule"][0] * r["local_schedule"][1]) for r in rs]
            lines.append(
                f"| {mode} | {len(rs)} | {_pm([r['test_dice_per_class'][0] for r in rs]).split(' (')[0]} | "
                f"{_pm([r['test_dice_per_class'][1] for r in rs]).split(' (')[0]} | {_pm([r['test_dice_mean'] for r in rs]).split(' (')[0]} | "
                f"{_mean_or_dash([_stage_s(r, 'local') for r in rs])} | {_mean_or_dash(per_step, '{:.2f}')} | "
                f"{_mean_or_dash([r['row_wall_s'] for r in rs])} |"
            )
        lines.append("")

    # ---- schedule
    if bench is not None:
        cfg = bench.config(Job("row", 0, TEN_BY_THREE, "full"), Path("/x"))
        lines += [
            "## Schedule",
            "",
            f"Preset `{grid.preset}`: U-Net widths {list(cfg.widths)}; global {cfg.global_epochs} x {cfg.global_steps} steps "
            f"of batch {cfg.global_batch} (lr {cfg.global_lr}); local {cfg.local_epochs} x {cfg.local_steps} steps of batch "
            f"{cfg.local_batch} (lr {cfg.local_lr}, mode {cfg.local_mode}); fine-tune {cfg.finetune_epochs} x "
            f"{cfg.finetune_steps} steps of batch {cfg.finetune_batch} (lr {cfg.finetune_lr}), the same for every row. "
            f"Seeds: {grid.seeds} (+global / +local: {grid.ablation_seeds}; modes: {grid.mode_seeds}, exact: {grid.exact_seeds})."
            + (
                f" Jobs run in priority order; a job is not started when its estimated time would end it after the "
                f"{grid.deadline_min:.0f} min deadline."
                if grid.deadline_min
                else ""
            ),
            "",
        ]
    if skipped or failed:
        lines += ["## Not run", "", *[f"- {s}" for s in failed], *[f"- {s}" for s in skipped], ""]
    lines += [
        "## Volumes",
        "",
        f"- test ({len(split['test'])}): {', '.join(n.split('.')[0].replace('hippocampus_', '') for n in split['test'])}",
        f"- validation ({len(split['val'])}): {', '.join(n.split('.')[0].replace('hippocampus_', '') for n in split['val'])}",
        f"- train: the other {len(split['train'])} (hippocampus_NNN.nii.gz); labelled volumes and painted slice "
        "indices per seed and budget are in results.json (`labeled_volumes`).",
        "",
    ]
    return "\n".join(lines)


def write_markdown(path: Path, text: str) -> None:
    """Write the table atomically; hand-written notes below NOTES_MARKER in the old file survive a re-run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        old = path.read_text()
        if NOTES_MARKER in old:
            text += "\n" + old[old.index(NOTES_MARKER) :]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
