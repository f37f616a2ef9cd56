"""The job worker: threads in the server process that run queued training jobs, one per project at a time
and as many projects at once as the runner allows (`JobRunner.parallel_jobs`: 1 locally).

For each job it asks `model.retrain.plan_retrain` how to train (mode, config, where the run starts),
exports the project's sparse label volumes into the job folder, writes the config, runs
`python -m model.train` through a `JobRunner`, follows the run's progress file (model/progress.py)
into the job row and the event stream, and on success registers an immutable model version, predicts
every volume with it and then makes it active (so the previous masks stay visible until the new ones
exist).

    <workspace>/jobs/<id>/config.json      what model.train runs (kept for resume and audit)
                         /labels/<vol>.nii.gz  sparse label volume (255 = not annotated)
                         /train.log        the subprocess's stdout and stderr
                         /model/           out_dir: progress.jsonl, checkpoint.pt, model.pt, metrics.json

States (data.store.JOB_STATES): queued -> running -> succeeded | failed | cancelled. After a crash of
the server, jobs still marked running are resumed once from their checkpoint (same config, model.train
picks up checkpoint.pt), and failed with the reason if they were resumed before. A runner whose runs
outlive the server (Ray) keeps them going instead: the job is followed again where it got to.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from pathlib import Path

from starlette.requests import Request

from app import retrain_inputs
from app.job_params import JobParams
from app.jobs import (
    EventHub,
    JobRunner,
    LocalRunner,
    failure_message,
    looks_out_of_memory,
    on_shutdown_signal,
    oom_retry_message,
    read_tail,
)
from app.prediction_queue import PredictionQueue
from app.predictions import Predictions
from app.views import DONE, PREDICTING, TRAIN_SHARE, cleanup_words, job_view, pending_columns
from data.atomic import atomic_write_bytes, link_or_copy
from data.errors import Conflict, SlicewiseError
from data.store import FINISHED_STATES, Workspace
from data.store_db import jsonable
from model import retrain
from model.progress import FILE_NAME as PROGRESS_FILE
from model.progress import progress_fields, read_new_lines, reported_error

log = logging.getLogger("slicewise.worker")

MAX_RESUMES = 1
ROW_UPDATE_S = 0.5  # at most this often a progress line is also written to the job row


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
        self._current: dict[int, object] = {}  # job id -> RunHandle while its training runs
        self._job_threads: dict[int, threading.Thread] = {}
        self.prediction_queue = PredictionQueue(workspace, self.predictions)
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
        thread = threading.Thread(target=self._loop, name="slicewise-worker", daemon=True)
        thread.start()
        self._threads = [thread, self.prediction_queue.start()]

    def stop(self, timeout: float = 30) -> None:
        """Graceful shutdown: a running training process is ended and its job queued to resume next start."""
        self._stop.set()
        self.shutting_down.set()
        self._wake.set()
        self.prediction_queue.stop()
        if not self.runner.outlives_server:  # a run on a cluster goes on; the next start follows it again
            for handle in list(self._current.values()):
                self.runner.cancel(handle, grace_s=3)
        for thread in [*self._threads, *list(self._job_threads.values())]:
            thread.join(timeout)
        self._threads.clear()

    def recover(self) -> None:
        """Jobs marked running belong to a server that died: end leftovers, resume once, else fail."""
        for job in self.workspace.list_jobs(state="running"):
            job_dir = Path(job["out_dir"])
            params = JobParams.from_dict(job["params"])
            if self.runner.outlives_server and self.runner.reattachable(job_dir / "config.json"):
                self.workspace.update_job(
                    job["id"],
                    state="queued",
                    params=params.replace(resume=True).to_dict(),
                    message=f"the server restarted while this job was running on {self.runner.name}; it is followed again",
                )
                continue
            if job.get("pid") and self.runner.kill_leftover(job["pid"], job_dir / "config.json"):
                log.warning("job %s: ended its training process %s left by the previous server", job["id"], job["pid"])
            resumes = params.resumes
            if resumes >= self.max_resumes:
                self.workspace.update_job(
                    job["id"],
                    state="failed",
                    pid=None,
                    error=(
                        f"the server stopped while this job was running, {resumes + 1} times; it is not resumed "
                        "again. Press Retrain to start a new job"
                    ),
                    message="failed after a server restart",
                )
                continue
            self.workspace.update_job(
                job["id"],
                state="queued",
                pid=None,
                params=params.replace(resume=True, resumes=resumes + 1).to_dict(),
                message="the server restarted while this job was running; it resumes from its last checkpoint",
            )

    # ------------------------------------------------------------------ requests from routes

    def submit(
        self,
        project_id: int,
        preset: str | None = None,
        stages: dict | None = None,
        who: str = "local",
        mode: str | None = None,
    ) -> tuple[dict, bool]:
        """Queue a retrain -> (job, coalesced). A request while one is queued for the project joins it
        (the later request's preset and stages, the stronger mode: full > auto > refresh)."""
        preset, stages = retrain.check_train_request(preset, stages, self.default_preset)
        mode = retrain.check_train_mode(mode, stages)
        with self._lock:
            project = self.workspace.get_project(project_id)
            if not any(self.workspace.list_annotations(v["id"]) for v in self.workspace.list_volumes(project["id"])):
                raise Conflict("nothing is painted in this project yet: paint at least one slice, then retrain")
            waiting = [
                j
                for j in self.workspace.list_jobs(state="queued", project_id=project["id"])
                if j["kind"] == "train" and not JobParams.from_dict(j["params"]).resume
            ]
            if waiting:
                job, params = waiting[0], JobParams.from_dict(waiting[0]["params"])
                params = params.replace(
                    preset=preset,
                    stages=stages,
                    requests=params.requests + 1,
                    mode_requested=retrain.stronger_mode(params.mode_requested, mode),
                )
                job = self.workspace.update_job(job["id"], params=params.to_dict())
                coalesced = True
            else:
                params = JobParams(preset=preset, stages=stages, mode_requested=mode, who=who)
                job = self.workspace.create_job(project["id"], "train", params.to_dict())
                coalesced = False
            self.workspace.record_audit(
                who,
                "retrain",
                {
                    "project_id": project["id"],
                    "job_id": job["id"],
                    "preset": preset,
                    "mode": mode,
                    "coalesced": coalesced,
                },
            )
        self._wake.set()
        return job, coalesced

    def cancel(self, job_id: int, who: str = "local", wait_s: float = 30) -> dict:
        with self._lock:
            job = self.workspace.get_job(job_id)
            if job["state"] in FINISHED_STATES:
                raise Conflict(f"job {job['id']} already finished ({job['state']}); there is nothing to cancel")
            self.workspace.record_audit(who, "cancel_job", {"job_id": job["id"]})
            if job["state"] == "queued":
                job = self.workspace.update_job(job["id"], state="cancelled", message="cancelled before it started")
                self._emit(job, "end")
                return job
            self._cancel.add(job["id"])
            handle = self._current.get(job["id"])
        if handle is not None:
            self.runner.cancel(handle)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            job = self.workspace.get_job(job_id)
            if job["state"] in FINISHED_STATES:
                break
            time.sleep(0.05)
        return job

    def request_predictions(self, project_id: int) -> None:
        self.prediction_queue.request(project_id)

    # ------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            for job_id, thread in list(self._job_threads.items()):
                if not thread.is_alive():
                    del self._job_threads[job_id]
            job = self._claim() if len(self._job_threads) < self.runner.parallel_jobs else None
            if job is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            thread = threading.Thread(target=self._run_job, args=(job,), name=f"slicewise-job-{job['id']}", daemon=True)
            self._job_threads[job["id"]] = thread
            thread.start()

    def _run_job(self, job: dict) -> None:
        try:
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
            self._current.pop(job["id"], None)
            self._wake.set()  # a slot is free

    def _claim(self) -> dict | None:
        """The oldest queued job of a project that has none running, now marked running."""
        with self._lock:
            busy = {j["project_id"] for j in self.workspace.list_jobs(state="running")}
            queued = [j for j in self.workspace.list_jobs(state="queued") if j["project_id"] not in busy]
            if not queued:
                return None
            job = queued[0]
            resumed = JobParams.from_dict(job["params"]).resume
            job = self.workspace.update_job(
                job["id"],
                state="running",
                error=None,
                message="resuming from the last checkpoint" if resumed else "preparing the training data",
            )
        self._emit(job)
        return job

    def _run(self, job: dict) -> None:
        job_dir = Path(job["out_dir"])
        model_dir = job_dir / "model"
        config_path = job_dir / "config.json"
        model = self._model_of(job)
        if model is None:
            if not (JobParams.from_dict(job["params"]).resume and config_path.exists()):
                config, _ = self._build_config(job, job_dir, model_dir, job["params"])
                atomic_write_bytes(config_path, json.dumps(config, indent=1).encode())
                params = JobParams.from_dict(self.workspace.get_job(job["id"])["params"])
                job = self.workspace.update_job(job["id"], message=params.mode_message())
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
        """Plan the retrain, export the sparse label volumes it reads and record the decision in the job's
        params -> (the config for model.train, the painted slices it sees)."""
        asked = JobParams.from_dict(params)
        request = retrain.RetrainRequest(
            asked.preset or self.default_preset, asked.stages, asked.mode_requested or "auto"
        )
        snapshot = retrain_inputs.project_snapshot(self.workspace, job, job_dir, model_dir, self.device)
        plan = retrain.plan_retrain(request, snapshot, retrain_inputs.global_history(self.workspace, job))
        seen = retrain_inputs.export_labels(self.workspace, snapshot)
        if plan.global_stage.get("use") == "reused":
            link_or_copy(Path(plan.start_from), Path(plan.global_stage["path"]))
        decided = asked.replace(
            mode=plan.mode,
            mode_reason=plan.reason,
            label_map=plan.label_map,
            from_model_id=plan.from_model_id,
            base_model_id=plan.base_model_id,
            global_stage=plan.global_stage,
            annotations_seen=seen,
        )
        self.workspace.update_job(job["id"], params=decided.to_dict())
        return plan.config.to_dict(), seen

    # ------------------------------------------------------------------ training subprocess

    def _train(self, job: dict, config_path: Path, model_dir: Path) -> bool:
        """Run model.train until it succeeds (True), or the job ended otherwise (False, row updated)."""
        log_path = config_path.parent / "train.log"
        while True:
            if (model_dir / "model.pt").exists() and (model_dir / "metrics.json").exists():
                return True  # finished before the server went down
            if self._stopped_or_cancelled(job):
                return False
            progress_path = model_dir / PROGRESS_FILE
            start_offset = progress_path.stat().st_size if progress_path.exists() else 0  # a resume appends
            handle = self.runner.start(config_path, log_path)
            self._current[job["id"]] = handle
            self.workspace.update_job(
                job["id"],
                pid=handle.pid,
                params=self._params_with(job, runner=self.runner.name, engine_id=handle.engine_id),
            )
            if job["id"] in self._cancel:  # cancel arrived between the check and the start
                self.runner.cancel(handle)
            returncode, reported = self._follow(job, handle, progress_path, start_offset)
            self._current.pop(job["id"], None)
            if self._stopped_or_cancelled(job):
                return False
            if returncode == 0 and (model_dir / "model.pt").exists():
                return True
            tail = read_tail(log_path)
            params = JobParams.from_dict(self.workspace.get_job(job["id"])["params"])
            if looks_out_of_memory(returncode, tail) and not params.oom_retry:
                config = retrain.halve_for_memory(json.loads(config_path.read_text()))
                atomic_write_bytes(config_path, json.dumps(config, indent=1).encode())
                (model_dir / "checkpoint.pt").unlink(missing_ok=True)  # its batch size no longer applies
                job = self.workspace.update_job(
                    job["id"],
                    params=params.replace(oom_retry=True).to_dict(),
                    message=oom_retry_message(returncode, config),
                    pid=None,
                )
                self._emit(job, "retry")
                continue
            self._finish(
                job["id"], "failed", error=failure_message(returncode, tail, reported, params.oom_retry), pid=None
            )
            return False

    def _stopped_or_cancelled(self, job: dict) -> bool:
        if job["id"] in self._cancel:
            self._finish(
                job["id"], "cancelled", pid=None, message="cancelled; the previously active model stays active"
            )
            return True
        if self._stop.is_set():
            self.workspace.update_job(
                job["id"],
                state="queued",
                pid=None,
                params=self._params_with(job, resume=True),
                message="the server stopped; this job resumes from its last checkpoint",
            )
            return True
        return False

    def _follow(self, job: dict, handle, progress_path: Path, offset: int) -> tuple[int | None, str | None]:
        """Follow the run until it exits -> (exit code, the error it reported in progress.jsonl, if any)."""
        last_row_update, pending, error = 0.0, {}, None
        while True:
            if self._stop.is_set() and self.runner.outlives_server:
                return None, error  # the run goes on without this server; the next one follows it
            returncode = self.runner.poll(handle)
            offset, events = read_new_lines(progress_path, offset)
            for event in events:
                error = reported_error(event) or error
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
            columns["params"] = self._params_with({"id": job_id}, loss=pending["loss"])
        try:
            self.workspace.update_job(job_id, **columns)
        except Conflict:
            pass  # finished meanwhile (cancel)

    # ------------------------------------------------------------------ after training

    def _register(self, job: dict, model_dir: Path) -> dict:
        params = JobParams.from_dict(self.workspace.get_job(job["id"])["params"])
        metrics_path = model_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        config = (
            json.loads((model_dir / "config.json").read_text())
            if (model_dir / "config.json").exists()
            else json.loads((model_dir.parent / "config.json").read_text())
        )
        return self.workspace.add_model(
            job["project_id"], job["id"], str(model_dir), config, jsonable(metrics), params.annotations_seen
        )

    def _predict_and_activate(self, job: dict, model: dict) -> None:
        volumes = self.workspace.list_volumes(job["project_id"])
        failures = []
        job = self.workspace.update_job(
            job["id"],
            stage=PREDICTING,
            progress=TRAIN_SHARE,
            eta_s=None,
            message=f"model {model['id']} trained; predicting {len(volumes)} volumes",
        )
        self._emit(job)
        remote = self._remote_predictions(model, volumes)
        self._settle_cleanup(job, model, volumes, remote)
        for n, volume in enumerate(volumes, start=1):
            if self._stop.is_set():  # the model is registered: the resumed job goes straight to predicting
                self.workspace.update_job(
                    job["id"],
                    state="queued",
                    params=self._params_with(job, resume=True),
                    message="the server stopped; this job resumes predicting at next start",
                )
                return
            if job["id"] in self._cancel:
                self._finish(
                    job["id"],
                    "cancelled",
                    message=(
                        f"cancelled while predicting; model {model['id']} is kept as a version but the previously "
                        "active model stays active"
                    ),
                )
                return
            try:
                self.predictions.predict_volume(volume["id"], model, computed=remote.get(volume["id"]))
            except Exception as exc:
                failures.append(f"volume {volume['id']}: {exc}")
            job = self.workspace.update_job(
                job["id"],
                progress=TRAIN_SHARE + (1 - TRAIN_SHARE) * n / len(volumes),
                message=f"predicted {n} of {len(volumes)} volumes",
            )
            self._emit(job)
        if volumes and len(failures) == len(volumes):  # e.g. a full disk: keep serving the previous model's masks
            self._finish(
                job["id"],
                "failed",
                error=(
                    f"model {model['id']} was trained but no mask could be written, so the previously active model "
                    "stays active: " + "; ".join(failures)[:500]
                ),
            )
            return
        params = JobParams.from_dict(self.workspace.get_job(job["id"])["params"]).replace(model_id=model["id"])
        self.workspace.activate_model(job["project_id"], model["id"], who=params.who)
        message = (
            f"model {model['id']} is active; masks ready for {len(volumes) - len(failures)} of {len(volumes)} volumes"
        )
        if params.mode:
            message += "; " + params.mode_message()
        if failures:
            message += "; failed: " + "; ".join(failures)[:500]
        self._finish(
            job["id"], "succeeded", progress=1.0, stage=DONE, eta_s=0.0, params=params.to_dict(), message=message
        )

    def _settle_cleanup(self, job: dict, model: dict, volumes: list[dict], remote: dict) -> None:
        """The model's "auto" clean-up, decided from its first predictions of painted volumes."""
        try:
            report = self.predictions.settle_cleanup(
                model, volumes, remote, keep_going=lambda: not self._stop.is_set() and job["id"] not in self._cancel
            )
        except Exception:  # the masks are written uncleaned: worse, not wrong
            log.exception("deciding the clean-up of model %s failed", model["id"])
            return
        if report is not None:
            self._emit(self.workspace.update_job(job["id"], message=cleanup_words(report)))

    def _remote_predictions(self, model: dict, volumes: list[dict]) -> dict:
        """The runner's fan-out of the volumes' inference across its workers, when it has one, else {}."""
        pending = [v for v in volumes if not self.predictions.is_ready(v["id"], model["id"])]
        if not pending or not self.runner.fans_out_predictions:
            return {}
        num_classes = int((model.get("config") or {}).get("num_classes") or 1)
        try:
            inputs = [
                (
                    v["id"],
                    self.workspace.volume_array(v["id"]),
                    tuple(v["spacing"]),
                    self.predictions.wants_probs(v, num_classes),
                )
                for v in pending
            ]
            return self.runner.predict_many(Path(model["path"]) / "model.pt", inputs)
        except SlicewiseError as exc:
            log.warning("predicting on the runner's workers failed (%s); predicting here", exc)
            return {}

    def _params_with(self, job: dict, **changes) -> dict:
        """The job's stored params with `changes`, as the row keeps them."""
        return JobParams.from_dict(self.workspace.get_job(job["id"])["params"]).replace(**changes).to_dict()

    def _finish(self, job_id: int, state: str, **fields) -> None:
        try:
            job = self.workspace.update_job(job_id, state=state, **fields)
        except Conflict:
            job = self.workspace.get_job(job_id)
        self._emit(job, "end")

    def _emit(self, job: dict, event: str = "progress") -> None:
        self.hub.publish(job["id"], event, job_view(job))


def get_worker(request: Request) -> Worker:
    """FastAPI dependency: the app's worker (created in create_app's lifespan)."""
    return request.app.state.worker
