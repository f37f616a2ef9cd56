"""How a project is retrained: `plan_retrain(request, project, history) -> RetrainPlan`, a pure function.

Retrain modes (the request's `mode`, decided when the job starts, not when it is queued):

    full     the whole pipeline. The label-free global stage is reused from an earlier job of the
             project (its global.pt, given as `init_from`) when that stage saw exactly the project's
             current volumes, with the same global settings (`TrainConfig.fields_shaping_global`) and
             slicing axis; otherwise it runs again. A request that names the global stage wins.
    refresh  start from the ACTIVE model's model.pt and run the fine-tune stage only, for half the
             preset's epochs (no self-training unless the request asks for it). Volumes with nothing
             painted are left out when nothing in the run reads them. Needs a compatible active model
             (same preset and network, same label map); without one the job runs full and says why.
    auto     refresh when a compatible active model exists and the painted slices differ from those the
             last full retrain behind it saw by at most max(5, 50 %) of them (added, repainted and
             erased slices count; see `refresh_limit`), else full. Also full when the active model is
             a refresh whose prequential Dice fell below that of the model it fine-tuned
             (`refresh_did_not_help`): refreshing again would build on a model that got worse.

Everything the decision needs comes in as values (the worker reads the store and the file system), so
each rule is a plain function call to test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.annotations import most_painted_axis
from data.errors import Conflict, InvalidInput
from model.config import ARCHITECTURE_FIELDS, GROWING_STAGES, PRESETS, STAGES, TrainConfig, preset

MODES = ("auto", "refresh", "full")
MODE_STRENGTH = {"refresh": 0, "auto": 1, "full": 2}  # coalesced requests keep the strongest
REFRESH_MIN_CHANGES = 5  # auto refreshes while at most max(this, REFRESH_SHARE x slices) changed
REFRESH_SHARE = 0.5
# auto goes full after a refresh that scores this much lower than the model it fine-tuned, each scored on
# at least PREQUENTIAL_MIN_SLICES slices (fewer say too little; Dice on one slice varies by more)
PREQUENTIAL_DROP = 0.05
PREQUENTIAL_MIN_SLICES = 3
STAGE_KEYS = {"enabled", "epochs", "steps"}
MAX_EPOCHS, MAX_STEPS = 10_000, 100_000
PRETRAINING = ("global", "local")  # what a refresh never runs


# ---------------------------------------------------------------------- the request


def check_train_request(preset_name: str | None, stages: dict | None, default_preset: str) -> tuple[str, dict]:
    """Validate a Retrain body -> (preset, stages). A stage is true/false, or
    {"enabled": bool, "epochs": n, "steps": n} to change its schedule."""
    preset_name = preset_name or default_preset
    if preset_name not in PRESETS:
        raise InvalidInput(f"preset must be one of {', '.join(PRESETS)}, got {preset_name!r}")
    if stages is not None and not isinstance(stages, dict):
        raise InvalidInput('stages must be an object such as {"global": false}')
    stages = dict(stages or {})
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise InvalidInput(f"unknown stages {unknown}; stages are {', '.join(STAGES)}")
    for name, value in stages.items():
        if isinstance(value, bool):
            continue
        if not isinstance(value, dict) or set(value) - STAGE_KEYS:
            raise InvalidInput(
                f"stage {name!r} must be true/false or an object with enabled, epochs, steps; got {value!r}"
            )
        if not isinstance(value.get("enabled", True), bool):
            raise InvalidInput(f"stage {name!r}: enabled must be true or false")
        for key, top in (("epochs", MAX_EPOCHS), ("steps", MAX_STEPS)):
            n = value.get(key)
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= top):
                raise InvalidInput(f"stage {name!r}: {key} must be a whole number from 1 to {top}, got {n!r}")
    if not stage_enabled(stages, "finetune"):
        raise InvalidInput("the fine-tune stage makes the segmentation model; it cannot be switched off here")
    return preset_name, stages


def check_train_mode(mode: str | None, stages: dict | None = None) -> str:
    """Validate the Retrain body's mode -> "auto" | "refresh" | "full" (None = "auto")."""
    mode = "auto" if mode is None else mode
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "refresh":
        asked = [name for name in PRETRAINING if explicitly_enabled(stages or {}, name)]
        if asked:
            raise InvalidInput(
                f"mode 'refresh' runs the fine-tune stage only, but stages enables {' and '.join(asked)}; "
                "use mode 'full' or 'auto' to run it"
            )
    return mode


def stronger_mode(a: str | None, b: str | None) -> str:
    """The mode of two coalesced requests: full > auto > refresh."""
    a, b = a or "auto", b or "auto"
    return a if MODE_STRENGTH[a] >= MODE_STRENGTH[b] else b


def stage_enabled(stages: dict, name: str) -> bool:
    value = stages.get(name, True)
    return value if isinstance(value, bool) else value.get("enabled", True)


def explicitly_enabled(stages: dict, name: str) -> bool:
    return name in stages and stage_enabled(stages, name)


def stage_overrides(stages: dict) -> dict:
    """Retrain body stages -> TrainConfig keys (global_stage, global_epochs, global_steps, ...). A fine-tune or
    self-training schedule the request names runs as named: it does not grow with the paint."""
    out = {}
    for name, value in stages.items():
        out[f"{name}_stage"] = stage_enabled(stages, name)
        if isinstance(value, dict):
            out.update({f"{name}_{key}": value[key] for key in ("epochs", "steps") if key in value})
    if names_growing_schedule(stages):
        out["paint_growth_slices"] = None
    return out


def names_growing_schedule(stages: dict) -> bool:
    """Whether the request sets the epochs or steps of a stage that grows with the paint."""
    return any(
        isinstance(stages.get(name), dict) and {"epochs", "steps"} & set(stages[name]) for name in GROWING_STAGES
    )


@dataclass(frozen=True)
class RetrainRequest:
    """A validated Retrain request (what the job row keeps as preset, stages and mode_requested)."""

    preset: str
    stages: dict = field(default_factory=dict)
    mode: str = "auto"


# ---------------------------------------------------------------------- what the plan is made from


@dataclass(frozen=True)
class VolumeInput:
    id: int
    source: str  # the image file model.train reads
    label_path: str | None  # where the sparse label volume is exported; None: nothing painted


@dataclass(frozen=True)
class ActiveModel:
    """The project's active model, as far as a refresh needs to know it."""

    id: int
    path: str  # its model folder
    has_weights: bool  # model.pt is there
    config: dict
    preset: str | None  # of the job that trained it
    label_map: list[int] | None  # the project's label values when it was trained
    base_id: int  # the last full retrain behind it (itself unless it is a refresh)
    base_annotations_seen: list[dict]  # the painted slices that full retrain saw
    # a refresh: the model it fine-tuned, and the prequential scores (app/scores.py) of both, i.e. the Dice
    # of each on the slices painted or accepted while it was the active model
    refreshed_from: int | None = None
    prequential: dict | None = None
    previous_prequential: dict | None = None


@dataclass(frozen=True)
class ProjectSnapshot:
    job_id: int
    model_dir: str  # this job's out_dir
    label_values: list[int]
    volumes: list[VolumeInput]
    annotations: list[dict]  # every painted slice now: volume_id, axis, index, version
    active: ActiveModel | None = None
    device: str = "auto"
    speed_cache: str | None = None  # where this machine's speed measurement is kept (model/device.py)


@dataclass(frozen=True)
class EarlierGlobalStage:
    """The `global` record of an earlier finished job of the project, newest first in the history."""

    record: dict
    file_exists: bool


@dataclass(frozen=True)
class RetrainPlan:
    mode: str  # "refresh" | "full"
    reason: str
    config: TrainConfig
    global_stage: (
        dict  # {"use": "trained" | "reused" | "off", "job_id", "path", "volume_ids", "axis", "signature", "why"}
    )
    start_from: str | None = None  # the file whose weights start the run: the model.pt a refresh fine-tunes,
    # or the earlier global.pt to link to config.init_from when the global stage is reused
    from_model_id: int | None = None
    base_model_id: int | None = None
    label_map: list[int] = field(default_factory=list)

    def message(self) -> str:
        """The job message once the mode is decided, e.g. "refresh: fine-tuning model 3 (auto: ...)"."""
        return mode_message(self.mode, self.reason, self.from_model_id, self.global_stage)


def mode_message(mode: str | None, reason: str | None, from_model_id: Any, global_stage: dict | None) -> str:
    if mode == "refresh":
        text = f"refresh: fine-tuning model {from_model_id}"
    else:
        global_stage = global_stage or {}
        text = "full retrain" + {
            "reused": f", reusing the global stage of job {global_stage.get('job_id')}",
            "off": ", without the global stage",
        }.get(global_stage.get("use"), "")
    return f"{text} ({reason})" if reason else text


# ---------------------------------------------------------------------- the rules


def slice_keys(annotations: list[dict]) -> dict:
    return {(int(a["volume_id"]), int(a["axis"]), int(a["index"])): int(a["version"]) for a in annotations}


def painted_changes(seen: list[dict], current: list[dict]) -> int:
    """Painted slices added, repainted (another version) or erased between `seen` and `current`."""
    before, now = slice_keys(seen), slice_keys(current)
    return sum(1 for k, v in now.items() if before.get(k) != v) + sum(1 for k in before if k not in now)


def refresh_limit(slices_seen: int) -> int:
    """Auto refreshes while at most this many painted slices changed since the last full retrain."""
    return max(REFRESH_MIN_CHANGES, int(REFRESH_SHARE * slices_seen))


def painted_axis(annotations: list[dict]) -> int | None:
    """The axis model.train will slice along (config axis "auto"); None with nothing painted."""
    counts = [0, 0, 0]
    for a in annotations:
        counts[int(a["axis"])] += 1
    return most_painted_axis(counts) if any(counts) else None


def refresh_problem(
    active: ActiveModel | None, preset_name: str, template: TrainConfig, label_map: list[int]
) -> str | None:
    """Why the active model cannot be refreshed by this request, or None."""
    if active is None:
        return "the project has no active model yet"
    if not active.has_weights:
        return f"model {active.id}'s model.pt is missing"
    if active.preset and active.preset != preset_name:
        return f"model {active.id} was trained with the {active.preset} preset and this retrain uses {preset_name}"
    wanted = template.to_dict()
    built = TrainConfig.from_model_file(
        {k: v for k, v in active.config.items() if k in ARCHITECTURE_FIELDS}
    ).to_dict()  # a model written before a field existed was built with its default, or BUILT_BEFORE_THE_FIELD
    differs = [k for k in ARCHITECTURE_FIELDS if _same_json(built[k]) != _same_json(wanted.get(k))]
    if "num_classes" in differs:
        return (
            f"model {active.id} has {active.config.get('num_classes')} classes and the project's label map now "
            f"has {wanted.get('num_classes')}"
        )
    if differs:
        return f"model {active.id} has another network ({', '.join(differs)} differ)"
    if active.label_map is not None and list(active.label_map) != list(label_map):
        return f"the project's label map changed since model {active.id} was trained"
    return None


def _same_json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def choose_mode(
    request: RetrainRequest,
    active: ActiveModel | None,
    template: TrainConfig,
    label_map: list[int],
    annotations: list[dict],
) -> tuple[str, str]:
    """-> ("refresh" | "full", why)."""
    if request.mode == "full":
        return "full", "full retrain requested"
    problem = refresh_problem(active, request.preset, template, label_map)
    if problem:
        if request.mode == "refresh":
            return "full", f"refresh requested, but {problem}: running the full pipeline instead"
        return "full", f"auto: {problem}"
    seen = active.base_annotations_seen or []
    changed, limit = painted_changes(seen, annotations), refresh_limit(len(seen))
    since = f"{changed} painted slice{'s' if changed != 1 else ''} new, changed or erased since model {active.base_id}"
    since += "" if active.base_id == active.id else f" (the last full retrain behind model {active.id})"
    if request.mode == "refresh":
        return "refresh", f"refresh requested: fine-tuning model {active.id}; {since}"
    asked = [name for name in PRETRAINING if explicitly_enabled(request.stages, name)]
    if asked:
        return "full", f"auto: the request enables the {' and '.join(asked)} stage"
    no_help = refresh_did_not_help(active)
    if no_help:
        return "full", f"auto: {no_help}"
    if changed <= limit:
        return "refresh", f"auto: {since}, at most {limit} refresh the active model"
    return "full", f"auto: {since}, more than the {limit} a refresh takes in"


def refresh_did_not_help(active: ActiveModel) -> str | None:
    """Why the active model, a refresh, did worse than the model it fine-tuned, by their prequential
    Dice; None when it did not, when it is no refresh, or when either score rests on too few slices."""
    mine, before = active.prequential or {}, active.previous_prequential or {}
    if active.refreshed_from is None or mine.get("dice") is None or before.get("dice") is None:
        return None
    if min(mine.get("slices", 0), before.get("slices", 0)) < PREQUENTIAL_MIN_SLICES:
        return None
    if mine["dice"] >= before["dice"] - PREQUENTIAL_DROP:
        return None
    return (
        f"model {active.id}, a refresh of model {active.refreshed_from}, scored Dice {mine['dice']:.3f} on the "
        f"{mine['slices']} slices painted since it was trained, below model {active.refreshed_from}'s "
        f"{before['dice']:.3f}: the refresh did not help"
    )


def refresh_config(cfg: TrainConfig, model_pt: str, stages: dict | None = None) -> TrainConfig:
    """Fine-tune `model_pt` on the painted slices: no pretraining, half the fine-tune epochs (the model
    already segments, it only has to take in the new slices), within `refresh_budget_s` when the config
    has a budget, and no self-training, which would add a prediction pass and as many steps again. A
    schedule or stage the request names wins."""
    stages = stages or {}
    out = cfg.replace(
        init_from=str(model_pt),
        global_stage=False,
        local_stage=False,
        finetune_stage=True,
        finetune_epochs=max(1, cfg.finetune_epochs // 2),
        pseudo_stage=explicitly_enabled(stages, "pseudo"),
        budget_s=cfg.refresh_budget_s if cfg.budget_s is not None else None,
    )
    finetune = stages.get("finetune")
    if isinstance(finetune, dict):
        out = out.replace(**{f"finetune_{k}": finetune[k] for k in ("epochs", "steps") if k in finetune})
    if names_growing_schedule(stages):
        out = out.replace(paint_growth_slices=None)
    return out


def reuse_global_config(cfg: TrainConfig, global_pt: str) -> TrainConfig:
    """Start from an earlier run's global encoder instead of training the global stage again."""
    return cfg.replace(init_from=str(global_pt), global_stage=False)


def retrain_config(cfg: TrainConfig, previous_model_dir: str | Path, refresh: bool = False) -> TrainConfig:
    """The next run after the one in `previous_model_dir`: a refresh of its model.pt, else its global.pt
    reused; `cfg` unchanged when that run left no usable file (this one looks at the file system)."""
    previous = Path(previous_model_dir)
    if refresh and (previous / "model.pt").is_file():
        return refresh_config(cfg, str(previous / "model.pt"))
    if (previous / "global.pt").is_file():
        return reuse_global_config(cfg, str(previous / "global.pt"))
    return cfg


def global_plan(
    request: RetrainRequest, project: ProjectSnapshot, config: TrainConfig, history: list[EarlierGlobalStage]
) -> dict:
    """How a full run gets its global encoder -> the `global` job record (see RetrainPlan.global_stage)."""
    target = str(Path(project.model_dir) / "global.pt")
    record = {
        "volume_ids": sorted(v.id for v in project.volumes),
        "axis": painted_axis(project.annotations),
        "signature": config.global_signature(),
    }
    if "global" in request.stages:
        if not stage_enabled(request.stages, "global"):
            return {"use": "off", "why": "the request switched the global stage off"}
        return {
            "use": "trained",
            "job_id": project.job_id,
            "path": target,
            **record,
            "why": "the request asked for the global stage",
        }
    why = None
    for earlier in history:
        found = earlier.record or {}
        if found.get("use") not in ("trained", "reused") or not earlier.file_exists:
            continue  # that job ran no global stage, or stopped before it ended
        trained_by = found.get("job_id")
        if found.get("volume_ids") != record["volume_ids"]:
            mismatch = f"the project's volumes changed since the global stage of job {trained_by}"
        elif found.get("signature") != record["signature"]:
            mismatch = f"the global settings differ from those of job {trained_by}"
        elif found.get("axis") != record["axis"]:
            mismatch = f"the slices are painted along another axis than for job {trained_by}"
        else:
            return {
                **found,
                "use": "reused",
                "source": found.get("path"),
                "path": target,
                "why": f"same volumes and settings as the global stage of job {trained_by}",
            }
        why = why or mismatch  # the newest global stage's reason; an older one may still match (preset switched back)
    return {
        "use": "trained",
        "job_id": project.job_id,
        "path": target,
        **record,
        "why": why or "no earlier global stage of this project",
    }


def plan_retrain(request: RetrainRequest, project: ProjectSnapshot, history: list[EarlierGlobalStage]) -> RetrainPlan:
    """Decide the mode, the training config and where the run starts. Raises Conflict when nothing is painted."""
    if not project.annotations:
        raise Conflict("nothing is painted in this project any more: paint at least one slice, then retrain")
    label_map = sorted(int(v) for v in project.label_values)
    template = preset(
        request.preset,
        device=project.device,
        num_classes=max(label_map) + 1,
        speed_cache=project.speed_cache,
        defer_cleanup=True,  # the server predicts every volume after training and decides from those
        **stage_overrides(request.stages),
    )
    mode, reason = choose_mode(request, project.active, template, label_map, project.annotations)
    painted = [v for v in project.volumes if v.label_path is not None]
    config = template.replace(
        images=[v.source for v in painted],
        labels=[v.label_path for v in painted],
        unlabeled=[v.source for v in project.volumes if v.label_path is None],
        out_dir=project.model_dir,
    )
    if mode == "refresh":
        active = project.active
        model_pt = str(Path(active.path) / "model.pt")
        config = refresh_config(config, model_pt, request.stages)
        if not config.reads_unpainted:  # reading and slicing them would only cost time
            config = config.replace(unlabeled=())
        return RetrainPlan(
            "refresh",
            reason,
            config,
            {"use": "off", "why": "a refresh runs the fine-tune stage only"},
            start_from=model_pt,
            from_model_id=active.id,
            base_model_id=active.base_id,
            label_map=label_map,
        )
    global_stage = global_plan(request, project, config, history)
    start_from = global_stage.pop("source", None)
    if global_stage["use"] == "reused":
        config = reuse_global_config(config, global_stage["path"])
    return RetrainPlan("full", reason, config, global_stage, start_from=start_from, label_map=label_map)


def halve_for_memory(config: dict) -> dict:
    """The out-of-memory retry of a config dict: half of every batch size, and the tile-based local loss."""
    out = dict(config)
    for stage in ("global", "local", "finetune"):
        out[f"{stage}_batch"] = max(1, int(out[f"{stage}_batch"]) // 2)
    out["local_mode"] = "block"
    return out
