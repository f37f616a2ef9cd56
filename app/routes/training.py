"""Training jobs: Retrain, job status, a Server-Sent-Event stream of progress, cancel."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from typing import Any

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.auth import Principal
from app.deps import allow, get_workspace
from app.schemas import ErrorOut
from app.views import JOB_STAGE_LABELS, job_view
from app.worker import Worker, get_worker
from data.store import FINISHED_STATES, JOB_STATES, Workspace
from model.config import PRESETS, STAGES
from model.retrain import MODES

router = APIRouter(prefix="/api", tags=["training"])

KEEPALIVE_S = 15.0
RECHECK_S = 2.0


class TrainRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"preset": "cpu"}, {"mode": "refresh"}, {"preset": "quick", "stages": {"global": False}}]
        },
    )

    mode: str | None = Field(
        None,
        description=f"{' | '.join(MODES)} (auto is the default). refresh: fine-tune the active model on the current "
        "paint (fine-tune stage only, half the epochs); full: the whole pipeline, reusing the "
        "label-free global stage when the project's volumes have not changed since it ran; "
        "auto: refresh when at most max(5, half the slices the last full retrain saw) painted "
        "slices changed since it, else full. The chosen mode and why are in the job's mode, "
        "mode_reason.",
    )

    preset: str | None = Field(None, description=f"{' | '.join(PRESETS)}; default: the server's (cpu).")
    stages: dict[str, bool | dict[str, Any]] | None = Field(
        None,
        description=f"Per stage ({', '.join(STAGES)}): false to skip it, true to run it, or "
        '{"enabled": true, "epochs": n, "steps": n} to change its schedule, e.g. '
        '{"global": false, "finetune": {"epochs": 4}, "pseudo": false}. The fine-tune stage '
        "cannot be switched off.",
    )


class JobOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    project_id: int
    kind: str
    state: str = Field(description=" | ".join(JOB_STATES))
    stage: str | None = Field(None, description=" | ".join(JOB_STAGE_LABELS) + " (GET /api/info names them)")
    epoch: int | None = None
    progress: float = Field(description="0..1 over training and predicting")
    eta_s: float | None = Field(None, description="seconds left, as estimated by the trainer")
    message: str | None = None
    error: str | None = Field(None, description="why the job failed")
    mode: str | None = Field(
        None, description="refresh | full once the job started; until then the request (auto | refresh | full)"
    )
    mode_reason: str | None = Field(
        None, description="why this mode (auto's rule, or a refresh that fell back to full)"
    )
    runner: str | None = Field(None, description="where the training ran: local | ray (once it started)")
    engine_id: str | None = Field(None, description="the engine's id of the run: the Ray actor id (null locally)")
    ddp_workers: int | None = Field(
        None,
        description="the Ray Train workers (DDP ranks, a GPU each) the run trains as, when more than one "
        "(SLICEWISE_RAY_GPUS_PER_JOB > 1 on CUDA); null for a run in one process",
    )


@router.post(
    "/projects/{project_id}/train",
    status_code=202,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "joined a retrain already queued for the project"},
        404: {"model": ErrorOut},
        409: {"model": ErrorOut},
        422: {"model": ErrorOut},
    },
    summary="Retrain: queue a training job (joins one already queued for the project)",
)
def train(
    project_id: int,
    response: Response,
    body: TrainRequest | None = Body(None),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("annotator", "retraining")),
) -> dict:
    body = body or TrainRequest()
    job, coalesced = worker.submit(project_id, body.preset, body.stages, who=user.actor(), mode=body.mode)
    response.status_code = 200 if coalesced else 202
    response.headers["Location"] = f"/api/jobs/{job['id']}"
    return {**job_view(job), "coalesced": coalesced}


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}}, summary="A job's state")
def get_job(
    job_id: int, ws: Workspace = Depends(get_workspace), user: Principal = Depends(allow("viewer", "reading a job"))
) -> dict:
    return job_view(ws.get_job(job_id))


@router.get(
    "/projects/{project_id}/jobs",
    response_model=list[JobOut],
    responses={404: {"model": ErrorOut}},
    summary="A project's jobs, oldest first",
)
def list_jobs(
    project_id: int, ws: Workspace = Depends(get_workspace), user: Principal = Depends(allow("viewer", "listing jobs"))
) -> list[dict]:
    ws.get_project(project_id)
    return [job_view(job) for job in ws.list_jobs(project_id=project_id)]


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
    summary="Cancel a queued or running job; the previously active model stays active",
)
def cancel_job(
    job_id: int, worker: Worker = Depends(get_worker), user: Principal = Depends(allow("annotator", "cancelling a job"))
) -> dict:
    return job_view(worker.cancel(job_id, who=user.actor()))


def sse(event: str, data: dict, event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "event: progress (job JSON) per update, retry on an out-of-memory retry, "
            "end (job JSON) once finished; then the stream closes",
        },
        404: {"model": ErrorOut},
    },
    summary="Follow a job as Server-Sent Events",
)
async def job_events(
    job_id: int,
    request: Request,
    ws: Workspace = Depends(get_workspace),
    worker: Worker = Depends(get_worker),
    user: Principal = Depends(allow("viewer", "following a job")),
) -> StreamingResponse:
    await run_in_threadpool(ws.get_job, job_id)  # 404 as JSON before the stream starts
    subscription = worker.hub.subscribe(job_id)

    async def stream():
        n = 0
        try:
            job = job_view(await run_in_threadpool(ws.get_job, job_id))
            n += 1
            if job["state"] in FINISHED_STATES:
                yield sse("end", job, n)
                return
            yield sse("progress", job, n)
            last_check = last_sent = time.monotonic()
            while True:
                try:
                    event, data = subscription.get_nowait()
                except queue.Empty:
                    if worker.shutting_down.is_set():
                        return  # the server is stopping; EventSource clients reconnect by themselves
                    if await request.is_disconnected():
                        return
                    await asyncio.sleep(0.1)
                    now = time.monotonic()
                    if now - last_check > RECHECK_S:  # a finish this process did not publish (e.g. restart)
                        last_check = now
                        job = job_view(await run_in_threadpool(ws.get_job, job_id))
                        if job["state"] in FINISHED_STATES:
                            n += 1
                            yield sse("end", job, n)
                            return
                    if now - last_sent > KEEPALIVE_S:
                        last_sent = now
                        yield ": keep-alive\n\n"
                    continue
                n += 1
                last_sent = time.monotonic()
                yield sse(event, data, n)
                if event == "end":
                    return
        finally:
            worker.hub.unsubscribe(job_id, subscription)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
