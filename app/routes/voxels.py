"""The whole volume in one response (uint16 + scale), for the viewer's in-browser slicing and window/level."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from app.auth import Principal
from app.deps import allow, get_renderer, get_workspace
from app.rendering import SliceRenderer
from app.schemas import ErrorOut
from app.voxel_stream import quantization, uint16_slabs
from data.store import Workspace

router = APIRouter(prefix="/api", tags=["volumes"])


@router.get(
    "/volumes/{volume_id}/voxels",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "Little-endian uint16 q of every voxel in C order of the stored (i, j, k) array; "
            "intensity = X-Intensity-Offset + X-Intensity-Scale * q",
        },
        404: {"model": ErrorOut},
    },
    summary="All voxels of a volume as uint16 with an offset and scale (the viewer's cache)",
)
def get_voxels(
    volume_id: int,
    ws: Workspace = Depends(get_workspace),
    renderer: SliceRenderer = Depends(get_renderer),
    user: Principal = Depends(allow("viewer", "reading a volume")),
) -> StreamingResponse:
    array = ws.volume_array(volume_id)
    q = quantization(array)
    window, level = renderer.defaults(volume_id, array)
    headers = {
        "Content-Length": str(2 * array.size),
        "X-Volume-Shape": ",".join(str(n) for n in array.shape),
        "X-Intensity-Offset": repr(q.offset),
        "X-Intensity-Scale": repr(q.scale),
        "X-Intensity-Exact": "true" if q.exact else "false",
        "X-Window": repr(float(window)),
        "X-Level": repr(float(level)),
        "Cache-Control": "no-cache",
    }
    return StreamingResponse(uint16_slabs(array, q), media_type="application/octet-stream", headers=headers)
