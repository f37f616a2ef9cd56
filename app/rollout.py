"""After model.train succeeded: the run's model is registered as an immutable version, every volume of the
project is predicted with it (on the runner's workers when the runner fans inference out), and only then
does the worker make it active, so the previous masks stay visible until the new ones exist.

The worker owns the job's states; this module does the work between them and words what the row says.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from app.job_params import JobParams
from app.jobs import JobRunner
from app.predictions import Predictions
from data.errors import SlicewiseError
from data.store import Workspace
from data.store_db import jsonable

log = logging.getLogger("slicewise.worker")


def register_model(workspace: Workspace, job: dict, model_dir: Path) -> dict:
    """The finished run in model_dir as a new model version of the job's project -> its row."""
    params = JobParams.from_dict(workspace.get_job(job["id"])["params"])
    metrics_path = model_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    config = (
        json.loads((model_dir / "config.json").read_text())
        if (model_dir / "config.json").exists()
        else json.loads((model_dir.parent / "config.json").read_text())
    )
    return workspace.add_model(
        job["project_id"], job["id"], str(model_dir), config, jsonable(metrics), params.annotations_seen
    )


def predict_volumes(
    workspace: Workspace,
    predictions: Predictions,
    runner: JobRunner,
    model: dict,
    volumes: list[dict],
    interrupted: Callable[[], bool],
    predicted: Callable[[int], None],
    decided: Callable[[dict], None] = lambda report: None,
) -> list[str] | None:
    """Predict every volume with the model -> one line per volume that failed, or None once `interrupted()`
    (asked before each volume) says stop. predicted(n) follows each of the n volumes done; decided(report)
    follows the model's "auto" clean-up decision, made from the first painted volumes' predictions."""
    remote = remote_predictions(workspace, predictions, runner, model, volumes)
    stopped = False

    def keep_going() -> bool:
        nonlocal stopped
        stopped = stopped or interrupted()
        return not stopped

    try:
        report = predictions.settle_cleanup(model, volumes, remote, keep_going=keep_going)
    except Exception:  # the masks are then written uncleaned: worse, not wrong
        log.exception("deciding the clean-up of model %s failed", model["id"])
        report = None
    if stopped:
        return None
    if report is not None:
        decided(report)
    failures = []
    for n, volume in enumerate(volumes, start=1):
        if interrupted():
            return None
        try:
            predictions.predict_volume(volume["id"], model, computed=remote.get(volume["id"]))
        except Exception as exc:
            failures.append(f"volume {volume['id']}: {exc}")
        predicted(n)
    return failures


def remote_predictions(
    workspace: Workspace, predictions: Predictions, runner: JobRunner, model: dict, volumes: list[dict]
) -> dict:
    """The runner's fan-out of the volumes' inference across its workers, when it has one, else {}."""
    pending = [v for v in volumes if not predictions.is_ready(v["id"], model["id"])]
    if not pending or not runner.fans_out_predictions:
        return {}
    num_classes = int((model.get("config") or {}).get("num_classes") or 1)
    snapshots = {v["id"]: predictions.paint_snapshot(v["id"]) for v in pending}
    try:
        inputs = [
            (
                v["id"],
                workspace.volume_array(v["id"]),
                tuple(v["spacing"]),
                predictions.wants_probs(v, num_classes),
                None if snapshots[v["id"]] is None else snapshots[v["id"]][1],
            )
            for v in pending
        ]
        waits = runner.predict_many(Path(model["path"]) / "model.pt", inputs)
    except SlicewiseError as exc:
        log.warning("predicting on the runner's workers failed (%s); predicting here", exc)
        return {}
    # what Predictions.predict_volume takes: (labels, probs, labels with the paint, which saves of it)
    return {
        vid: (lambda wait=wait, used=snapshots[vid] and snapshots[vid][0]: (*wait(), used))
        for vid, wait in waits.items()
    }


def cancelled_message(model: dict | None) -> str:
    """A cancelled job's last word; model: the version registered before the cancel, if any."""
    if model is None:
        return "cancelled; the previously active model stays active"
    return (
        f"cancelled while predicting; model {model['id']} is kept as a version but the previously "
        "active model stays active"
    )


def no_mask_error(model: dict, failures: list[str]) -> str:
    return (
        f"model {model['id']} was trained but no mask could be written, so the previously active model "
        "stays active: " + "; ".join(failures)[:500]
    )


def activated_message(model: dict, volumes: list[dict], failures: list[str], params: JobParams) -> str:
    message = f"model {model['id']} is active; masks ready for {len(volumes) - len(failures)} of {len(volumes)} volumes"
    if params.mode:
        message += "; " + params.mode_message()
    if failures:
        message += "; failed: " + "; ".join(failures)[:500]
    return message
