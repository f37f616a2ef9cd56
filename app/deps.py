"""FastAPI dependencies: the objects a route needs, built once per app in create_app."""

from __future__ import annotations

from fastapi import Request

from app.rendering import SliceRenderer
from app.settings import Settings
from data.store import Workspace


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_workspace(request: Request) -> Workspace:
    return request.app.state.workspace


def get_renderer(request: Request) -> SliceRenderer:
    return request.app.state.renderer
