"""Volumes: upload (NIfTI or a zip of one DICOM series), list, metadata, and slices as PNG."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.auth import Principal
from app.deps import allow, get_renderer, get_settings, get_workspace
from app.rendering import SliceRenderer
from app.schemas import ErrorOut, VolumeDetailOut, VolumeOut
from app.settings import Settings
from app.uploads import received_file, upload_body
from data.annotations import take_slice
from data.store import Workspace

router = APIRouter(prefix="/api", tags=["volumes"])

UPLOAD_BODY = upload_body("A .nii / .nii.gz file, or a .zip holding one DICOM series.")


@router.post(
    "/projects/{project_id}/volumes",
    status_code=201,
    response_model=VolumeOut,
    openapi_extra=UPLOAD_BODY,
    responses={404: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Upload a volume into a project (multipart field 'file')",
)
async def upload_volume(
    project_id: int,
    request: Request,
    response: Response,
    ws: Workspace = Depends(get_workspace),
    settings: Settings = Depends(get_settings),
    user: Principal = Depends(allow("annotator", "uploading a volume")),
) -> dict:
    await run_in_threadpool(ws.get_project, project_id)  # 404 before reading a byte of the body
    async with received_file(request, request.app.state.upload_dir, settings.max_upload_bytes) as upload:
        volume = await run_in_threadpool(
            ws.import_volume, project_id, upload.path, upload.filename, settings.max_expanded_bytes, user.actor()
        )
    response.headers["Location"] = f"/api/volumes/{volume['id']}"
    return volume


@router.get(
    "/projects/{project_id}/volumes",
    response_model=list[VolumeOut],
    responses={404: {"model": ErrorOut}},
    summary="List a project's volumes with shape, spacing and orientation",
)
def list_volumes(
    project_id: int,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "listing volumes")),
) -> list[dict]:
    return ws.list_volumes(project_id)


@router.get(
    "/volumes/{volume_id}",
    response_model=VolumeDetailOut,
    responses={404: {"model": ErrorOut}},
    summary="A volume's metadata: geometry (affine), source, DICOM UIDs",
)
def get_volume(
    volume_id: int,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "reading a volume")),
) -> dict:
    volume = dict(ws.get_volume(volume_id))
    if "affine" not in volume or "meta" not in volume:
        summary = ws.load_volume(volume_id).summary()
        volume = {**summary, **volume, "meta": volume.get("meta", summary["meta"])}
    volume.setdefault("dtype", str(ws.volume_array(volume_id).dtype))
    return volume


@router.get(
    "/volumes/{volume_id}/slices/{axis}/{index}.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "8-bit grey PNG of np.take(volume, index, axis)"},
        404: {"model": ErrorOut},
        422: {"model": ErrorOut},
    },
    summary="One slice as an 8-bit grey PNG with a window/level",
)
def get_slice(
    volume_id: int,
    axis: int,
    index: int,
    window: float | None = Query(
        None, description="Width of the intensity window (> 0). Default: 99th - 1st percentile."
    ),
    level: float | None = Query(
        None, description="Centre of the intensity window. Default: mid-point of the 1st and 99th percentiles."
    ),
    ws: Workspace = Depends(get_workspace),
    renderer: SliceRenderer = Depends(get_renderer),
    user: Principal = Depends(allow("viewer", "reading a slice")),
) -> Response:
    array = ws.volume_array(volume_id)
    slice_2d = take_slice(array, axis, index)
    png, window, level = renderer.render(volume_id, slice_2d, array, window, level)
    headers = {
        "X-Volume-Shape": ",".join(str(n) for n in array.shape),
        "X-Slice-Axis": str(axis),
        "X-Slice-Index": str(index),
        "X-Slice-Shape": ",".join(str(n) for n in slice_2d.shape),
        "X-Window": repr(float(window)),
        "X-Level": repr(float(level)),
    }
    return Response(png, media_type="image/png", headers=headers)
