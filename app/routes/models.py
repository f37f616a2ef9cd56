"""Model versions: immutable, one per successful retrain; the active one is a pointer (rollback = move it)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.auth import Principal
from app.deps import allow, get_workspace
from app.schemas import ErrorOut
from app.worker import Worker, get_worker
from data.store import Workspace

router = APIRouter(prefix="/api", tags=["models"])

CONFIG_SUMMARY = ("widths", "global_stage", "local_stage", "finetune_stage", "local_mode", "num_classes", "axis",
                  "device")


def model_view(model: dict) -> dict:
    """A model version as the API shows it: no server paths, the config reduced to what a person compares."""
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
        "config": {k: config[k] for k in CONFIG_SUMMARY if k in config},
    }


@router.get("/projects/{project_id}/models", responses={404: {"model": ErrorOut}},
            summary="Model versions of a project (created, job, annotations seen, validation metrics, active)")
def list_models(project_id: int, ws: Workspace = Depends(get_workspace),
                user: Principal = Depends(allow("viewer", "listing models"))) -> list[dict]:
    return [model_view({**m, "prequential": ws.prequential_summary(m["id"])}) for m in ws.list_models(project_id)]


@router.get("/models/{model_id}", responses={404: {"model": ErrorOut}}, summary="One model version")
def get_model(model_id: int, ws: Workspace = Depends(get_workspace),
              user: Principal = Depends(allow("viewer", "reading a model"))) -> dict:
    model = ws.get_model(model_id)
    return model_view({**model, "prequential": ws.prequential_summary(model["id"])})


@router.post(
    "/projects/{project_id}/models/{model_id}/activate",
    responses={404: {"model": ErrorOut}},
    summary="Make a model version active (also to roll back); its cached masks are served, missing ones computed",
)
def activate_model(project_id: int, model_id: int, ws: Workspace = Depends(get_workspace),
                   worker: Worker = Depends(get_worker),
                   user: Principal = Depends(allow("admin", "activating (rolling back) a model version"))) -> dict:
    model = ws.activate_model(project_id, model_id, who=user.actor())
    worker.request_predictions(model["project_id"])
    return model_view(model)
