"""The job worker: a thread in the server process that runs queued training jobs one at a time.

For each job it exports the project's sparse label volumes into the job folder, writes the training
config, runs `python -m model.train` through a `JobRunner`, follows `<model dir>/progress.jsonl` into
the job row and the event stream, and on success registers an immutable model version, predicts every
volume with it and then makes it active (so the previous masks stay visible until the new ones exist).

    <workspace>/jobs/<id>/config.json      what model.train runs (kept for resume and audit)
                         /labels/<vol>.nii.gz  sparse label volume (255 = not annotated)
                         /train.log        the subprocess's stdout and stderr
                         /model/           out_dir: progress.jsonl, checkpoint.pt, model.pt, metrics.json

States: queued -> running -> succeeded | failed | cancelled. After a crash of the server, jobs still
marked running are resumed once from their checkpoint (same config, model.train picks up
checkpoint.pt), and failed with the reason if they were resumed before.

Retrain modes (the request's `mode`, decided when the job starts, not when it is queued):

    full     the whole pipeline. The label-free global stage is reused from an earlier job of the
             project (its global.pt, hard-linked into this job's model dir and given as `init_from`)
             when that stage saw exactly the project's current volumes, with the same global settings
             and slicing axis; otherwise it runs again. `stages.global` given explicitly wins.
    refresh  start from the ACTIVE model's model.pt and run the fine-tune stage only, for half the
             preset's epochs (model.config.retrain_config; no self-training stage). Volumes with nothing
             painted are left out of its config when nothing in it reads them. Needs a compatible active
             model (same preset and network, same label map); without one the job runs full and says why.
    auto     refresh when a compatible active model exists and the painted slices differ from those the
             last full retrain behind it saw by at most max(5, 50 %) of them (added, repainted and
             erased slices count; see `refresh_limit`), else full.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
from starlette.requests import Request

from app.jobs import (
    TERMINAL_STATES, EventHub, JobRunner, LocalRunner, last_error_line, looks_out_of_memory, on_shutdown_signal,
    read_tail,
)
from app.predictions import Predictions
from app.speed import speed_cache
from data import io as volume_io
from data.atomic import atomic_write_bytes
from data.errors import Conflict, InvalidInput, NotFound, SlicewiseError
from data.store import Workspace
from model import config as train_config

log = logging.getLogger("slicewise.worker")

PRESETS = ("quick", "cpu", "paper")
STAGES = ("global", "local", "finetune")
MODES = ("auto", "refresh", "full")
MODE_STRENGTH = {"refresh": 0, "auto": 1, "full": 2}  # coalescing keeps the strongest request
REFRESH_MIN_CHANGES = 5  # auto refreshes while at most max(this, REFRESH_SHARE x slices) changed
REFRESH_SHARE = 0.5
# TrainConfig keys that shape what the label-free global stage learns: a global.pt is reused only when
# they are unchanged (and the volumes and slicing axis are the same)
GLOBAL_KEYS = ("widths", "bottleneck", "max_size", "global_proj_dim", "global_epochs", "global_steps",
               "global_batch", "global_lr", "global_weight_decay", "global_temperature", "flip", "rot90",
               "rotate_deg", "scale_range", "intensity", "seed")
# keys a refresh must share with the model it starts from
ARCHITECTURE_KEYS = ("widths", "bottleneck", "num_classes")
TRAIN_SHARE = 0.9  # overall progress 0..0.9 is training, 0.9..1 predicting the project's volumes
MAX_RESUMES = 1
ROW_UPDATE_S = 0.5  # at most this often a progress line is also written to the job row


def job_view(job: dict) -> dict:
    """A job as the API shows it (no server paths)."""
    params = job.get("params") or {}
    global_stage = params.get("global") or {}
    return {
        "id": job["id"],
        "project_id": job["project_id"],
        "kind": job["kind"],
        "state": job["state"],
        "stage": job.get("stage"),
        "epoch": job.get("epoch"),
        "progress": round(float(job.get("progress") or 0.0), 4),
        "eta_s": None if job.get("eta_s") is None else round(float(job["eta_s"]), 1),
        "message": job.get("message"),
        "error": job.get("error"),
        "created": job.get("created"),
        "started": job.get("started"),
        "finished": job.get("finished"),
        "preset": params.get("preset"),
        # what the job does: "refresh" | "full" once it started, until then the request ("auto" too)
        "mode": params.get("mode") or params.get("mode_requested"),
        "mode_requested": params.get("mode_requested"),
        "mode_reason": params.get("mode_reason"),  # why auto or a fallback chose the mode
        "from_model_id": params.get("from_model_id"),  # refresh: the model it fine-tunes
        "global_stage": global_stage.get("use"),  # "trained" | "reused" | "off"
        "global_from_job": global_stage.get("job_id") if global_stage.get("use") == "reused" else None,
        "stages": params.get("stages"),
        "requests": params.get("requests", 1),
        "resumes": params.get("resumes", 0),
        "oom_retry": bool(params.get("oom_retry", False)),
        "model_id": params.get("model_id"),
        "loss": params.get("loss"),
    }


STAGE_KEYS = {"enabled", "epochs", "steps"}
MAX_EPOCHS, MAX_STEPS = 10_000, 100_000


def check_train_request(preset: str | None, stages: dict | None, default_preset: str) -> tuple[str, dict]:
    """Validate a Retrain body -> (preset, stages). A stage is true/false, or
    {"enabled": bool, "epochs": n, "steps": n} to change its schedule."""
    preset = preset or default_preset
    if preset not in PRESETS:
        raise InvalidInput(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if stages is not None and not isinstance(stages, dict):
        raise InvalidInput("stages must be an object such as {\"global\": false}")
    stages = dict(stages or {})
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise InvalidInput(f"unknown stages {unknown}; stages are {', '.join(STAGES)}")
    for name, value in stages.items():
        if isinstance(value, bool):
            continue
        if not isinstance(value, dict) or set(value) - STAGE_KEYS:
            raise InvalidInput(f"stage {name!r} must be true/false or an object with enabled, epochs, steps; "
                               f"got {value!r}")
        if not isinstance(value.get("enabled", True), bool):
            raise InvalidInput(f"stage {name!r}: enabled must be true or false")
        for key, top in (("epochs", MAX_EPOCHS), ("steps", MAX_STEPS)):
            n = value.get(key)
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= top):
                raise InvalidInput(f"stage {name!r}: {key} must be a whole number from 1 to {top}, got {n!r}")
    if not stage_enabled(stages, "finetune"):
        raise InvalidInput("the fine-tune stage makes the segmentation model; it cannot be switched off here")
    return preset, stages


def check_train_mode(mode: str | None, stages: dict | None = None) -> str:
    """Validate the Retrain body's mode -> "auto" | "refresh" | "full" (None = "auto")."""
    mode = "auto" if mode is None else mode
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "refresh":
        asked = [name for name in ("global", "local") if explicitly_enabled(stages or {}, name)]
        if asked:
            raise InvalidInput(f"mode 'refresh' runs the fine-tune stage only, but stages enables {' and '.join(asked)}; "
                               "use mode 'full' or 'auto' to run it")
    return mode


def stronger_mode(a: str | None, b: str | None) -> str:
    """The mode of two coalesced requests: full > auto > refresh."""
    a, b = a or "auto", b or "auto"
    return a if MODE_STRENGTH[a] >= MODE_STRENGTH[b] else b


def explicitly_enabled(stages: dict, name: str) -> bool:
    return name in stages and stage_enabled(stages, name)


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
    """The axis model.train will slice along (config axis "auto"): the one with most painted slices."""
    counts = [0, 0, 0]
    for a in annotations:
        counts[int(a["axis"])] += 1
    return None if not any(counts) else int(np.argmax(counts))


def global_signature(config: dict) -> dict:
    return json.loads(json.dumps({k: config.get(k) for k in GLOBAL_KEYS}))


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (same file system: no space used), else copy it atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        atomic_write_bytes(target, source.read_bytes())


def reads_unpainted(config) -> bool:
    """Whether a run learns from volumes with nothing painted: a stage or branch that uses unpainted slices."""
    return bool(config.global_stage or config.branch != "none"
                or (getattr(config, "pseudo_stage", False) and getattr(config, "pseudo_scope", "painted") == "all"))


def mode_message(params: dict) -> str:
    """The job message once the mode is decided, e.g. "refresh: fine-tuning model 3 (auto: ...)"."""
    if params.get("mode") == "refresh":
        text = f"refresh: fine-tuning model {params.get('from_model_id')}"
    else:
        use = (params.get("global") or {}).get("use")
        text = "full retrain" + {"reused": f", reusing the global stage of job {(params.get('global') or {}).get('job_id')}",
                                 "off": ", without the global stage"}.get(use, "")
    return f"{text} ({params['mode_reason']})" if params.get("mode_reason") else text


def stage_enabled(stages: dict, name: str) -> bool:
    value = stages.get(name, True)
    return value if isinstance(value, bool) else value.get("enabled", True)


def stage_overrides(stages: dict) -> dict:
    """Retrain body stages -> TrainConfig keys (global_stage, global_epochs, global_steps, ...)."""
    out = {}
    for name, value in stages.items():
        out[f"{name}_stage"] = stage_enabled(stages, name)
        if isinstance(value, dict):
            for key in ("epochs", "steps"):
                if key in value:
                    out[f"{name}_{key}"] = value[key]
    return out


def halve_for_memory(config: dict) -> dict:
    """The out-of-memory retry: half of every batch size, and the tile-based local loss."""
    out = dict(config)
    for key in ("global_batch", "local_batch", "finetune_batch"):
        out[key] = max(1, int(out[key]) // 2)
    out["local_mode"] = "block"
    return out


class Worker:
    def __init__(
        self,
        workspace: Workspace,
        runner: JobRunner | None = None,
        device: str = "auto",
        default_preset: str = "cpu",
        predictions: Predictions | None = None,
        hub: EventHub | None = None,
        poll_s: float = 0.25,
        max_resumes: int = MAX_RESUMES,
    ):
        self.workspace = workspace
        self.runner = runner or LocalRunner()
        self.device = device
        self.default_preset = default_preset
        self.predictions = predictions or Predictions(workspace, device)
        self.hub = hub or EventHub()
        self.poll_s = poll_s
        self.max_resumes = max_resumes
        self._lock = threading.Lock()  # submit / claim / cancel see one consistent queue
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.shutting_down = threading.Event()  # SIGTERM/SIGINT seen: event streams close
        self._cancel: set[int] = set()
        self._current: tuple[int, object] | None = None  # (job id, RunHandle) while a subprocess runs
        self._predict_wanted: set[int] = set()  # projects whose active model lacks some masks
        self._predict_wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self, handle_signals: bool = False) -> None:
        """Recover jobs a dead server left running, then run the queue. handle_signals: close event streams
        at SIGTERM/SIGINT (only for the real server, whose lifespan runs in the main thread)."""
        self._stop.clear()
        self.shutting_down.clear()
        if handle_signals:
            on_shutdown_signal(self.shutting_down.set)
        self.recover()
        for project in self.workspace.list_projects():
            if project.get("active_model_id"):
                self._predict_wanted.add(project["id"])
        for name, target in (("slicewise-worker", self._loop), ("slicewise-predict", self._predict_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._predict_wake.set()

    def stop(self, timeout: float = 30) -> None:
        """Graceful shutdown: a running training process is ended and its job queued to resume next start."""
        self._stop.set()
        self.shutting_down.set()
        self._wake.set()
        self._predict_wake.set()
        current = self._current
        if current is not None:
            self.runner.cancel(current[1], grace_s=3)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def recover(self) -> None:
        """Jobs marked running belong to a server that died: end leftovers, resume once, else fail."""
        for job in self.workspace.list_jobs(state="running"):
            job_dir = Path(job["out_dir"])
            if job.get("pid") and self.runner.kill_leftover(job["pid"], job_dir / "config.json"):
                log.warning("job %s: ended its training process %s left by the previous server", job["id"], job["pid"])
            params = dict(job["params"] or {})
            resumes = int(params.get("resumes", 0))
            if resumes >= self.max_resumes:
                self.workspace.update_job(
                    job["id"], state="failed", pid=None,
                    error=(f"the server stopped while this job was running, {resumes + 1} times; it is not resumed "
                           "again. Press Retrain to start a new job"),
                    message="failed after a server restart",
                )
                continue
            params.update(resume=True, resumes=resumes + 1)
            self.workspace.update_job(
                job["id"], state="queued", pid=None, params=params,
                message="the server restarted while this job was running; it resumes from its last checkpoint",
            )

    # ------------------------------------------------------------------ requests from routes

    def submit(self, project_id: int, preset: str | None = None, stages: dict | None = None,
               who: str = "local", mode: str | None = None) -> tuple[dict, bool]:
        """Queue a retrain -> (job, coalesced). A request while one is queued for the project joins it
        (the later request's preset and stages, the stronger mode: full > auto > refresh)."""
        preset, stages = check_train_request(preset, stages, self.default_preset)
        mode = check_train_mode(mode, stages)
        with self._lock:
            project = self.workspace.get_project(project_id)
            if not any(self.workspace.list_annotations(v["id"]) for v in self.workspace.list_volumes(project["id"])):
                raise Conflict("nothing is painted in this project yet: paint at least one slice, then retrain")
            waiting = [j for j in self.workspace.list_jobs(state="queued", project_id=project["id"])
                       if j["kind"] == "train" and not (j["params"] or {}).get("resume")]
            if waiting:
                job = waiting[0]
                params = {**job["params"], "preset": preset, "stages": stages,
                          "mode_requested": stronger_mode(job["params"].get("mode_requested"), mode),
                          "requests": int(job["params"].get("requests", 1)) + 1}
                job = self.workspace.update_job(job["id"], params=params)
                coalesced = True
            else:
                job = self.workspace.create_job(project["id"], "train", {"preset": preset, "stages": stages,
                                                                         "mode_requested": mode, "requests": 1,
                                                                         "who": who})
                coalesced = False
            self.workspace.record_audit(who, "retrain", {"project_id": project["id"], "job_id": job["id"],
                                                         "preset": preset, "mode": mode, "coalesced": coalesced})
        self._wake.set()
        return job, coalesced

    def cancel(self, job_id: int, who: str = "local", wait_s: float = 30) -> dict:
        with self._lock:
            job = self.workspace.get_job(job_id)
            if job["state"] in TERMINAL_STATES:
                raise Conflict(f"job {job['id']} already finished ({job['state']}); there is nothing to cancel")
            self.workspace.record_audit(who, "cancel_job", {"job_id": job["id"]})
            if job["state"] == "queued":
                job = self.workspace.update_job(job["id"], state="cancelled", message="cancelled before it started")
                self._emit(job, "end")
                return job
            self._cancel.add(job["id"])
            current = self._current
        if current is not None and current[0] == job["id"]:
            self.runner.cancel(current[1])
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            job = self.workspace.get_job(job_id)
            if job["state"] in TERMINAL_STATES:
                break
            time.sleep(0.05)
        return job

    def request_predictions(self, project_id: int) -> None:
        self._predict_wanted.add(int(project_id))
        self._predict_wake.set()

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self._claim()
            if job is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except SlicewiseError as exc:  # e.g. everything unpainted meanwhile, a volume that no longer reads
                self._finish(job["id"], "failed", error=str(exc))
            except Exception as exc:  # a bug or a broken workspace: the job must not stay running
                log.exception("job %s failed unexpectedly", job["id"])
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    error = f"the server's disk is full, so the job cannot write its files ({exc}); free some space and retrain"
                else:
                    error = f"internal error: {exc}"
                self._finish(job["id"], "failed", error=error)
            finally:
                self._cancel.discard(job["id"])
                self._current = None

    def _claim(self) -> dict | None:
        with self._lock:
            queued = self.workspace.list_jobs(state="queued")
            if not queued:
                return None
            job = queued[0]
            resumed = bool((job["params"] or {}).get("resume"))
            job = self.workspace.update_job(
                job["id"], state="running", error=None,
                message="resuming from the last checkpoint" if resumed else "preparing the training data",
            )
        self._emit(job)
        return job

    def _run(self, job: dict) -> None:
        job_dir = Path(job["out_dir"])
        model_dir = job_dir / "model"
        config_path = job_dir / "config.json"
        params = dict(job["params"] or {})
        model = self._model_of(job)
        if model is None:
            if not (params.get("resume") and config_path.exists()):
                config, seen = self._build_config(job, job_dir, model_dir, params)  # also decides params["mode"]
                atomic_write_bytes(config_path, json.dumps(config, indent=1).encode())
                params["annotations_seen"] = seen
                job = self.workspace.update_job(job["id"], params=params, message=mode_message(params))
                self._emit(job)
            if not self._train(job, config_path, model_dir):
                return
            model = self._register(job, model_dir)
        self._predict_and_activate(job, model)

    def _model_of(self, job: dict) -> dict | None:
        for model in self.workspace.list_models(job["project_id"]):
            if model["job_id"] == job["id"]:
                return model
        return None

    def _build_config(self, job: dict, job_dir: Path, model_dir: Path, params: dict) -> tuple[dict, list]:
        """Export the sparse label volumes and write what model.train needs -> (config dict, annotations seen).

        Decides the retrain mode and records the decision in `params` (mode, mode_reason,
        from_model_id / base_model_id for a refresh, global: how the global stage is obtained)."""
        ws = self.workspace
        project = ws.get_project(job["project_id"])
        volumes = ws.list_volumes(project["id"])
        painted = {volume["id"]: ws.list_annotations(volume["id"]) for volume in volumes}
        current = [a for v in volumes for a in painted[v["id"]]]
        if not current:
            raise Conflict("nothing is painted in this project any more: paint at least one slice, then retrain")
        preset_name = params.get("preset") or self.default_preset
        stages = params.get("stages") or {}
        num_classes = max(label["value"] for label in project["labels"]) + 1
        label_map = sorted(int(label["value"]) for label in project["labels"])
        template = train_config.preset(preset_name, device=self.device, num_classes=num_classes,
                                       speed_cache=str(speed_cache(ws.root)), **stage_overrides(stages)).to_dict()
        mode, reason, active, base = self._choose_mode(project, params, preset_name, template, label_map, current)
        images, labels, unlabeled, seen = [], [], [], []
        for volume in volumes:
            source = str(ws.volume_source_path(volume["id"]))
            if not painted[volume["id"]]:
                unlabeled.append(source)
                continue
            label_path = job_dir / "labels" / f"{volume['id']}.nii.gz"
            label_path.parent.mkdir(parents=True, exist_ok=True)
            volume_io.write_mask(ws.label_volume(volume["id"]), like=ws.load_volume(volume["id"]), path=label_path)
            images.append(source)
            labels.append(str(label_path))
            seen += [{"volume_id": a["volume_id"], "axis": a["axis"], "index": a["index"], "version": a["version"],
                      "reviewed": a["reviewed"]} for a in painted[volume["id"]]]
        data = dict(images=images, labels=labels, unlabeled=unlabeled, out_dir=str(model_dir))
        params.update(mode=mode, mode_reason=reason, label_map=label_map, from_model_id=None, base_model_id=None)
        if mode == "refresh":
            config = train_config.retrain_config(train_config.TrainConfig.from_dict({**template, **data}),
                                                 Path(active["path"]), refresh=True)
            finetune = stages.get("finetune")
            if isinstance(finetune, dict):  # an explicit fine-tune schedule wins over the halved one
                config = config.replace(**{f"finetune_{k}": finetune[k] for k in ("epochs", "steps") if k in finetune})
            if not reads_unpainted(config):  # reading and slicing them would only cost time
                config = config.replace(unlabeled=())
            params.update(from_model_id=active["id"], base_model_id=base["id"],
                          **{"global": {"use": "off", "why": "a refresh runs the fine-tune stage only"}})
        else:
            config = train_config.TrainConfig.from_dict({**template, **data})
            params["global"] = self._global_plan(job, project, volumes, config, stages, current, model_dir)
            if params["global"]["use"] == "reused":
                config = train_config.retrain_config(config, model_dir, refresh=False)
        return config.to_dict(), seen

    def _choose_mode(self, project: dict, params: dict, preset_name: str, template: dict, label_map: list,
                     current: list) -> tuple[str, str, dict | None, dict | None]:
        """-> (mode, why, active model, base model: the last full retrain behind the active model)."""
        requested = params.get("mode_requested") or "auto"
        if requested == "full":
            return "full", "full retrain requested", None, None
        active = self.workspace.active_model(project["id"])
        problem = self._refresh_problem(active, preset_name, template, label_map)
        if problem:
            if requested == "refresh":
                return "full", f"refresh requested, but {problem}: running the full pipeline instead", None, None
            return "full", f"auto: {problem}", None, None
        base = self._base_model(active)
        changed = painted_changes(base.get("annotations_seen") or [], current)
        limit = refresh_limit(len(base.get("annotations_seen") or []))
        since = f"{changed} painted slice{'s' if changed != 1 else ''} new, changed or erased since model {base['id']}"
        since += "" if base["id"] == active["id"] else f" (the last full retrain behind model {active['id']})"
        if requested == "refresh":
            return "refresh", f"refresh requested: fine-tuning model {active['id']}; {since}", active, base
        stages = params.get("stages") or {}
        asked = [name for name in ("global", "local") if explicitly_enabled(stages, name)]
        if asked:
            return "full", f"auto: the request enables the {' and '.join(asked)} stage", active, base
        if changed <= limit:
            return "refresh", f"auto: {since}, at most {limit} refresh the active model", active, base
        return "full", f"auto: {since}, more than the {limit} a refresh takes in", active, base

    def _refresh_problem(self, active: dict | None, preset_name: str, template: dict, label_map: list) -> str | None:
        """Why the active model cannot be refreshed by this request, or None."""
        if active is None:
            return "the project has no active model yet"
        if not (Path(active["path"]) / "model.pt").is_file():
            return f"model {active['id']}'s model.pt is missing"
        job_params = self._job_params(active.get("job_id"))
        trained_preset = job_params.get("preset")
        if trained_preset and trained_preset != preset_name:
            return f"model {active['id']} was trained with the {trained_preset} preset and this retrain uses {preset_name}"
        config = active.get("config") or {}
        differs = [k for k in ARCHITECTURE_KEYS if json.dumps(config.get(k)) != json.dumps(template.get(k))]
        if "num_classes" in differs:
            return (f"model {active['id']} has {config.get('num_classes')} classes and the project's label map now "
                    f"has {template.get('num_classes')}")
        if differs:
            return f"model {active['id']} has another network ({', '.join(differs)} differ)"
        if job_params.get("label_map") is not None and job_params["label_map"] != label_map:
            return f"the project's label map changed since model {active['id']} was trained"
        return None

    def _base_model(self, active: dict) -> dict:
        """The last full retrain behind `active` (itself unless it is a refresh)."""
        params = self._job_params(active.get("job_id"))
        if params.get("mode") == "refresh" and params.get("base_model_id"):
            try:
                return self.workspace.get_model(params["base_model_id"])
            except NotFound:
                pass
        return active

    def _job_params(self, job_id) -> dict:
        if job_id is None:
            return {}
        try:
            return self.workspace.get_job(job_id)["params"] or {}
        except NotFound:
            return {}

    def _global_plan(self, job: dict, project: dict, volumes: list, config, stages: dict, current: list,
                     model_dir: Path) -> dict:
        """How a full run gets its global encoder -> the `global` job param:
        {"use": "trained" | "reused" | "off", "job_id", "path", "volume_ids", "axis", "signature", "why"}.
        "reused" links the matching global.pt into model_dir (the config then starts from it)."""
        record = {"volume_ids": sorted(v["id"] for v in volumes), "axis": painted_axis(current),
                  "signature": global_signature(config.to_dict())}
        if "global" in stages:
            if not stage_enabled(stages, "global"):
                return {"use": "off", "why": "the request switched the global stage off"}
            return {"use": "trained", "job_id": job["id"], "path": str(model_dir / "global.pt"), **record,
                    "why": "the request asked for the global stage"}
        why = None
        for earlier in reversed(self.workspace.list_jobs(state=list(TERMINAL_STATES), project_id=project["id"])):
            found = (earlier["params"] or {}).get("global") or {}
            if earlier["id"] == job["id"] or found.get("use") not in ("trained", "reused"):
                continue
            path = Path(found.get("path") or "")
            if not path.is_file():
                continue  # that job stopped before its global stage ended
            trained_by = found.get("job_id")
            if found.get("volume_ids") != record["volume_ids"]:
                mismatch = f"the project's volumes changed since the global stage of job {trained_by}"
            elif found.get("signature") != record["signature"]:
                mismatch = f"the global settings differ from those of job {trained_by}"
            elif found.get("axis") != record["axis"]:
                mismatch = f"the slices are painted along another axis than for job {trained_by}"
            else:
                link_or_copy(path, model_dir / "global.pt")
                return {**found, "use": "reused", "path": str(model_dir / "global.pt"),
                        "why": f"same volumes and settings as the global stage of job {trained_by}"}
            why = why or mismatch  # the newest global stage's reason; an older one may still match (preset switched back)
        why = why or "no earlier global stage of this project"
        return {"use": "trained", "job_id": job["id"], "path": str(model_dir / "global.pt"), **record, "why": why}

    # ------------------------------------------------------------------ training subprocess

    def _train(self, job: dict, config_path: Path, model_dir: Path) -> bool:
        """Run model.train until it succeeds (True), or the job ended otherwise (False, row updated)."""
        log_path = config_path.parent / "train.log"
        while True:
            if (model_dir / "model.pt").exists() and (model_dir / "metrics.json").exists():
                return True  # finished before the server went down
            if self._stopped_or_cancelled(job):
                return False
            progress_path = model_dir / "progress.jsonl"
            start_offset = progress_path.stat().st_size if progress_path.exists() else 0  # a resume appends
            handle = self.runner.start(config_path, log_path)
            self._current = (job["id"], handle)
            self.workspace.update_job(job["id"], pid=handle.pid)
            if job["id"] in self._cancel:  # cancel arrived between the check and the start
                self.runner.cancel(handle)
            returncode, reported = self._follow(job, handle, model_dir / "progress.jsonl", start_offset)
            self._current = None
            if self._stopped_or_cancelled(job):
                return False
            if returncode == 0 and (model_dir / "model.pt").exists():
                return True
            tail = read_tail(log_path)
            params = dict(self.workspace.get_job(job["id"])["params"] or {})
            if looks_out_of_memory(returncode, tail) and not params.get("oom_retry"):
                config = halve_for_memory(json.loads(config_path.read_text()))
                atomic_write_bytes(config_path, json.dumps(config, indent=1).encode())
                (model_dir / "checkpoint.pt").unlink(missing_ok=True)  # its batch size no longer applies
                params["oom_retry"] = True
                message = (f"out of memory (exit code {returncode}); retrying once with half the batch size "
                           f"(local {config['local_batch']}, fine-tune {config['finetune_batch']}) and the "
                           "'block' local loss")
                job = self.workspace.update_job(job["id"], params=params, message=message, pid=None)
                self._emit(job, "retry")
                continue
            reason = reported or last_error_line(tail) or "no output"
            if returncode is not None and returncode < 0:
                reason = f"killed by signal {-returncode}; {reason}"
            what = "out of memory again after the retry with smaller batches" if params.get("oom_retry") and \
                looks_out_of_memory(returncode, tail) else f"training stopped with exit code {returncode}"
            self._finish(job["id"], "failed", error=f"{what}: {reason}", pid=None)
            return False

    def _stopped_or_cancelled(self, job: dict) -> bool:
        if job["id"] in self._cancel:
            self._finish(job["id"], "cancelled", pid=None,
                         message="cancelled; the previously active model stays active")
            return True
        if self._stop.is_set():
            params = {**(self.workspace.get_job(job["id"])["params"] or {}), "resume": True}
            self.workspace.update_job(job["id"], state="queued", pid=None, params=params,
                                      message="the server stopped; this job resumes from its last checkpoint")
            return True
        return False

    def _follow(self, job: dict, handle, progress_path: Path, offset: int) -> tuple[int | None, str | None]:
        """Follow the run until it exits -> (exit code, the error it reported in progress.jsonl, if any)."""
        last_row_update, pending, error = 0.0, {}, None
        while True:
            returncode = self.runner.poll(handle)
            offset, events = read_new_lines(progress_path, offset)
            for event in events:
                if event.get("event") == "error" and isinstance(event.get("message"), str):
                    error = event["message"][:1000]
                fields = progress_fields(event)
                if not fields:
                    continue
                pending.update(fields)
                view = job_view({**self.workspace.get_job(job["id"]), **pending_columns(pending)})
                self.hub.publish(job["id"], "progress", {**view, "event": event})
            if pending and (time.monotonic() - last_row_update > ROW_UPDATE_S or returncode is not None):
                self._write_progress(job["id"], pending)
                pending, last_row_update = {}, time.monotonic()
            if returncode is not None:
                return returncode, error
            time.sleep(self.poll_s)

    def _write_progress(self, job_id: int, pending: dict) -> None:
        columns = pending_columns(pending)
        if "loss" in pending:
            columns["params"] = {**(self.workspace.get_job(job_id)["params"] or {}), "loss": pending["loss"]}
        try:
            self.workspace.update_job(job_id, **columns)
        except Conflict:
            pass  # finished meanwhile (cancel)

    # ------------------------------------------------------------------ after training

    def _register(self, job: dict, model_dir: Path) -> dict:
        params = self.workspace.get_job(job["id"])["params"] or {}
        metrics_path = model_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        config = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").exists() \
            else json.loads((model_dir.parent / "config.json").read_text())
        return self.workspace.add_model(job["project_id"], job["id"], str(model_dir), config,
                                        json_safe(metrics), params.get("annotations_seen", []))

    def _predict_and_activate(self, job: dict, model: dict) -> None:
        volumes = self.workspace.list_volumes(job["project_id"])
        failures = []
        job = self.workspace.update_job(job["id"], stage="predict", progress=TRAIN_SHARE, eta_s=None,
                                        message=f"model {model['id']} trained; predicting {len(volumes)} volumes")
        self._emit(job)
        for n, volume in enumerate(volumes, start=1):
            if self._stop.is_set():  # the model is registered: the resumed job goes straight to predicting
                params = {**(self.workspace.get_job(job["id"])["params"] or {}), "resume": True}
                self.workspace.update_job(job["id"], state="queued", params=params,
                                          message="the server stopped; this job resumes predicting at next start")
                return
            if job["id"] in self._cancel:
                self._finish(job["id"], "cancelled", message=(
                    f"cancelled while predicting; model {model['id']} is kept as a version but the previously "
                    "active model stays active"))
                return
            try:
                self.predictions.predict_volume(volume["id"], model)
            except Exception as exc:
                failures.append(f"volume {volume['id']}: {exc}")
            job = self.workspace.update_job(job["id"], progress=TRAIN_SHARE + (1 - TRAIN_SHARE) * n / len(volumes),
                                            message=f"predicted {n} of {len(volumes)} volumes")
            self._emit(job)
        if volumes and len(failures) == len(volumes):  # e.g. a full disk: keep serving the previous model's masks
            self._finish(job["id"], "failed", error=(
                f"model {model['id']} was trained but no mask could be written, so the previously active model "
                "stays active: " + "; ".join(failures)[:500]))
            return
        self.workspace.activate_model(job["project_id"], model["id"], who=(job["params"] or {}).get("who", "local"))
        params = {**(self.workspace.get_job(job["id"])["params"] or {}), "model_id": model["id"]}
        message = f"model {model['id']} is active; masks ready for {len(volumes) - len(failures)} of {len(volumes)} volumes"
        if params.get("mode"):
            message += "; " + mode_message(params)
        if failures:
            message += "; failed: " + "; ".join(failures)[:500]
        self._finish(job["id"], "succeeded", progress=1.0, stage="done", eta_s=0.0, params=params, message=message)

    def _finish(self, job_id: int, state: str, **fields) -> None:
        try:
            job = self.workspace.update_job(job_id, state=state, **fields)
        except Conflict:
            job = self.workspace.get_job(job_id)
        self._emit(job, "end")

    def _emit(self, job: dict, event: str = "progress") -> None:
        self.hub.publish(job["id"], event, job_view(job))

    # ------------------------------------------------------------------ predictions on demand

    def _predict_loop(self) -> None:
        while not self._stop.is_set():
            self._predict_wake.wait(1.0)
            self._predict_wake.clear()
            while self._predict_wanted and not self._stop.is_set():
                project_id = self._predict_wanted.pop()
                try:
                    model = self.workspace.active_model(project_id)
                    if model is None:
                        continue
                    for volume_id in self.predictions.missing(project_id, model["id"]):
                        if self._stop.is_set() or self.workspace.active_model(project_id)["id"] != model["id"]:
                            break
                        self.predictions.predict_volume(volume_id, model)
                except NotFound:
                    continue
                except Exception:
                    log.exception("predicting project %s failed", project_id)


# ---------------------------------------------------------------------- progress.jsonl


def read_new_lines(path: Path, offset: int) -> tuple[int, list[dict]]:
    """Complete JSON lines appended since `offset` -> (new offset, events). A half-written last line waits."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0, []
    if size < offset:
        offset = 0  # the file was started again
    if size == offset:
        return offset, []
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read(size - offset)
    end = chunk.rfind(b"\n")
    if end < 0:
        return offset, []
    events = []
    for line in chunk[: end + 1].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return offset + end + 1, events


def progress_fields(event: dict) -> dict:
    """What a progress line says about the job: stage, epoch, progress (0-1 of training), eta_s, loss, message."""
    out = {}
    if isinstance(event.get("stage"), str):
        out["stage"] = event["stage"]
    for key in ("epoch", "epochs"):
        if isinstance(event.get(key), (int, float)) and not isinstance(event.get(key), bool):
            out[key] = int(event[key])
    for key in ("progress", "fraction"):
        if isinstance(event.get(key), (int, float)):
            out["progress"] = min(1.0, max(0.0, float(event[key])))
            break
    for key in ("eta_s", "eta"):
        if isinstance(event.get(key), (int, float)):
            out["eta_s"] = max(0.0, float(event[key]))
            break
    if isinstance(event.get("loss"), (int, float)) and np.isfinite(event["loss"]):
        out["loss"] = float(event["loss"])
    kind = event.get("event")
    if kind in ("resume", "error") and isinstance(event.get("message"), str):
        out["message"] = f"{kind}: {event['message']}"[:500]
    elif kind == "start":
        out["message"] = "training started"
    elif kind == "done":
        out["message"] = "training finished; predicting"
    return out


def pending_columns(pending: dict) -> dict:
    columns = {k: v for k, v in pending.items() if k in ("stage", "epoch", "eta_s", "message")}
    if "progress" in pending:
        columns["progress"] = TRAIN_SHARE * pending["progress"]
    if "message" not in columns and "stage" in pending:
        columns["message"] = f"training: {pending['stage']} stage" + (
            f", epoch {pending['epoch']}" + (f"/{pending['epochs']}" if "epochs" in pending else "")
            if "epoch" in pending else "")
    return columns


def json_safe(value):
    """metrics.json may hold NaN (a class never predicted); the store keeps strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def get_worker(request: Request) -> Worker:
    """FastAPI dependency: the app's worker (created in create_app's lifespan)."""
    return request.app.state.worker
