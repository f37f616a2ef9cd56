"""What `model.retrain.plan_retrain` decides from, read from the workspace and the job folder, and its
decision put in place there (`plan_job`).

The planning itself is pure; this module is the part that looks at the store and the file system.
"""

from __future__ import annotations

from pathlib import Path

from app.job_params import JobParams
from app.speed import speed_cache
from data import io as volume_io
from data.atomic import link_or_copy
from data.errors import NotFound
from data.store import FINISHED_STATES, Workspace
from model.retrain import (
    ActiveModel,
    EarlierGlobalStage,
    ProjectSnapshot,
    RetrainRequest,
    VolumeInput,
    plan_retrain,
)


def plan_job(
    ws: Workspace, job: dict, job_dir: Path, model_dir: Path, device: str, default_preset: str
) -> tuple[dict, list]:
    """Plan the job's retrain, export the sparse label volumes it reads and record the decision in the job's
    params -> (the config for model.train, the painted slices it sees)."""
    asked = JobParams.from_dict(job["params"])
    request = RetrainRequest(asked.preset or default_preset, asked.stages, asked.mode_requested or "auto")
    snapshot = project_snapshot(ws, job, job_dir, model_dir, device)
    plan = plan_retrain(request, snapshot, global_history(ws, job))
    seen = export_labels(ws, snapshot)
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
    ws.update_job(job["id"], params=decided.to_dict())
    return plan.config.to_dict(), seen


def project_snapshot(ws: Workspace, job: dict, job_dir: Path, model_dir: Path, device: str) -> ProjectSnapshot:
    """The project as this job sees it; painted volumes get a label path inside the job folder."""
    project = ws.get_project(job["project_id"])
    volumes = ws.list_volumes(project["id"])
    painted = {volume["id"]: ws.list_annotations(volume["id"]) for volume in volumes}
    return ProjectSnapshot(
        job_id=job["id"],
        model_dir=str(model_dir),
        label_values=[int(lab["value"]) for lab in project["labels"]],
        volumes=[
            VolumeInput(
                v["id"],
                str(ws.volume_source_path(v["id"])),
                str(job_dir / "labels" / f"{v['id']}.nii.gz") if painted[v["id"]] else None,
            )
            for v in volumes
        ],
        annotations=[a for v in volumes for a in painted[v["id"]]],
        active=active_model(ws, project["id"]),
        device=device,
        speed_cache=str(speed_cache(ws.root)),
    )


def export_labels(ws: Workspace, snapshot: ProjectSnapshot) -> list[dict]:
    """Write the sparse label volume of every painted volume -> the painted slices they hold."""
    seen = []
    for volume in snapshot.volumes:
        if volume.label_path is None:
            continue
        Path(volume.label_path).parent.mkdir(parents=True, exist_ok=True)
        volume_io.write_mask(ws.label_volume(volume.id), like=ws.load_volume(volume.id), path=volume.label_path)
        seen += [
            {
                "volume_id": a["volume_id"],
                "axis": a["axis"],
                "index": a["index"],
                "version": a["version"],
                "reviewed": a["reviewed"],
            }
            for a in snapshot.annotations
            if a["volume_id"] == volume.id
        ]
    return seen


def active_model(ws: Workspace, project_id: int) -> ActiveModel | None:
    active = ws.active_model(project_id)
    if active is None:
        return None
    trained_by = job_params(ws, active.get("job_id"))
    base = active
    refresh = trained_by.mode == "refresh"
    if refresh and trained_by.base_model_id:
        try:
            base = ws.get_model(trained_by.base_model_id)
        except NotFound:
            pass
    refreshed_from = trained_by.from_model_id if refresh else None
    return ActiveModel(
        id=active["id"],
        path=active["path"],
        has_weights=(Path(active["path"]) / "model.pt").is_file(),
        config=active.get("config") or {},
        preset=trained_by.preset,
        label_map=trained_by.label_map,
        base_id=base["id"],
        base_annotations_seen=base.get("annotations_seen") or [],
        refreshed_from=refreshed_from,
        prequential=ws.prequential_summary(active["id"]) if refreshed_from else None,
        previous_prequential=ws.prequential_summary(refreshed_from) if refreshed_from else None,
    )


def job_params(ws: Workspace, job_id) -> JobParams:
    if job_id is None:
        return JobParams()
    try:
        return JobParams.from_dict(ws.get_job(job_id)["params"])
    except NotFound:
        return JobParams()


def global_history(ws: Workspace, job: dict) -> list[EarlierGlobalStage]:
    """The global stages of the project's other finished jobs, newest first."""
    history = []
    for earlier in reversed(ws.list_jobs(state=list(FINISHED_STATES), project_id=job["project_id"])):
        record = JobParams.from_dict(earlier["params"]).global_stage or {}
        if earlier["id"] != job["id"] and record:
            history.append(EarlierGlobalStage(record, Path(record.get("path") or "").is_file()))
    return history
