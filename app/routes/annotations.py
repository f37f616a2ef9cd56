"""Annotations: one painted slice at a time, versioned; `If-Match` makes a save based on a stale version fail.

The mask of slice (axis, index) has the shape of `np.take(volume, index, axis)` (the slice PNG's shape);
its pixel values are label values of the project's map, 0 = background, 255 = not annotated.
"""

from __future__ import annotations

import re

import numpy as np
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.auth import Principal
from app.deps import allow, get_workspace
from app.schemas import ErrorOut
from app.scores import save_and_score
from app.worker import Worker, get_worker
from data.annotations import check_slice, mask_from_png, mask_to_png
from data.errors import InvalidInput, TooLarge
from data.store import Workspace

router = APIRouter(prefix="/api", tags=["annotations"])

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_MASK_BYTES = 64 * 1024 * 1024
RAW_TYPES = ("application/octet-stream",)

MASK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {
                "schema": {"type": "string", "format": "binary"},
                "description": "8-bit PNG (mode L or P) whose pixel values are label values.",
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Raw uint8 bytes of the slice, row-major (C order).",
            },
        },
    }
}


def parse_version(header: str | None, name: str = "If-Match") -> int | None:
    """`If-Match: "3"` (also 3, W/"3"); `*` and absent mean no check."""
    if header is None or header.strip() in ("", "*"):
        return None
    match = re.fullmatch(r'\s*(?:W/)?"?(\d+)"?\s*', header)
    if not match:
        raise InvalidInput(f'{name} must be an annotation version such as "3", got {header!r}')
    return int(match.group(1))


def decode_mask(body: bytes, content_type: str, shape: tuple[int, int]) -> np.ndarray:
    if len(body) > MAX_MASK_BYTES:
        raise TooLarge(f"a mask of one slice cannot be over {MAX_MASK_BYTES // (1024 * 1024)} MB")
    if not body:
        raise InvalidInput("the request body is empty: send the mask as a PNG or as raw uint8 bytes")
    content_type = content_type.split(";")[0].strip().lower()
    if content_type in RAW_TYPES and not body.startswith(PNG_MAGIC):
        expected = shape[0] * shape[1]
        if len(body) != expected:
            raise InvalidInput(
                f"raw mask has {len(body)} bytes but the slice is {shape[0]} x {shape[1]} = {expected} "
                "pixels (one uint8 byte per pixel)"
            )
        return np.frombuffer(body, dtype=np.uint8).reshape(shape)
    return mask_from_png(body, shape)


def annotation_headers(row: dict) -> dict:
    return {
        "ETag": f'"{row["version"]}"',
        "X-Annotation-Version": str(row["version"]),
        "X-Annotation-Author": str(row["author"]),
        "X-Annotation-Reviewed": "true" if row.get("reviewed") else "false",
    }


@router.put(
    "/volumes/{volume_id}/annotations/{axis}/{index}",
    openapi_extra=MASK_BODY,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Save the painted mask of one slice (PNG or raw uint8); If-Match: the version it is based on",
)
async def put_annotation(
    volume_id: int,
    axis: int,
    index: int,
    request: Request,
    if_match: str | None = Header(
        None, description='Version the edit is based on, e.g. "3"; "0" = none yet. A different current version -> 409.'
    ),
    author: str = Query(
        "local",
        max_length=200,
        description="Who painted it (recorded with the version); with authentication on, always the logged-in user.",
    ),
    ws: Workspace = Depends(get_workspace),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("annotator", "saving an annotation")),
) -> JSONResponse:
    volume = await run_in_threadpool(ws.get_volume, volume_id)  # 404 before reading the body
    _, _, shape = check_slice(volume["shape"], axis, index)
    expected = parse_version(if_match)
    body = await request.body()
    mask = decode_mask(body, request.headers.get("content-type", ""), shape)
    saved = await run_in_threadpool(
        save_and_score,
        ws,
        worker.predictions,
        volume["id"],
        axis,
        index,
        mask,
        author=user.actor(author),
        expected_version=expected,
    )
    return JSONResponse(saved, headers=annotation_headers(saved))


@router.get(
    "/volumes/{volume_id}/annotations/{axis}/{index}",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}, "application/octet-stream": {}},
            "description": "The mask (PNG mode L, or raw uint8 with ?format=raw); version in ETag",
        },
        404: {"model": ErrorOut},
        422: {"model": ErrorOut},
    },
    summary="The current mask of one painted slice",
)
def get_annotation(
    volume_id: int,
    axis: int,
    index: int,
    format: str = Query("png", pattern="^(png|raw)$"),
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "reading an annotation")),
) -> Response:
    mask, row = ws.get_annotation(volume_id, axis, index)
    headers = {**annotation_headers(row), "X-Slice-Shape": f"{mask.shape[0]},{mask.shape[1]}"}
    if format == "raw":
        return Response(
            np.ascontiguousarray(mask, dtype=np.uint8).tobytes(), media_type="application/octet-stream", headers=headers
        )
    return Response(mask_to_png(mask), media_type="image/png", headers=headers)


@router.delete(
    "/volumes/{volume_id}/annotations/{axis}/{index}",
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Remove the annotation of one slice (If-Match: the version you saw)",
)
def delete_annotation(
    volume_id: int,
    axis: int,
    index: int,
    if_match: str | None = Header(None),
    author: str = Query("local", max_length=200),
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("annotator", "deleting an annotation")),
) -> dict:
    removed = ws.delete_annotation(
        volume_id, axis, index, expected_version=parse_version(if_match), author=user.actor(author)
    )
    return {"deleted": True, **removed}


@router.get(
    "/volumes/{volume_id}/annotations",
    responses={404: {"model": ErrorOut}},
    summary="Painted slices of a volume with their versions, authors and review flags",
)
def list_annotations(
    volume_id: int,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "listing annotations")),
) -> list[dict]:
    return ws.list_annotations(volume_id)
