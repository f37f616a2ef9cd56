"""Access: log in and out (session cookie), who am I, users, API tokens, project members, the audit log.

Everything but login/logout/me needs the admin role. Failed logins are throttled per account and per
client address (data/store_login.py): 429 with Retry-After while locked. See app/auth.py for the rules and
docs/deployment.md for setting up users.
"""

from __future__ import annotations

import secrets
from typing import Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.auth import CSRF_COOKIE, SESSION_COOKIE, SESSION_TTL_S, Principal, auth_enabled
from app.deps import allow, current_user, get_workspace
from app.schemas import ErrorOut
from data.store import Workspace
from data.store_users import ROLES

router = APIRouter(prefix="/api", tags=["access"])

Role = Literal[ROLES]


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "anna", "role": "annotator", "password": "a long passphrase"}]},
    )
    name: str = Field(min_length=1, max_length=64)
    role: Role
    password: str | None = Field(None, min_length=8, max_length=1024)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    password: str | None = Field(None, min_length=8, max_length=1024)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field("", max_length=200)


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=64)


def _secure(request: Request) -> bool:
    proto = request.headers.get("x-forwarded-proto", request.url.scheme)
    return proto.split(",")[0].strip().lower() == "https"


# the session cookie is for the server only (HttpOnly); the CSRF cookie is read by the page's scripts, which
# echo it in X-CSRF-Token. Both live as long as the session and are set and cleared together.
COOKIE_PATH = "/"
LOGIN_COOKIES = {
    SESSION_COOKIE: {"httponly": True, "samesite": "lax"},
    CSRF_COOKIE: {"httponly": False, "samesite": "strict"},
}


def _set_login_cookies(response: Response, session_secret: str, secure: bool) -> None:
    values = {SESSION_COOKIE: session_secret, CSRF_COOKIE: secrets.token_urlsafe(32)}
    for name, flags in LOGIN_COOKIES.items():
        response.set_cookie(name, values[name], max_age=SESSION_TTL_S, secure=secure, path=COOKIE_PATH, **flags)


@router.post(
    "/login",
    responses={401: {"model": ErrorOut}, 429: {"model": ErrorOut}},
    summary="Log in with name and password: sets an HttpOnly session cookie and the CSRF cookie",
)
def login(body: LoginRequest, request: Request, response: Response, ws: Workspace = Depends(get_workspace)) -> dict:
    if not auth_enabled(ws):
        return {
            "name": "local",
            "role": "admin",
            "auth": False,
            "message": "no users are configured: this server needs no login",
        }
    client = request.client.host if request.client else None
    locked = ws.login_lockout(body.name, client)
    if locked is not None:  # refused before the password is even looked at
        raise HTTPException(429, locked.message(), headers={"Retry-After": str(locked.retry_after_s)})
    user = ws.verify_password(body.name, body.password)
    if user is None:
        ws.record_audit(body.name, "login_failed", {"client": client})
        ws.record_login_failure(body.name, client)
        raise HTTPException(401, "wrong user name or password")
    ws.clear_login_failures(user["name"])
    secret, row = ws.create_token(user["name"], label="login", kind="session", ttl_s=SESSION_TTL_S)
    _set_login_cookies(response, secret, secure=_secure(request))
    ws.record_audit(user["name"], "login", {"client": client})
    return {"name": user["name"], "role": user["role"], "auth": True, "expires": row["expires"]}


@router.post(
    "/logout", summary="End the login session (clears the cookies); ?everywhere=true ends all of this user's sessions"
)
def logout(
    request: Request, response: Response, everywhere: bool = Query(False), ws: Workspace = Depends(get_workspace)
) -> dict:
    cookie = request.cookies.get(SESSION_COOKIE)
    ended = 0
    if everywhere:
        user = current_user(request)
        if not user.local:
            ended = ws.end_all_sessions(user.name, who=user.name)
    elif cookie:
        ws.end_session(cookie)
        ended = 1
    for name in LOGIN_COOKIES:
        response.delete_cookie(name, path=COOKIE_PATH)
    return {"logged_out": True, "sessions_ended": ended}


@router.get("/me", responses={401: {"model": ErrorOut}}, summary="Who the request acts as, and whether auth is on")
def me(user: Principal = Depends(current_user)) -> dict:
    return {"name": user.name, "role": user.role, "auth": not user.local}


# ------------------------------------------------------------------ users and tokens (admin)


@router.get("/users", summary="Users (admin)")
def list_users(
    ws: Workspace = Depends(get_workspace), user: Principal = Depends(allow("admin", "listing users"))
) -> list[dict]:
    return ws.list_users()


@router.post(
    "/users",
    status_code=201,
    responses={409: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Create a user (admin). The first user turns authentication on.",
)
def create_user(
    body: UserCreate,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("admin", "creating users")),
) -> dict:
    return ws.add_user(body.name, body.role, body.password, who=user.actor())


@router.patch("/users/{name}", responses={404: {"model": ErrorOut}}, summary="Change a user's role or password (admin)")
def update_user(
    name: str,
    body: UserUpdate,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("admin", "changing users")),
) -> dict:
    return ws.set_user(name, role=body.role, password=body.password, who=user.actor())


@router.delete(
    "/users/{name}",
    responses={404: {"model": ErrorOut}},
    summary="Delete a user with their tokens and memberships (admin)",
)
def delete_user(
    name: str, ws: Workspace = Depends(get_workspace), user: Principal = Depends(allow("admin", "deleting users"))
) -> dict:
    ws.remove_user(name, who=user.actor())
    return {"deleted": True, "name": name}


@router.post(
    "/users/{name}/unlock",
    responses={404: {"model": ErrorOut}},
    summary="Lift the failed-login lock of an account (admin)",
)
def unlock_user(
    name: str, ws: Workspace = Depends(get_workspace), user: Principal = Depends(allow("admin", "unlocking accounts"))
) -> dict:
    return {"user": name, "unlocked": ws.unlock_login(name=name, who=user.actor()) > 0}


@router.post(
    "/users/{name}/revoke",
    responses={404: {"model": ErrorOut}},
    summary="End every login session and revoke every API token of a user (admin)",
)
def revoke_user(
    name: str, ws: Workspace = Depends(get_workspace), user: Principal = Depends(allow("admin", "revoking access"))
) -> dict:
    return ws.revoke_user_access(name, who=user.actor())


@router.get("/users/{name}/tokens", summary="A user's API tokens, without their secrets (admin)")
def list_tokens(
    name: str, ws: Workspace = Depends(get_workspace), user: Principal = Depends(allow("admin", "listing tokens"))
) -> list[dict]:
    ws.get_user(name)
    return ws.list_tokens(name)


@router.post(
    "/users/{name}/tokens",
    status_code=201,
    responses={404: {"model": ErrorOut}},
    summary="Create an API token (admin); the secret is in this answer only",
)
def create_token(
    name: str,
    body: TokenCreate | None = Body(None),
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("admin", "creating tokens")),
) -> dict:
    secret, row = ws.create_token(name, label=(body.label if body else ""), who=user.actor())
    return {**row, "token": secret}


@router.delete("/tokens/{token_id}", responses={404: {"model": ErrorOut}}, summary="Revoke an API token (admin)")
def revoke_token(
    token_id: int, ws: Workspace = Depends(get_workspace), user: Principal = Depends(allow("admin", "revoking tokens"))
) -> dict:
    return ws.revoke_token(token_id, who=user.actor())


# ------------------------------------------------------------------ project members


@router.get("/projects/{project_id}/members", responses={404: {"model": ErrorOut}}, summary="Members of a project")
def list_members(
    project_id: int,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("viewer", "listing members")),
) -> list[dict]:
    return ws.list_members(project_id)


@router.post(
    "/projects/{project_id}/members",
    status_code=201,
    responses={404: {"model": ErrorOut}},
    summary="Add a member to a project (admin)",
)
def add_member(
    project_id: int,
    body: MemberAdd,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("admin", "adding members")),
) -> dict:
    return ws.add_member(project_id, body.user, who=user.actor())


@router.delete(
    "/projects/{project_id}/members/{name}",
    responses={404: {"model": ErrorOut}},
    summary="Remove a member from a project (admin)",
)
def remove_member(
    project_id: int,
    name: str,
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("admin", "removing members")),
) -> dict:
    ws.remove_member(project_id, name, who=user.actor())
    return {"deleted": True, "project_id": project_id, "user": name}


# ------------------------------------------------------------------ audit


@router.get("/audit", summary="The audit log, newest first (admin): who did what when")
def audit(
    who: str | None = Query(None, max_length=200),
    what: str | None = Query(None, max_length=100),
    since: str | None = Query(None, max_length=40, description="ISO time, e.g. 2026-01-31T00:00:00"),
    limit: int = Query(100, ge=1, le=10000),
    ws: Workspace = Depends(get_workspace),
    user: Principal = Depends(allow("admin", "reading the audit log")),
) -> list[dict]:
    return ws.query_audit(who=who, what=what, since=since, limit=limit)
