"""The FastAPI application: `create_app(settings)` wires the workspace, routes and error mapping."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from app import demo
from app.auth import HOW_TO_CONFIGURE, UIGuard, is_loopback
from app.errors import install_error_handlers
from app.jobs import runner_for
from app.limits import BodyLimitMiddleware
from app.rendering import SliceRenderer
from app.routes import (
    access,
    annotations,
    dicomweb,
    info,
    interop_files,
    models,
    monailabel,
    predictions,
    project_admin,
    projects,
    review,
    training,
    volumes,
    voxels,
)
from app.schemas import HealthOut
from app.security import SecurityMiddleware
from app.settings import Settings
from app.speed import speed_report
from app.worker import Worker
from data.store import Workspace
from frontend.mount import mount_ui

log = logging.getLogger("slicewise")

UPLOAD_DIR = Path("tmp") / "uploads"  # inside the workspace: same disk as the store
STALE_UPLOAD_S = 3600


def version() -> str:
    try:
        return metadata.version("slicewise")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def remove_stale_uploads(folder: Path, older_than_s: float = STALE_UPLOAD_S) -> None:
    """A server killed mid-upload leaves its temp file behind; uploads in flight are younger than this.
    At start-up (older_than_s=0) every one is a leftover: only this server writes into the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.glob("upload-*.part"):
        try:
            if time.time() - path.stat().st_mtime >= older_than_s:
                path.unlink()
        except OSError:
            pass


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        workspace = Workspace(settings.workspace)
        app.state.workspace = workspace
        if not is_loopback(settings.host) and not workspace.has_users():
            raise RuntimeError(f"refusing to serve on {settings.host} without users: {HOW_TO_CONFIGURE}")
        remove_stale_uploads(app.state.upload_dir, older_than_s=0)
        swept = workspace.sweep_uncommitted()  # what writes killed before their commit left on disk
        if any(swept.values()):
            log.warning("removed leftovers of writes interrupted by a crash: %s", swept)
        if settings.demo:
            demo.seed_demo_project(workspace, settings)
        if not workspace.list_projects():
            log.info(demo.how_to_import(settings))
        log.info("workspace %s; API docs at %s/docs", settings.workspace.resolve(), settings.base_url)
        # the retrain worker: resumes or fails jobs a previous server left running, then runs the queue
        runner = runner_for(settings)
        connect = getattr(runner, "connect", None)
        if callable(connect):
            connect()  # a cluster that cannot be reached stops the start, saying so
        app.state.worker = Worker(
            workspace, runner=runner, device=settings.device, default_preset=settings.default_preset
        )
        app.state.worker.start(handle_signals=True)
        try:
            yield
        finally:
            app.state.worker.stop()
            close = getattr(workspace, "close", None)
            if callable(close):
                close()

    app = FastAPI(
        title="slicewise",
        version=version(),
        description="Paint a few slices, press Retrain, get a 3D segmentation. The HTTP contract is in docs/API.md.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.renderer = SliceRenderer()
    app.state.upload_dir = settings.workspace / UPLOAD_DIR
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)  # JSON bodies <= 1 MiB, masks <= 64 MiB, before they are read

    @app.get("/api/health", response_model=HealthOut, tags=["server"], summary="Liveness check")
    def health() -> dict:
        return {"status": "ok", "version": app.version, "device": settings.device}

    @app.get("/api/health/speed", tags=["server"], summary="Speed switches chosen for this machine, and why")
    def health_speed() -> dict:
        return speed_report(settings.device, settings.workspace)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui")

    app.add_middleware(UIGuard)  # with users configured, /ui needs a login too (app/auth.py)
    app.add_middleware(SecurityMiddleware)  # outermost: CSRF/origin checks and security headers (app/security.py)
    app.include_router(info.router)
    app.include_router(access.router)
    app.include_router(projects.router)
    app.include_router(volumes.router)
    app.include_router(voxels.router)
    app.include_router(project_admin.router)
    for retrain_router in (annotations, training, models, predictions, review):
        app.include_router(retrain_router.router)
    app.include_router(interop_files.router)
    app.include_router(dicomweb.router)
    app.include_router(monailabel.router)  # MONAI Label's REST API per project, for 3D Slicer and OHIF
    mount_ui(app, settings.base_url)  # Gradio at /ui, the viewer page at /static (frontend/ talks HTTP only)
    return app
