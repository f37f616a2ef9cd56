"""Projects: a name and a label map (value, name, colour) shared by all of the project's volumes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response

from app.auth import Principal
from app.deps import allow, get_workspace
from app.schemas import ErrorOut, LabelOut, ProjectCreate, ProjectOut
from data.label_text import parse_label_text
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


@router.get(
    "/labels/parse",
    response_model=list[LabelOut],
    responses={422: {"model": ErrorOut}},
    summary="Read a label map typed as text",
    description="One label per line or comma-separated: `name`, `name #rrggbb`, `value name`, "
    "`value name #rrggbb` or `value:name:#rrggbb`. Values default to the lowest free one, colours to a palette. "
    "Changes nothing; the result is what `POST /api/projects` and `PUT /api/projects/{id}/labels` take.",
)
def parse_labels(
    text: str = Query(max_length=20_000, description="the label map as text"),
    user: Principal = Depends(allow("viewer", "reading a label map")),
) -> list[dict]:
    return parse_label_text(text)
