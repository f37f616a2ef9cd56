"""The job worker: threads in the server process that run queued training jobs, one per project at a time
and as many projects at once as the runner allows (`JobRunner.parallel_jobs`: 1 locally).

For each job it has the retrain planned (app/retrain_inputs.py asks `model.retrain.plan_retrain` how to
train and exports the project's sparse label volumes into the job folder), writes the config, runs
`python -m model.train` through a `JobRunner`, follows the run's progress file into the job row and the
event stream (app/job_progress.py), and on success registers an immutable model version, predicts every
volume with it and then makes it active (app/rollout.py: the previous masks stay visible until the new
ones exist).

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

import json
import logging
import threading
import time
from pathlib import Path

from starlette.requests import Request

from app import retrain_inputs, rollout
from app.job_params import JobParams
from app.job_progress import ProgressFollower
from app.jobs import (
    EventHub,
    JobRunner,
    LocalRunner,
    failure_message,
    looks_out_of_memory,
    on_shutdown_signal,
    oom_retry_message,
    read_tail,
    unexpected_failure_message,
)
from app.prediction_queue import PredictionQueue
from app.predictions import Predictions
from app.views import DONE, PREDICTING, TRAIN_SHARE, cleanup_words, job_view
from data.atomic import atomic_write_bytes
from data.errors import Conflict, SlicewiseError
from data.store import FINISHED_STATES, Workspace
from model import retrain
from model.progress import FILE_NAME as PROGRESS_FILE

log = logging.getLogger("slicewise.worker")

MAX_RESUMES = 1


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
        """Queue a retrain -> (job, coalesced): a request while one is queued for the project joins it."""
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
            coalesced = bool(waiting)
            if coalesced:
                params = JobParams.from_dict(waiting[0]["params"]).joined(preset, stages, mode)
                job = self.workspace.update_job(waiting[0]["id"], params=params.to_dict())
            else:
                params = JobParams(preset=preset, stages=stages, mode_requested=mode, who=who)
                job = self.workspace.create_job(project["id"], "train", params.to_dict())
            details = {"project_id": project["id"], "job_id": job["id"], "preset": preset, "mode": mode}
            self.workspace.record_audit(who, "retrain", {**details, "coalesced": coalesced})
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
                self._finish(job["id"], "failed", error=unexpected_failure_message(exc))
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
                config, _ = retrain_inputs.plan_job(
                    self.workspace, job, job_dir, model_dir, self.device, self.default_preset
                )
                atomic_write_bytes(config_path, json.dumps(config, indent=1).encode())
                params = JobParams.from_dict(self.workspace.get_job(job["id"])["params"])
                job = self.workspace.update_job(job["id"], message=params.mode_message())
                self._emit(job)
            if not self._train(job, config_path, model_dir):
                return
            model = rollout.register_model(self.workspace, job, model_dir)
        self._predict_and_activate(job, model)

    def _model_of(self, job: dict) -> dict | None:
        return next((m for m in self.workspace.list_models(job["project_id"]) if m["job_id"] == job["id"]), None)

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
                params=self._params_with(
                    job, runner=self.runner.name, engine_id=handle.engine_id, ddp_workers=handle.ddp_workers
                ),
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

    def _stopped_or_cancelled(self, job: dict, model: dict | None = None) -> bool:
        """A cancel or a server stop seen between two steps: the job ended, or is queued to resume -> True.
        model: the version registered already; while predicting a stop wins and the resumed job predicts."""
        training = {"pid": None} if model is None else {}
        if job["id"] in self._cancel and (model is None or not self._stop.is_set()):
            self._finish(job["id"], "cancelled", message=rollout.cancelled_message(model), **training)
            return True
        if self._stop.is_set():
            self.workspace.update_job(
                job["id"],
                state="queued",
                params=self._params_with(job, resume=True),
                message="the server stopped; this job resumes "
                + ("from its last checkpoint" if model is None else "predicting at next start"),
                **training,
            )
            return True
        return False

    def _follow(self, job: dict, handle, progress_path: Path, offset: int) -> tuple[int | None, str | None]:
        """Follow the run until it exits -> (exit code, the error it reported in progress.jsonl, if any)."""
        progress = ProgressFollower(self.workspace, self.hub, job["id"], progress_path, offset)
        engine_id = handle.engine_id
        while True:
            if self._stop.is_set() and self.runner.outlives_server:
                return None, progress.error  # the run goes on without this server; the next one follows it
            returncode = self.runner.poll(handle)
            if handle.engine_id != engine_id:  # the engine started the run again elsewhere (a lost node)
                engine_id = handle.engine_id
                self.workspace.update_job(job["id"], params=self._params_with(job, engine_id=engine_id))
            progress.read(final=returncode is not None)
            if returncode is not None:
                return returncode, progress.error
            time.sleep(self.poll_s)

    # ------------------------------------------------------------------ after training

    def _predict_and_activate(self, job: dict, model: dict) -> None:
        volumes = self.workspace.list_volumes(job["project_id"])
        job = self.workspace.update_job(
            job["id"],
            stage=PREDICTING,
            progress=TRAIN_SHARE,
            eta_s=None,
            message=f"model {model['id']} trained; predicting {len(volumes)} volumes",
        )
        self._emit(job)

        def predicted(n: int) -> None:
            progress = TRAIN_SHARE + (1 - TRAIN_SHARE) * n / len(volumes)
            self._emit(
                self.workspace.update_job(
                    job["id"], progress=progress, message=f"predicted {n} of {len(volumes)} volumes"
                )
            )

        failures = rollout.predict_volumes(
            self.workspace,
            self.predictions,
            self.runner,
            model,
            volumes,
            interrupted=lambda: self._stopped_or_cancelled(job, model),
            predicted=predicted,
            decided=lambda report: self._emit(self.workspace.update_job(job["id"], message=cleanup_words(report))),
        )
        if failures is None:
            return
        if volumes and len(failures) == len(volumes):  # e.g. a full disk: keep serving the previous model's masks
            self._finish(job["id"], "failed", error=rollout.no_mask_error(model, failures))
            return
        params = JobParams.from_dict(self.workspace.get_job(job["id"])["params"]).replace(model_id=model["id"])
        self.workspace.activate_model(job["project_id"], model["id"], who=params.who)
        message = rollout.activated_message(model, volumes, failures, params)
        self._finish(
            job["id"], "succeeded", progress=1.0, stage=DONE, eta_s=0.0, params=params.to_dict(), message=message
        )

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
