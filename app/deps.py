"""FastAPI dependencies: the objects a route needs, built once per app in create_app."""

from __future__ import annotations

from fastapi import Request

from app.auth import Principal, authenticate, check_role, check_scope
from app.rendering import SliceRenderer
from app.settings import Settings
from data.store import Workspace


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_workspace(request: Request) -> Workspace:
    return request.app.state.workspace


def get_renderer(request: Request) -> SliceRenderer:
    return request.app.state.renderer


def current_user(request: Request) -> Principal:
    """The caller (app/auth.py): the implicit local admin while no user is configured, else the owner of
    the Bearer token or session cookie; 401 without valid credentials."""
    return authenticate(request, request.app.state.workspace)


def allow(role: str, action: str):
    """Dependency for a route: the caller must have `role` (403) and, for a path naming a project,
    volume, job or model, be a member of its project (else 404). -> the Principal."""

    def dependency(request: Request) -> Principal:
        user = current_user(request)
        check_scope(request, request.app.state.workspace, user)
        check_role(user, role, action)
        return user

    return dependency
