"""Retrain time and Dice per project size, schedule and CPU feature set: `bench/retrain_timing.py --grid`.

Runs `python -m model.train` directly (no server: the app adds only reading the project and writing
masks, which bench/retrain_timing.py measures) for each cell of

    project   hippocampus (20 volumes of ../shared/data/hippocampus, 3 painted slices each),
              mr: 256 x 256 x 12 anisotropic (1.2 x 1.2 x 8 mm) synthetic MR-like volumes, 2 painted slices,
              ct: 512 x 512 x 200 (0.8 x 0.8 x 1.5 mm) synthetic CT-like volumes, 3 painted slices,
              quick: 3 hippocampus volumes x 2 painted slices with the quick preset
    schedule  budget: the preset as it is (time budget, 128 x 128 patches, switches chosen per machine);
              fixed: the preset's fixed step counts on whole slices with bf16 on, the schedule before
              time budgets (a run of it is stopped after --fixed-cap s and its own ETA reported)
    isa       as-is, or AVX-512 hidden (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2)
    mode      full (every stage), refresh (fine-tune from the full run's model.pt, model.config.retrain_config)

Dice: mean over the classes of the 3D Dice on volumes not used in training (hippocampus: the first test
volumes of label_efficiency's split; synthetic: volumes drawn with other seeds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HIDDEN_ISA = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
NUM_CLASSES = 3


# --------------------------------------------------------------------------------------------
# synthetic projects (pure; tests/test_bench_retrain_timing.py)
# --------------------------------------------------------------------------------------------
def synthetic_volume(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], kind: str, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(int16 image, uint8 label 0..2) of an MR- or CT-like body with two structures at random places.

    A body ellipse (axis 2 is the slice axis) holds a large ellipsoid (class 1) and a small brighter
    one beside it (class 2); MR gets a smooth bias field and Rician-like noise, CT Gaussian noise in HU."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing)], indexing="ij", sparse=True)
    x, y, z = grids
    extent = [n * s for n, s in zip(shape, spacing)]
    body = (x / (0.42 * extent[0])) ** 2 + (y / (0.34 * extent[1])) ** 2 <= 1
    centre1 = rng.uniform(-0.12, 0.12, 3) * extent
    radii1 = np.array([*(rng.uniform(0.12, 0.18, 2) * extent[:2]), rng.uniform(0.25, 0.35) * extent[2]])
    one = sum(((g - c) / r) ** 2 for g, c, r in zip((x, y, z), centre1, radii1)) <= 1
    centre2 = centre1 + np.array([radii1[0] * rng.choice([-1.4, 1.4]), rng.uniform(-0.3, 0.3) * radii1[1], 0.0])
    radii2 = radii1 * rng.uniform(0.35, 0.5)
    two = sum(((g - c) / r) ** 2 for g, c, r in zip((x, y, z), centre2, radii2)) <= 1
    label = np.zeros(shape, np.uint8)
    label[np.broadcast_to(body, shape) & one] = 1
    label[np.broadcast_to(body, shape) & two & ~one] = 2
    if kind == "mr":
        base = np.where(np.broadcast_to(body, shape), 300.0, 10.0) + np.select(
            [label == 1, label == 2], [180.0, 420.0], 0.0
        )
        bias = 1 + 0.25 * np.cos(x / extent[0] * np.pi + rng.uniform(0, 3)) * np.cos(y / extent[1] * np.pi)
        image = base * bias + rng.normal(0, 25, shape)
        image = np.abs(image)
    else:
        base = np.where(np.broadcast_to(body, shape), 40.0, -1000.0) + np.select(
            [label == 1, label == 2], [25.0, 110.0], 0.0
        )
        image = base + rng.normal(0, 18, shape).astype(np.float32)
    return image.astype(np.int16), label


def painted_slices(label: np.ndarray, axis: int, k: int) -> list[int]:
    from bench.label_efficiency_protocol import even_slices

    return even_slices(label, axis, k)


# --------------------------------------------------------------------------------------------
# table (pure)
# --------------------------------------------------------------------------------------------
def render_grid(meta: dict, rows: list[dict]) -> str:
    lines = [
        "## Budgeted schedule against the fixed one, per project size and CPU feature set",
        "",
        f"- commit: {meta['commit']}{' + uncommitted changes' if meta['dirty'] else ''}; machine: {meta['machine']}; "
        f"CPU model: {meta['cpu_model']}; torch {meta['torch']}",
        f"- date: {meta['started_utc']}; elapsed {meta['elapsed_s'] / 60:.1f} min; load average (1/5/15 min) at start "
        f"{meta['load_start']}, at end {meta['load_end']} (the machine is shared: read ratios within this run)",
        f"- command: `{meta['command']}` (every training process under `nice -n 10`, 2 threads)",
        "- train s: model.train's stages (metrics.json); wall s: the whole process (start, reading and slicing "
        "the volumes, training, writing model.pt). A fixed-schedule run stopped at its cap shows its own "
        "ETA from progress.jsonl as `~N (ETA)`.",
        "",
        "| project | volumes x painted | slice (network) | mode | isa | schedule | bf16 | steps (g/l/f/p) | train s | wall s | "
        "budget s | Dice (held-out) |",
        "|---|---|---|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        train = f"{r['train_s']:.1f}" if r.get("train_s") is not None else "–"
        wall = f"~{r['eta_total_s']:.0f} (ETA)" if r.get("stopped") else f"{r['wall_s']:.1f}"
        dice = "–" if r.get("dice") is None else f"{r['dice']:.3f}"
        budget = "–" if r.get("budget_s") is None else f"{r['budget_s']:.0f}"
        lines.append(
            f"| {r['project']} | {r['volumes']} x {r['painted']} | {r['plane']} ({r['size']}) | {r['mode']} | "
            f"{r['isa']} | {r['schedule']} | {r['bf16']} | {r['steps']} | {train} | {wall} | {budget} | {dice} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
@dataclass
class Project:
    name: str
    images: list[str]
    labels: list[str]
    test: list[tuple[str, str]]  # (image, full label) not used in training
    axis: int
    painted: int
    plane: str
    preset: str = "cpu"


def _save(path: Path, array: np.ndarray, spacing) -> str:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return str(path)


def hippocampus_project(tmp: Path, data: Path, n: int, k: int, n_test: int, name: str, preset: str) -> Project:
    import nibabel as nib

    from bench.label_efficiency_protocol import sparse_label
    from bench.retrain_timing import choose_volumes, split_volumes, volume_names

    names = choose_volumes(volume_names(data), n)
    test = split_volumes(volume_names(data), seed=0, n_val=20, n_test=40)["test"][:n_test]
    labels = []
    (tmp / name).mkdir(parents=True, exist_ok=True)
    for v in names:
        full = nib.load(str(data / "labelsTr" / v))
        lab = np.asarray(full.dataobj).astype(np.uint8)
        sparse = sparse_label(lab, 0, painted_slices(lab, 0, k))
        labels.append(str(tmp / name / f"sparse_{v}"))
        nib.save(nib.Nifti1Image(sparse, full.affine), labels[-1])
    shape = nib.load(str(data / "imagesTr" / names[0])).shape
    return Project(
        name,
        [str(data / "imagesTr" / v) for v in names],
        labels,
        [(str(data / "imagesTr" / v), str(data / "labelsTr" / v)) for v in test],
        0,
        k,
        f"~{shape[1]} x {shape[2]}",
        preset,
    )


def synthetic_project(tmp: Path, kind: str, n: int, k: int, n_test: int) -> Project:
    from bench.label_efficiency_protocol import sparse_label

    shape, spacing = ((256, 256, 12), (1.2, 1.2, 8.0)) if kind == "mr" else ((512, 512, 200), (0.8, 0.8, 1.5))
    folder = tmp / kind
    folder.mkdir(parents=True, exist_ok=True)
    images, labels, test = [], [], []
    for i in range(n + n_test):
        image, label = synthetic_volume(shape, spacing, kind, seed=1000 * (kind == "ct") + i)
        image_path = _save(folder / f"{kind}_{i:02d}.nii", image, spacing)
        if i < n:
            images.append(image_path)
            labels.append(
                _save(
                    folder / f"{kind}_{i:02d}_sparse.nii", sparse_label(label, 2, painted_slices(label, 2, k)), spacing
                )
            )
        else:
            test.append((image_path, _save(folder / f"{kind}_{i:02d}_label.nii", label, spacing)))
    return Project(kind, images, labels, test, 2, k, f"{shape[0]} x {shape[1]}")


def _config(project: Project, out: Path, schedule: str, speed_cache: Path):
    from model.config import preset

    cfg = preset(
        project.preset,
        images=project.images,
        labels=project.labels,
        out_dir=str(out),
        axis=project.axis,
        num_classes=NUM_CLASSES,
        device="cpu",
        threads=2,
        speed_cache=str(speed_cache),
    )
    if schedule == "fixed":  # the schedule before budgets: fixed steps, whole slices, bf16 always on
        cfg = cfg.replace(budget_s=None, refresh_budget_s=None, patch_size=None, bf16="on")
    return cfg


def _read_progress(out: Path) -> list[dict]:
    path = out / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def train_once(cfg, env_extra: dict, cap_s: float | None) -> dict:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out.parent / f"{out.name}.json"
    config_path.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, **env_extra}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["nice", "-n", "10", sys.executable, "-m", "model.train", str(config_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, err = proc.communicate(timeout=cap_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        events = _read_progress(out)
        steps = [e for e in events if e.get("eta_s") is not None and e["event"] == "step"]
        eta = steps[-1]["eta_s"] if steps else None
        return {
            "stopped": True,
            "wall_s": time.monotonic() - t0,
            "eta_total_s": None if eta is None else time.monotonic() - t0 + eta,
        }
    wall = time.monotonic() - t0
    if proc.returncode:
        raise RuntimeError(f"training failed: {err.decode()[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"stopped": False, "wall_s": wall, "metrics": metrics}


def held_out_dice(model_dir: Path, project: Project, speed_cache: Path) -> float:
    from bench.retrain_timing import _read, dice_3d, read_image
    from model.inference import load_predictor

    predictor = load_predictor(model_dir, "cpu", speed_cache=speed_cache)
    return float(
        np.mean(
            [
                dice_3d(predictor.predict(*read_image(Path(i)))[0], _read(Path(t)).astype(np.uint8))
                for i, t in project.test
            ]
        )
    )


def run_cell(project: Project, schedule: str, isa: str, tmp: Path, speed_cache: Path, cap_s: float) -> list[dict]:
    """Full, then a refresh from its model -> two rows."""
    from model.config import retrain_config

    env = HIDDEN_ISA if isa == "AVX-512 hidden" else {}
    out = tmp / "runs" / f"{project.name}-{schedule}-{'hidden' if env else 'asis'}"
    rows = []
    full_cfg = _config(project, out / "full", schedule, speed_cache)
    for mode in ("full", "refresh"):
        cfg = full_cfg
        if mode == "refresh":
            if not (out / "full" / "model.pt").exists():
                break
            cfg = retrain_config(full_cfg.replace(out_dir=str(out / "refresh")), out / "full", refresh=True)
        result = train_once(cfg, env, cap_s if schedule == "fixed" else None)
        row = {
            "project": project.name,
            "volumes": len(project.images),
            "painted": project.painted,
            "plane": project.plane,
            "mode": mode,
            "isa": isa,
            "schedule": schedule,
            "budget_s": cfg.budget_s,
            **result,
        }
        if not result["stopped"]:
            m = result["metrics"]
            stages = m["stages"]
            row["train_s"] = sum(s["wall_s"] + s.get("pseudo_label_s", 0.0) for s in stages.values())
            row["steps"] = "/".join(
                str(stages[s].get("steps_run", stages[s]["epochs"] * stages[s]["steps_per_epoch"]))
                if s in stages
                else "–"
                for s in ("global", "local", "finetune", "pseudo")
            )
            row["bf16"] = "on" if m["data"]["runtime"]["autocast"] else "off"
            row["size"] = (
                m["data"]["size"]
                if not m["data"].get("patch_size") or m["data"]["patch_size"] >= m["data"]["size"]
                else f"{m['data']['size']}, patches {m['data']['patch_size']}"
            )
            row["why_bf16"] = m["data"]["runtime"].get("why", {}).get("bf16")
            row["dice"] = held_out_dice(Path(cfg.out_dir), project, speed_cache)
        else:
            row.update(steps="–", bf16="on", size="–", dice=None)
        row.pop("metrics", None)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items()}), flush=True)
    return rows


def run_grid(args, tmp: Path) -> list[dict]:
    speed_cache = tmp / "speed.json"
    rows = []
    for name in args.projects:
        if name == "hippocampus":
            project = hippocampus_project(tmp, Path(args.data), 20, 3, args.test_volumes, "hippocampus", "cpu")
        elif name == "quick":
            project = hippocampus_project(tmp, Path(args.data), 3, 2, args.test_volumes, "quick", "quick")
        else:
            project = synthetic_project(tmp, name, args.ct_volumes if name == "ct" else 20, 3 if name == "ct" else 2, 2)
        for isa in args.isa:
            for schedule in args.schedules:
                rows += run_cell(project, schedule, isa, tmp, speed_cache, args.fixed_cap)
    return rows
