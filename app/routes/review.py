"""Review of predicted slices: accept turns the prediction into a (reviewed) annotation, reject is recorded.

A corrected slice is a plain PUT of the annotation. The next retrain uses all annotations.
Also here: which slice to paint next.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Body, Depends, Header, Query
from pydantic import BaseModel, ConfigDict, Field

from app import suggestions as suggestions_of
from app.auth import Principal
from app.deps import allow, get_workspace
from app.routes.annotations import parse_version
from app.schemas import ErrorOut
from app.scores import save_and_score
from app.worker import Worker, get_worker
from data.store import Workspace

router = APIRouter(prefix="/api", tags=["review"])


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"decision": "accept"}]})

    decision: Literal["accept", "reject"] = Field(
        description="accept: the predicted slice becomes an annotation (reviewed); reject: recorded, nothing saved"
    )
    author: str = Field("local", min_length=1, max_length=200)
    comment: str | None = Field(None, max_length=2000)


@router.post(
    "/volumes/{volume_id}/review/{axis}/{index}",
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Accept or reject the predicted mask of one slice",
)
def review_slice(
    volume_id: int,
    axis: int,
    index: int,
    body: ReviewRequest = Body(...),
    if_match: str | None = Header(None, description="For accept: the annotation version it replaces ('0' = none)."),
    ws: Workspace = Depends(get_workspace),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("annotator", "reviewing a prediction")),
) -> dict:
    expected = parse_version(if_match)
    who = user.actor(body.author)
    mask, model = worker.predictions.slice(volume_id, axis, index)
    details = {
        "volume_id": int(volume_id),
        "axis": axis,
        "index": index,
        "model_id": model["id"],
        "decision": body.decision,
        "comment": body.comment,
    }
    annotation = None
    if body.decision == "accept":
        annotation = save_and_score(
            ws,
            worker.predictions,
            volume_id,
            axis,
            index,
            mask,
            author=who,
            expected_version=expected,
            reviewed=True,
            kind="accepted",
        )
    ws.record_audit(who, f"review_{body.decision}", details)
    return {**details, "annotation": annotation}


@router.get(
    "/volumes/{volume_id}/suggestions",
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Slices to paint next, most helpful first (model uncertainty, where the latest retrain changed the "
    "mask, and distance from painted slices; before a model, image content near the painted structure)",
)
def suggestions(
    volume_id: int,
    axis: int | None = Query(
        None, ge=0, le=2, description="Default: the axis already painted on, else the coarsest-spaced axis."
    ),
    limit: int = Query(10, ge=1, le=1000),
    ws: Workspace = Depends(get_workspace),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("viewer", "reading suggestions")),
) -> dict:
    return suggestions_of.for_volume(ws, worker.predictions, volume_id, axis=axis, limit=limit)


@router.get(
    "/projects/{project_id}/suggestions",
    responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Paint these next, across the project's volumes: volumes with the fewest painted slices first",
)
def project_suggestions(
    project_id: int,
    limit: int = Query(10, ge=1, le=1000),
    ws: Workspace = Depends(get_workspace),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("viewer", "reading suggestions")),
) -> dict:
    return suggestions_of.for_project(ws, worker.predictions, project_id, limit=limit)
