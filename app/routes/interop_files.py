"""Files labs exchange: import a mask volume as annotations; export for 3D Slicer, ITK-SNAP and nnU-Net."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from app import interop_files
from app.auth import Principal
from app.deps import allow, get_settings, get_workspace
from app.predictions import safe_name
from app.schemas import ErrorOut
from app.settings import Settings
from app.uploads import received_file, upload_body
from app.worker import Worker, get_worker
from data.slicer_seg import itksnap_label_description
from data.store import Workspace

router = APIRouter(prefix="/api", tags=["exchange"])

MASK_UPLOAD_BODY = upload_body(
    "A mask on the volume's grid: .nii/.nii.gz, .nrrd, .mha, Slicer .seg.nrrd, "
    "or a DICOM-SEG .dcm of this volume's series."
)


@router.post(
    "/volumes/{volume_id}/annotations/import",
    openapi_extra=MASK_UPLOAD_BODY,
    responses={404: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Import a mask volume: each slice along `axis` with a labelled voxel becomes a painted slice",
)
async def import_annotations(
    volume_id: int,
    request: Request,
    axis: int = Query(2, description="The axis whose slices become painted slices (0, 1 or 2)."),
    author: str = Query(
        "local",
        max_length=200,
        description="Recorded with each saved version; with authentication on, always the logged-in user.",
    ),
    ws: Workspace = Depends(get_workspace),
    settings: Settings = Depends(get_settings),
    user: Principal = Depends(allow("annotator", "importing annotations")),
) -> dict:
    await run_in_threadpool(ws.get_volume, volume_id)  # 404 before reading the body
    async with received_file(request, request.app.state.upload_dir, settings.max_upload_bytes) as upload:
        return await run_in_threadpool(
            interop_files.import_annotations,
            ws,
            volume_id,
            upload.path,
            upload.filename,
            axis,
            user.actor(author),
            settings.max_expanded_bytes,
        )


@router.get(
    "/volumes/{volume_id}/prediction.seg.nrrd",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": ErrorOut}},
    summary="The predicted mask as a 3D Slicer segmentation (.seg.nrrd) with the project's names and colours",
)
def prediction_seg_nrrd(
    volume_id: int,
    ws: Workspace = Depends(get_workspace),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("viewer", "downloading predictions")),
) -> FileResponse:
    path = interop_files.prediction_seg_nrrd(ws, worker.predictions, volume_id)
    name = safe_name(ws.get_volume(volume_id)["name"])
    return FileResponse(path, media_type="application/octet-stream", filename=f"{name}_prediction.seg.nrrd")


@router.get(
    "/projects/{project_id}/exports/itksnap_labels.txt",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 404: {"model": ErrorOut}},
    summary="The label map as an ITK-SNAP label description file",
)
def itksnap_labels(
    project_id: int,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "exporting the label map")),
) -> Response:
    project = ws.get_project(project_id)
    return Response(
        itksnap_label_description(project["labels"]),
        media_type="text/plain",
        headers={"Content-Disposition": f'attachment; filename="{safe_name(project["name"])}_labels.txt"'},
    )


@router.get(
    "/projects/{project_id}/exports/nnunet.zip",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}, 404: {"model": ErrorOut}},
    summary="The painted annotations as an nnU-Net v2 raw dataset (dataset.json, imagesTr/, labelsTr/)",
)
def nnunet_zip(
    project_id: int,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "exporting annotations")),
) -> FileResponse:
    path, filename = interop_files.nnunet_zip(ws, project_id)
    return FileResponse(
        path, media_type="application/zip", filename=filename, background=BackgroundTask(path.unlink, missing_ok=True)
    )
