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
"""

from __future__ import annotations

import errno
import json
import logging
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
from data import io as volume_io
from data.atomic import atomic_write_bytes
from data.errors import Conflict, InvalidInput, NotFound, SlicewiseError
from data.store import Workspace
from model import config as train_config

log = logging.getLogger("slicewise.worker")

PRESETS = ("quick", "cpu", "paper")
STAGES = ("global", "local", "finetune")
TRAIN_SHARE = 0.9  # overall progress 0..0.9 is training, 0.9..1 predicting the project's volumes
MAX_RESUMES = 1
ROW_UPDATE_S = 0.5  # at most this often a progress line is also written to the job row


def job_view(job: dict) -> dict:
    """A job as the API shows it (no server paths)."""
    params = job.get("params") or {}
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
               who: str = "local") -> tuple[dict, bool]:
        """Queue a retrain -> (job, coalesced). A request while one is queued for the project joins it."""
        preset, stages = check_train_request(preset, stages, self.default_preset)
        with self._lock:
            project = self.workspace.get_project(project_id)
            if not any(self.workspace.list_annotations(v["id"]) for v in self.workspace.list_volumes(project["id"])):
                raise Conflict("nothing is painted in this project yet: paint at least one slice, then retrain")
            waiting = [j for j in self.workspace.list_jobs(state="queued", project_id=project["id"])
                       if j["kind"] == "train" and not (j["params"] or {}).get("resume")]
            if waiting:
                job = waiting[0]
                params = {**job["params"], "preset": preset, "stages": stages,
                          "requests": int(job["params"].get("requests", 1)) + 1}
                job = self.workspace.update_job(job["id"], params=params)
                coalesced = True
            else:
                job = self.workspace.create_job(project["id"], "train",
                                                {"preset": preset, "stages": stages, "requests": 1, "who": who})
                coalesced = False
            self.workspace.record_audit(who, "retrain", {"project_id": project["id"], "job_id": job["id"],
                                                         "preset": preset, "coalesced": coalesced})
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
                config, seen = self._build_config(job, job_dir, model_dir, params)
                atomic_write_bytes(config_path, json.dumps(config, indent=1).encode())
                params["annotations_seen"] = seen
                self.workspace.update_job(job["id"], params=params)
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
        """Export the sparse label volumes and write what model.train needs -> (config dict, annotations seen)."""
        ws = self.workspace
        project = ws.get_project(job["project_id"])
        images, labels, unlabeled, seen = [], [], [], []
        for volume in ws.list_volumes(project["id"]):
            source = str(ws.volume_source_path(volume["id"]))
            painted = ws.list_annotations(volume["id"])
            if not painted:
                unlabeled.append(source)
                continue
            label_path = job_dir / "labels" / f"{volume['id']}.nii.gz"
            label_path.parent.mkdir(parents=True, exist_ok=True)
            volume_io.write_mask(ws.label_volume(volume["id"]), like=ws.load_volume(volume["id"]), path=label_path)
            images.append(source)
            labels.append(str(label_path))
            seen += [{"volume_id": a["volume_id"], "axis": a["axis"], "index": a["index"], "version": a["version"],
                      "reviewed": a["reviewed"]} for a in painted]
        if not images:
            raise Conflict("nothing is painted in this project any more: paint at least one slice, then retrain")
        stages = params.get("stages") or {}
        overrides = stage_overrides(stages)
        config = train_config.preset(
            params.get("preset") or self.default_preset,
            images=images, labels=labels, unlabeled=unlabeled, out_dir=str(model_dir), device=self.device,
            num_classes=max(label["value"] for label in project["labels"]) + 1, **overrides,
        )
        return config.to_dict(), seen

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
