"""Changing a project after it exists: edit its labels, delete a volume or the whole project (admin only).

A delete names what it deletes (`confirm` = the exact name), is refused while a retrain of the project is
queued or running, is recorded in the audit log, and removes rows and files together (data.store_project_admin).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from app.auth import Principal
from app.deps import allow, get_renderer, get_workspace
from app.rendering import SliceRenderer
from app.schemas import ErrorOut, Label, ProjectOut
from data.store import Workspace

router = APIRouter(prefix="/api", tags=["projects"])
CONFIRM = Query(None, description="The exact name of what is deleted: a delete cannot be undone.")


class LabelsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: list[Label] = Field(
        min_length=1,
        description="The whole new label map; existing values keep their "
        "voxels (rename / recolour), new values are added.",
    )


@router.put(
    "/projects/{project_id}/labels",
    response_model=ProjectOut,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Replace the label map: rename, recolour or add labels; remove only labels nobody painted",
)
def update_labels(
    project_id: int,
    body: LabelsIn,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("admin", "editing labels")),
) -> dict:
    return ws.update_labels(project_id, [label.model_dump() for label in body.labels], who=user.actor())


@router.delete(
    "/volumes/{volume_id}",
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Delete a volume with its annotations and predictions (confirm = its name)",
)
def delete_volume(
    volume_id: int,
    confirm: str | None = CONFIRM,
    ws: Workspace = Depends(get_workspace),
    renderer: SliceRenderer = Depends(get_renderer),
    user: Principal = Depends(allow("admin", "deleting a volume")),
) -> dict:
    removed = ws.delete_volume(volume_id, confirm, who=user.actor())
    renderer.forget(removed["volume_id"])
    return {"deleted": "volume", **removed}


@router.delete(
    "/projects/{project_id}",
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Delete a project with all its volumes, annotations, models and jobs (confirm = its name)",
)
def delete_project(
    project_id: int,
    confirm: str | None = CONFIRM,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("admin", "deleting a project")),
) -> dict:
    return {"deleted": "project", **ws.delete_project(project_id, confirm, who=user.actor())}
