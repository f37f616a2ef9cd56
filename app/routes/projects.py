"""Projects: a name and a label map (value, name, colour) shared by all of the project's volumes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.deps import get_workspace
from app.schemas import ErrorOut, ProjectCreate, ProjectOut
from data.store import Workspace

router = APIRouter(prefix="/api", tags=["projects"])


@router.post(
    "/projects",
    status_code=201,
    response_model=ProjectOut,
    responses={409: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Create a project with its label map",
)
def create_project(body: ProjectCreate, response: Response, ws: Workspace = Depends(get_workspace)) -> dict:
    project = ws.create_project(body.name, [label.model_dump() for label in body.labels])
    response.headers["Location"] = f"/api/projects/{project['id']}"
    return project


@router.get("/projects", response_model=list[ProjectOut], summary="List projects")
def list_projects(ws: Workspace = Depends(get_workspace)) -> list[dict]:
    return ws.list_projects()


@router.get(
    "/projects/{project_id}",
    response_model=ProjectOut,
    responses={404: {"model": ErrorOut}},
    summary="One project",
)
def get_project(project_id: int, ws: Workspace = Depends(get_workspace)) -> dict:
    return ws.get_project(project_id)
