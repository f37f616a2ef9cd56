"""Browser-facing protections, one ASGI middleware around the whole app (API, Gradio UI, static pages):

- Cross-site request forgery. A state-changing request (not GET/HEAD/OPTIONS) that carries no
  `Authorization` header is refused (403) when the browser says it comes from another origin (`Origin`,
  else `Sec-Fetch-Site`). On /api, one that carries the session cookie must also echo the `slicewise_csrf`
  cookie in the `X-CSRF-Token` header (double submit). API tokens in `Authorization` are never affected:
  a cross-origin page cannot send that header without a CORS preflight, which this server never grants.
- DNS rebinding. Without users (no login, loopback only) a browser request must name a loopback host:
  a page whose host name an attacker re-points to 127.0.0.1 gets 403 instead of the unauthenticated API.
- Headers on every answer: a Content-Security-Policy (scripts from this origin only; Gradio's inline
  scripts under /ui run by a per-response nonce; string evaluation is allowed there only), nosniff, frame-ancestors 'self', a Referrer-Policy, and
  HSTS when the request came over TLS (directly or per X-Forwarded-Proto from a proxy).
"""

from __future__ import annotations

import hmac
import re
import secrets
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from app.auth import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE, is_loopback

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_EXEMPT = frozenset({"/api/login"})  # no session yet; the origin check still applies
NONCE_PREFIX = "/ui"  # Gradio's pages: inline scripts we do not write, allowed by nonce
SWAGGER_PATHS = ("/docs", "/redoc")  # FastAPI's API docs load Swagger UI / ReDoc from their CDN

CSP = (
    "default-src 'self'; script-src 'self'{extra}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "media-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)
SWAGGER_CDN = "https://cdn.jsdelivr.net"
STATIC_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "SAMEORIGIN",
}
HSTS = "max-age=31536000"
_SCRIPT_TAG = re.compile(rb"<script(?=[\s>])")


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header: treat as none
        return {}
    return {k: m.value for k, m in jar.items()}


def _host_name(host: str) -> str:
    return (urlsplit("//" + host).hostname or "") if host else ""


def cross_origin_reason(method: str, path: str, headers: dict[str, str]) -> str | None:
    """Why this request must be refused as a cross-site request, or None. Pure: tested directly too."""
    if method in SAFE_METHODS or "authorization" in headers:
        return None
    origin = headers.get("origin")
    if origin is not None:
        own = {headers.get("host", "").lower(), headers.get("x-forwarded-host", "").split(",")[0].strip().lower()}
        if origin == "null" or urlsplit(origin).netloc.lower() not in own - {""}:
            return (
                f"cross-origin request refused: this page's origin {origin} is not this server "
                f"({headers.get('host', '?')}); use slicewise's own pages, or an API token in "
                "'Authorization: Bearer <token>' for scripts"
            )
    elif headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return "cross-site request refused: the browser marked it as coming from another site"
    if path.startswith("/api/") and path not in CSRF_EXEMPT:
        cookies = _cookies(headers)
        if SESSION_COOKIE in cookies:
            expected, sent = cookies.get(CSRF_COOKIE, ""), headers.get(CSRF_HEADER, "")
            if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
                return (
                    f"missing or wrong {CSRF_HEADER} header: a request made with the login cookie must send "
                    f"the value of the {CSRF_COOKIE} cookie in the X-CSRF-Token header (log in again if "
                    "that cookie is gone)"
                )
    return None


def is_browser(headers: dict[str, str]) -> bool:
    return "mozilla/" in headers.get("user-agent", "").lower() or "sec-fetch-mode" in headers


class SecurityMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        secure = scope.get("scheme") == "https" or headers.get("x-forwarded-proto", "").split(",")[0].strip() == "https"
        ui_page = path == NONCE_PREFIX or path.startswith(NONCE_PREFIX + "/")
        nonce = secrets.token_urlsafe(18) if ui_page and method != "HEAD" else None
        reason = cross_origin_reason(method, path, headers)
        if reason is None and is_browser(headers) and not is_loopback(_host_name(headers.get("host", ""))):
            reason = await self._rebinding_reason(scope, headers)
        send = self._with_headers(send, path, nonce, secure)
        if reason is not None:
            await JSONResponse({"detail": reason}, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _rebinding_reason(scope, headers) -> str | None:
        workspace = getattr(scope["app"].state, "workspace", None)
        if workspace is None or await run_in_threadpool(workspace.has_users):
            return None
        return (
            f"this server has no users, so it answers browsers only at a loopback address (127.0.0.1, "
            f"localhost), not at {headers.get('host')!r}; add users to serve it under other names"
        )

    @staticmethod
    def _with_headers(send, path: str, nonce: str | None, secure: bool):
        if path.startswith(SWAGGER_PATHS):
            extra = f" 'unsafe-inline' {SWAGGER_CDN}"
        else:
            # Gradio 6 builds gr.HTML from templates with new Function(): 'unsafe-eval' on its pages only
            # (inline and injected markup still cannot run: no 'unsafe-inline', nonce per response)
            extra = f" 'nonce-{nonce}' 'unsafe-eval'" if nonce else ""
        policy = CSP.format(extra=extra)
        state = {"rewrite": False, "start": None, "body": []}

        async def wrapped(message):
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                present = {k.decode("latin-1").lower() for k, _ in raw}
                add = {**STATIC_HEADERS, "content-security-policy": policy}
                if secure:
                    add["strict-transport-security"] = HSTS
                raw += [(k.encode(), v.encode()) for k, v in add.items() if k not in present]
                content_type = dict((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw).get(
                    "content-type", ""
                )
                if nonce and content_type.startswith("text/html"):
                    state["rewrite"], state["start"] = True, {**message, "headers": raw}
                    return
                await send({**message, "headers": raw})
                return
            if message["type"] == "http.response.body" and state["rewrite"]:
                state["body"].append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = _SCRIPT_TAG.sub(b'<script nonce="' + nonce.encode() + b'"', b"".join(state["body"]))
                start = state["start"]
                start["headers"] = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                start["headers"].append((b"content-length", str(len(body)).encode()))
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        return wrapped
