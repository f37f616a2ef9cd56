"""Who is asking, and may they: authentication (API token or login cookie) and role/membership checks.

- No user in the workspace: authentication is off and every request acts as the local admin "local"
  (zero-config local use; `slicewise serve` refuses a non-loopback address in that state).
- Any user in the workspace: every request needs `Authorization: Bearer <token>` or the session cookie
  set by `POST /api/login`; otherwise 401.
- Roles: viewer (read) < annotator (paint, upload, review, retrain, cancel) < admin (projects, users,
  members, model rollback, audit). A known user lacking the role: 403.
- A project (and its volumes, jobs, models) exists only for its members and admins: anyone else gets the
  same 404 as for an id that does not exist.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from fastapi import HTTPException, Request

from data.errors import NotFound
from data.store_users import ROLES

SESSION_COOKIE = "slicewise_session"
CSRF_COOKIE = "slicewise_csrf"  # readable by the page's own script, echoed as the X-CSRF-Token header
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600  # a login lasts at most a working day ...
SESSION_IDLE_S = 3600  # ... and ends after an hour without a request
LOCAL_USER = "local"
HOW_TO_CONFIGURE = (
    "create a user and an API token first:\n"
    "    slicewise users add NAME --role admin --password-stdin --workspace WORKSPACE\n"
    "    slicewise tokens create NAME --workspace WORKSPACE\n"
    "then send 'Authorization: Bearer <token>' (API) or log in at /login (browser). "
    "See docs/deployment.md."
)


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    local: bool = False  # authentication is off (no users configured): the implicit local admin

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def actor(self, claimed: str | None = None) -> str:
        """The name recorded in annotations and the audit log: the authenticated user; without
        authentication the name the client gave (default "local")."""
        if self.local:
            return claimed if claimed else LOCAL_USER
        return self.name


LOCAL = Principal(LOCAL_USER, "admin", local=True)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_enabled(workspace) -> bool:
    return workspace.has_users()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise HTTPException(
            401, "the Authorization header must be 'Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    return value.strip()


def authenticate(request: Request, workspace) -> Principal:
    """The caller, or 401. Cached on the request (several dependencies ask)."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    if not auth_enabled(workspace):
        principal = LOCAL
    else:
        token = _bearer(request)
        if token is not None:
            user = workspace.user_for_token(token, kind="api")
            if user is None:
                raise HTTPException(
                    401, "the API token is unknown, revoked or expired", headers={"WWW-Authenticate": "Bearer"}
                )
        else:
            cookie = request.cookies.get(SESSION_COOKIE)
            user = workspace.user_for_token(cookie, kind="session", idle_s=SESSION_IDLE_S) if cookie else None
            if user is None:
                message = (
                    "your login session has expired; log in again at /login"
                    if cookie
                    else "authentication required: send 'Authorization: Bearer <token>' or log in at /login"
                )
                raise HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})
        principal = Principal(user["name"], user["role"])
    request.state.principal = principal
    return principal


def try_authenticate(request: Request, workspace) -> Principal | None:
    try:
        return authenticate(request, workspace)
    except HTTPException:
        return None


# path parameter -> (what it names, how to find its project)
_SCOPES = (
    ("project_id", "project", lambda ws, i: ws.get_project(i)["id"]),
    ("volume_id", "volume", lambda ws, i: ws.get_volume(i)["project_id"]),
    ("job_id", "job", lambda ws, i: ws.get_job(i)["project_id"]),
    ("model_id", "model", lambda ws, i: ws.get_model(i)["project_id"]),
)


def check_scope(request: Request, workspace, user: Principal) -> None:
    """A non-admin sees a project-scoped path only when a member of its project; otherwise the same
    404 as for an id that does not exist (the existence of other projects does not leak)."""
    if user.is_admin:
        return  # admins see everything; the route itself answers 404 for unknown ids
    for param, what, project_of in _SCOPES:
        raw = request.path_params.get(param)
        if raw is None:
            continue
        try:
            ident = int(raw)
        except (TypeError, ValueError):
            continue  # not an id: request validation answers 422
        try:
            project_id = project_of(workspace, ident)
        except NotFound:
            raise NotFound(f"no {what} with id {ident}") from None
        if not workspace.is_member(project_id, user.name):
            raise NotFound(f"no {what} with id {ident}")


def check_role(user: Principal, role: str, action: str) -> None:
    if not user.can(role):
        needed = "admin role" if role == "admin" else f"{role} role (or higher)"
        raise HTTPException(403, f"user {user.name!r} has the {user.role} role; {action} needs the {needed}")


class UIGuard:
    """ASGI middleware: with authentication on, the Gradio UI (/ui...) needs a valid login too. A page
    request without one is sent to /login (which comes back to /ui); anything else gets 401."""

    def __init__(self, app, prefix: str = "/ui"):
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == self.prefix or path.startswith(self.prefix + "/"):
            from starlette.concurrency import run_in_threadpool
            from starlette.responses import JSONResponse, RedirectResponse

            request = Request(scope)
            workspace = getattr(scope["app"].state, "workspace", None)
            if workspace is not None and await run_in_threadpool(try_authenticate, request, workspace) is None:
                if scope.get("method") == "GET" and path.rstrip("/") == self.prefix:
                    response = RedirectResponse(f"/login?next={self.prefix}", status_code=303)
                else:
                    response = JSONResponse({"detail": "log in at /login first"}, status_code=401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
