"""Model versions: immutable, one per successful retrain; the active one is a pointer (rollback = move it)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.auth import Principal
from app.deps import allow, get_workspace
from app.schemas import ErrorOut
from app.views import model_view
from app.worker import Worker, get_worker
from data.store import Workspace

router = APIRouter(prefix="/api", tags=["models"])


@router.get(
    "/projects/{project_id}/models",
    responses={404: {"model": ErrorOut}},
    summary="Model versions of a project (created, job, annotations seen, validation metrics, active)",
)
def list_models(
    project_id: int,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "listing models")),
) -> list[dict]:
    return [model_view({**m, "prequential": ws.prequential_summary(m["id"])}) for m in ws.list_models(project_id)]


@router.get("/models/{model_id}", responses={404: {"model": ErrorOut}}, summary="One model version")
def get_model(
    model_id: int, ws: Workspace = Depends(get_workspace), user: Principal = Depends(allow("viewer", "reading a model"))
) -> dict:
    model = ws.get_model(model_id)
    return model_view({**model, "prequential": ws.prequential_summary(model["id"])})


@router.post(
    "/projects/{project_id}/models/{model_id}/activate",
    responses={404: {"model": ErrorOut}},
    summary="Make a model version active (also to roll back); its cached masks are served, missing ones computed",
)
def activate_model(
    project_id: int,
    model_id: int,
    ws: Workspace = Depends(get_workspace),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("admin", "activating (rolling back) a model version")),
) -> dict:
    model = ws.activate_model(project_id, model_id, who=user.actor())
    worker.request_predictions(model["project_id"])
    return model_view({**model, "prequential": ws.prequential_summary(model["id"])})
