"""Predicted masks of the project's active model: status, slices, NIfTI / DICOM-SEG downloads, a project zip."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import FileResponse

from app.auth import Principal
from app.deps import allow, get_workspace
from app.predictions import safe_name
from app.schemas import ErrorOut
from app.worker import Worker, get_worker
from data.annotations import mask_to_png
from data.store import Workspace

router = APIRouter(prefix="/api", tags=["predictions"])


@router.get(
    "/volumes/{volume_id}/prediction",
    responses={404: {"model": ErrorOut}},
    summary="Prediction status of a volume (none | pending | ready | failed: ...) and its model version",
)
def prediction_status(
    volume_id: int,
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("viewer", "reading predictions")),
) -> dict:
    status = worker.predictions.status(volume_id)
    if status["status"] == "pending":  # e.g. a volume uploaded after the last retrain
        worker.request_predictions(worker.workspace.get_volume(volume_id)["project_id"])
    return status


@router.get(
    "/volumes/{volume_id}/prediction/slices/{axis}/{index}.png",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}, "application/octet-stream": {}},
            "description": "Label values of np.take(mask, index, axis) as an 8-bit PNG (or raw uint8)",
        },
        404: {"model": ErrorOut},
        422: {"model": ErrorOut},
    },
    summary="One slice of the predicted mask",
)
def prediction_slice(
    volume_id: int,
    axis: int,
    index: int,
    format: str = Query("png", pattern="^(png|raw)$"),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("viewer", "reading predictions")),
) -> Response:
    mask, model = worker.predictions.slice(volume_id, axis, index)
    headers = {"X-Model-Id": str(model["id"]), "X-Slice-Shape": f"{mask.shape[0]},{mask.shape[1]}"}
    if format == "raw":
        return Response(mask.tobytes(), media_type="application/octet-stream", headers=headers)
    return Response(mask_to_png(mask), media_type="image/png", headers=headers)


@router.get(
    "/volumes/{volume_id}/prediction.nii.gz",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}}, 404: {"model": ErrorOut}},
    summary="The predicted mask as NIfTI in the exact geometry of the uploaded volume",
)
def prediction_nifti(
    volume_id: int,
    ws: Workspace = Depends(get_workspace),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("viewer", "downloading predictions")),
) -> FileResponse:
    path = worker.predictions.nifti_path(volume_id)
    name = safe_name(ws.get_volume(volume_id)["name"])
    return FileResponse(path, media_type="application/gzip", filename=f"{name}_prediction.nii.gz")


@router.get(
    "/volumes/{volume_id}/prediction.dcm",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/dicom": {}}},
        404: {"model": ErrorOut},
        409: {"model": ErrorOut, "description": "the volume was not uploaded as DICOM"},
    },
    summary="The predicted mask as DICOM-SEG referencing the uploaded series (DICOM sources only)",
)
def prediction_dicom_seg(
    volume_id: int,
    ws: Workspace = Depends(get_workspace),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("viewer", "downloading predictions")),
) -> FileResponse:
    path = worker.predictions.dicom_seg_path(volume_id)
    name = safe_name(ws.get_volume(volume_id)["name"])
    return FileResponse(path, media_type="application/dicom", filename=f"{name}_prediction_seg.dcm")


@router.get(
    "/projects/{project_id}/predictions.zip",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}, 404: {"model": ErrorOut}},
    summary="All ready masks of the project's active model, one NIfTI per volume",
)
def project_predictions_zip(
    project_id: int,
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("viewer", "downloading predictions")),
) -> Response:
    data, filename = worker.predictions.project_zip(project_id)
    return Response(
        data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
