"""Projects: a name and a label map (value, name, colour) shared by all of the project's volumes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.auth import Principal
from app.deps import allow, get_workspace
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
def create_project(
    body: ProjectCreate,
    response: Response,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("admin", "creating a project")),
) -> dict:
    project = ws.create_project(body.name, [label.model_dump() for label in body.labels], who=user.actor())
    response.headers["Location"] = f"/api/projects/{project['id']}"
    return project


@router.get("/projects", response_model=list[ProjectOut], summary="List projects (those you are a member of)")
def list_projects(
    ws: Workspace = Depends(get_workspace), user: Principal = Depends(allow("viewer", "listing projects"))
) -> list[dict]:
    projects = ws.list_projects()
    if user.is_admin:
        return projects
    mine = ws.member_project_ids(user.name)
    return [p for p in projects if p["id"] in mine]


@router.get(
    "/projects/{project_id}",
    response_model=ProjectOut,
    responses={404: {"model": ErrorOut}},
    summary="One project",
)
def get_project(
    project_id: int,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "reading a project")),
) -> dict:
    return ws.get_project(project_id)
