"""The subset of MONAI Label's REST API that its client (and so 3D Slicer's MONAILabel module and OHIF) calls,
one MONAI Label app per project at /monailabel/projects/{project_id}. Thin adapters over what /api does
(app/monailabel.py shapes the answers); same users, tokens and roles as /api.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import parse_qs

import nibabel as nib
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from app import interop_files
from app import monailabel as ml
from app.auth import SESSION_TTL_S, Principal, auth_enabled, authenticate
from app.deps import allow, get_settings, get_workspace
from app.schemas import ErrorOut
from app.settings import Settings
from app.uploads import received_file
from app.worker import Worker, get_worker
from data.errors import InvalidInput, NotFound, TooLarge
from data.io import write_mask
from data.nnunet import image_nifti
from data.store import Workspace
from data.store_files import GZIP_MAGIC

router = APIRouter(
    prefix="/monailabel/projects/{project_id}",
    tags=["MONAI Label"],
    responses={401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 422: {"model": ErrorOut}},
)

PARAMS_LIMIT = 1024 * 1024


async def json_params(request: Request) -> dict:
    """The JSON object a MONAI Label client sends as params (empty body: none), read up to 1 MiB."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > PARAMS_LIMIT:
            raise TooLarge(f"request params are larger than {PARAMS_LIMIT // 1024} KiB")
    if not body.strip():
        return {}
    try:
        params = json.loads(bytes(body))
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("the request body must be a JSON object of params") from None
    if not isinstance(params, dict):
        raise InvalidInput("the request body must be a JSON object of params")
    return params


def _version(request: Request) -> str:
    return request.app.version


# ------------------------------------------------------------------ auth (MONAI Label's /auth flow)


@router.get("/auth/", summary="Whether this server needs a token (MONAI Label auth discovery)")
def auth_info(project_id: int, ws: Workspace = Depends(get_workspace)) -> dict:
    return {"enabled": auth_enabled(ws), "client_id": "slicewise", "realm_uri": ""}


@router.post("/auth/token", summary="OAuth2 password grant: a slicewise API token for a user name and password")
async def auth_token(project_id: int, request: Request, ws: Workspace = Depends(get_workspace)) -> dict:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > PARAMS_LIMIT:
            raise TooLarge("the token request is too large")
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    if not auth_enabled(ws):
        raise InvalidInput("authentication is off on this server (no users are configured): no token is needed")
    if form.get("grant_type", "password") != "password" or not form.get("username"):
        raise InvalidInput("send grant_type=password, username and password as a form")
    user = await run_in_threadpool(ws.verify_password, form["username"][:200], form.get("password", ""))
    client = request.client.host if request.client else None
    if user is None:
        ws.record_audit(form["username"][:200], "login_failed", {"client": client, "via": "monailabel"})
        raise HTTPException(401, "wrong user name or password")
    secret, row = ws.create_token(user["name"], label="monailabel", kind="api", ttl_s=SESSION_TTL_S, who=user["name"])
    return {"access_token": secret, "token_type": "Bearer", "expires": row["expires"]}


@router.get("/auth/token/valid", summary="200 when the Authorization token is valid, else 401")
def auth_token_valid(project_id: int, request: Request, ws: Workspace = Depends(get_workspace)) -> dict:
    user = authenticate(request, ws)
    return {"valid": True, "name": user.name, "role": user.role}


# ------------------------------------------------------------------ info and datastore


@router.get("/info/", summary="The app: labels, the one model and trainer, strategies, datastore counts")
def info(
    project_id: int,
    request: Request,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "reading the project")),
) -> dict:
    return ml.info(ws, project_id, _version(request))


@router.get("/datastore/", summary="Datastore stats (output=stats, default) or every image and label (output=all)")
def datastore(
    project_id: int,
    output: str = Query("stats", pattern="^(stats|all|train)$"),
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "reading the datastore")),
) -> dict:
    if output == "all":
        return ml.datastore_all(ws, project_id)
    return ml.datastore_stats(ws, project_id)


@router.put("/datastore/", summary="Upload an image (multipart field 'file'); the image id is the new volume id")
async def add_image(
    project_id: int,
    request: Request,
    image: str | None = Query(None, max_length=200),
    ws: Workspace = Depends(get_workspace),
    settings: Settings = Depends(get_settings),
    user: Principal = Depends(allow("annotator", "uploading a volume")),
) -> dict:
    await run_in_threadpool(ws.get_project, project_id)
    async with received_file(request, request.app.state.upload_dir, settings.max_upload_bytes) as upload:
        volume = await run_in_threadpool(
            ws.import_volume,
            project_id,
            upload.path,
            ml.filename_for(image, upload.filename),
            settings.max_expanded_bytes,
            user.actor(),
        )
    return {"image": str(volume["id"])}


@router.get("/datastore/image", response_class=FileResponse, summary="Download an image as NIfTI")
def download_image(
    project_id: int,
    image: str = Query(..., max_length=200),
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "reading a volume")),
) -> FileResponse:
    volume = ml.volume_of(ws, project_id, image)
    source = ws.volume_source_path(volume["id"])
    if volume["source"] == "nifti":
        with open(source, "rb") as f:
            suffix = ".nii.gz" if f.read(2) == GZIP_MAGIC else ".nii"
        return FileResponse(source, media_type="application/octet-stream", filename=f"{volume['id']}{suffix}")
    path = _temp_path(ws, ".nii.gz")
    nib.save(image_nifti(ws.load_volume(volume["id"])), path)
    return FileResponse(
        path,
        media_type="application/gzip",
        filename=f"{volume['id']}.nii.gz",
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


@router.put(
    "/datastore/label",
    summary="Save a label volume (multipart field 'label'): each slice along axis 2 "
    "with a labelled voxel becomes a painted slice",
)
async def save_label(
    project_id: int,
    request: Request,
    image: str = Query(..., max_length=200),
    tag: str | None = Query(None, max_length=100),
    ws: Workspace = Depends(get_workspace),
    settings: Settings = Depends(get_settings),
    user: Principal = Depends(allow("annotator", "saving an annotation")),
) -> dict:
    volume = await run_in_threadpool(ml.volume_of, ws, project_id, image)
    ml.check_tag(tag)
    async with received_file(request, request.app.state.upload_dir, settings.max_upload_bytes, field="label") as upload:
        saved = await run_in_threadpool(
            interop_files.import_annotations,
            ws,
            volume["id"],
            upload.path,
            ml.base_name(upload.filename),
            2,
            user.actor(),
            settings.max_expanded_bytes,
        )
    return {"image": str(volume["id"]), "label": str(volume["id"]), "tag": ml.FINAL_TAG, **saved}


@router.get(
    "/datastore/label",
    response_class=FileResponse,
    summary="Download an image's painted slices as a NIfTI label volume (never painted = 0)",
)
def download_label(
    project_id: int,
    label: str = Query(..., max_length=200),
    tag: str | None = Query(None, max_length=100),
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "reading annotations")),
) -> FileResponse:
    volume = ml.volume_of(ws, project_id, label)
    ml.check_tag(tag)
    labels = ml.painted_label_volume(ws, volume["id"])
    path = _temp_path(ws, ".nii.gz")
    write_mask(labels, ws.load_volume(volume["id"]), path)
    return FileResponse(
        path,
        media_type="application/gzip",
        filename=f"{volume['id']}_label.nii.gz",
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


def _temp_path(ws: Workspace, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=".monailabel-", suffix=suffix, dir=ws.root / "tmp")
    os.close(fd)
    return Path(name)


# ------------------------------------------------------------------ inference, active learning, training


@router.post(
    "/infer/{model}",
    response_class=Response,
    responses={
        200: {
            "content": {"multipart/form-data": {}},
            "description": "params (JSON) and file (the mask as NIfTI in the image's geometry)",
        }
    },
    summary="The active model's prediction of an image (cached; computed now if it is not ready)",
)
async def infer(
    project_id: int,
    model: str,
    image: str = Query(..., max_length=200),
    ws: Workspace = Depends(get_workspace),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("viewer", "reading predictions")),
) -> Response:
    ml.check_model(model)
    volume = await run_in_threadpool(ml.volume_of, ws, project_id, image)
    active = ws.active_model(project_id)
    if active is None:
        raise NotFound("no model yet: paint a few slices and train first")
    if not worker.predictions.is_ready(volume["id"], active["id"]):
        await run_in_threadpool(worker.predictions.predict_volume, volume["id"], active)
    path = await run_in_threadpool(worker.predictions.nifti_path, volume["id"])
    params = {
        "model": ml.MODEL,
        "model_id": active["id"],
        "image": str(volume["id"]),
        "label_names": ml.label_map(ws, project_id),
    }
    boundary = secrets.token_hex(16)
    body = b"".join(
        [
            f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n'
            f"Content-Type: application/json\r\n\r\n".encode(),
            json.dumps(params).encode(),
            b"\r\n",
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{volume["id"]}_prediction.nii.gz"\r\n'
            f"Content-Type: application/gzip\r\n\r\n".encode(),
            path.read_bytes(),
            b"\r\n",
            f"--{boundary}--\r\n".encode(),
        ]
    )
    return Response(body, media_type=f"multipart/form-data; boundary={boundary}")


@router.post("/activelearning/{strategy}", summary="The next image to annotate: slicewise (default), random, first")
async def next_sample(
    project_id: int,
    strategy: str,
    request: Request,
    ws: Workspace = Depends(get_workspace),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("viewer", "reading suggestions")),
) -> dict:
    await json_params(request)
    return await run_in_threadpool(ml.next_sample, ws, worker.predictions, project_id, strategy)


@router.post("/train/{model}", summary="Retrain (joins one already queued); params may hold preset and mode")
async def train(
    project_id: int,
    model: str,
    request: Request,
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("annotator", "retraining")),
) -> dict:
    ml.check_model(model)
    preset, mode = ml.train_params(await json_params(request))
    job, coalesced = await run_in_threadpool(worker.submit, project_id, preset, None, user.actor(), mode)
    return {**ml.task_view(job), "coalesced": coalesced}


@router.post("/train/", summary='Retrain every trainer (there is one, slicewise) -> {"slicewise": task}')
async def train_all(
    project_id: int,
    request: Request,
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("annotator", "retraining")),
) -> dict:
    preset, mode = ml.train_params(await json_params(request))
    job, coalesced = await run_in_threadpool(worker.submit, project_id, preset, None, user.actor(), mode)
    return {ml.MODEL: {**ml.task_view(job), "coalesced": coalesced}}


@router.get(
    "/train/", summary="The latest training task (all=true: every one); check_if_running: 200 only while one runs"
)
def train_status(
    project_id: int,
    all: bool = False,
    check_if_running: bool = False,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "reading a job")),
) -> dict | list:
    jobs = ml.train_jobs(ws, project_id)
    if check_if_running:
        jobs = [job for job in jobs if job["state"] in ("queued", "running")]
    if not jobs:
        raise NotFound("no training task is running" if check_if_running else "no training task yet")
    return [ml.task_view(job) for job in jobs] if all else ml.task_view(jobs[-1])


@router.delete("/train/", summary="Stop the project's queued and running training tasks")
def train_stop(
    project_id: int,
    ws: Workspace = Depends(get_workspace),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("annotator", "cancelling a job")),
) -> dict:
    stopped = {}
    for job in ml.train_jobs(ws, project_id):
        if job["state"] in ("queued", "running"):
            stopped = ml.task_view(worker.cancel(job["id"], who=user.actor()))
    return stopped
