"""Rows of the store as the API shows them: no server paths, only what a person or a client needs."""

from __future__ import annotations

from app.job_params import JobParams
from model.config import STAGE_LABELS

PREDICTING, DONE = "predict", "done"  # a job's stage after model.train: predicting every volume, finished
TRAIN_SHARE = 0.9  # a job's progress 0..0.9 is training, 0.9..1 predicting the project's volumes
JOB_STAGE_LABELS = {**STAGE_LABELS, PREDICTING: "predicting every volume with the new model", DONE: "finished"}

MODEL_CONFIG_SUMMARY = (
    "widths",
    "global_stage",
    "local_stage",
    "finetune_stage",
    "local_mode",
    "num_classes",
    "axis",
    "device",
)


def job_view(job: dict) -> dict:
    """A job as the API shows it."""
    params = JobParams.from_dict(job.get("params"))
    global_stage = params.global_stage or {}
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
        "preset": params.preset,
        "mode": params.shown_mode,
        "mode_requested": params.mode_requested,
        "mode_reason": params.mode_reason,  # why auto or a fallback chose the mode
        "from_model_id": params.from_model_id,
        "global_stage": global_stage.get("use"),  # "trained" | "reused" | "off"
        "global_from_job": global_stage.get("job_id") if global_stage.get("use") == "reused" else None,
        "stages": params.stages,
        "requests": params.requests,
        "resumes": params.resumes,
        "oom_retry": params.oom_retry,
        "model_id": params.model_id,
        "loss": params.loss,
        "runner": params.runner,
        "engine_id": params.engine_id,
        "ddp_workers": params.ddp_workers,
    }


def model_view(model: dict) -> dict:
    """A model version as the API shows it: the config reduced to what a person compares."""
    seen = model.get("annotations_seen") or []
    config = model.get("config") or {}
    return {
        "id": model["id"],
        "project_id": model["project_id"],
        "job_id": model["job_id"],
        "created": model["created"],
        "active": bool(model.get("active")),
        "annotations_seen": seen,
        "annotated_slices": len(seen),
        "annotated_volumes": len({a.get("volume_id") for a in seen}),
        "metrics": model.get("metrics") or {},
        # slices saved after this model was trained, scored against its prediction before any training
        "prequential": model.get("prequential"),
        "config": {k: config[k] for k in MODEL_CONFIG_SUMMARY if k in config},
    }


def pending_columns(pending: dict) -> dict:
    """Progress fields gathered since the last row update -> job row columns."""
    columns = {k: v for k, v in pending.items() if k in ("stage", "epoch", "eta_s", "message")}
    if "progress" in pending:
        columns["progress"] = TRAIN_SHARE * pending["progress"]
    if "message" not in columns and "stage" in pending:
        columns["message"] = f"training: {pending['stage']} stage" + (
            f", epoch {pending['epoch']}" + (f"/{pending['epochs']}" if "epochs" in pending else "")
            if "epoch" in pending
            else ""
        )
    return columns


CLEANUP_STEP_WORDS = {"largest": "largest component", "fill": "holes filled"}


def cleanup_words(report: dict) -> str:
    """One line on a model's "auto" clean-up decision (model/postprocess.py) for the job's message."""
    if not report.get("volumes"):
        return f"masks not cleaned up: {report.get('reason', 'nothing to decide on')}"
    parts = []
    classes = {label: d for label, d in report["classes"].items() if label.isdigit()}
    along = (report["classes"].get("order") or {}).get("axis")
    if along is not None:
        parts.append(f"classes put in order along voxel axis {along}, as the paint shows them")
    for label, decision in sorted(classes.items(), key=lambda item: int(item[0])):
        steps = " + ".join(CLEANUP_STEP_WORDS.get(s, s) for s in decision["steps"]) or "none"
        parts.append(
            f"label {label}: {steps} (painted-voxel Dice {decision['dice_before']} -> {decision['dice_after']})"
        )
    return f"clean-up decided on {report['volumes']} painted volume(s): " + "; ".join(parts)
