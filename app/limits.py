"""Request body limits, enforced before a route (or FastAPI's JSON parser) holds the body in memory.

- JSON (and any other small-form body: form-urlencoded, text): at most 1 MiB; no request of the API needs more.
- A mask of one slice (image/png, application/octet-stream): at most the annotation route's limit.
- multipart/form-data (volume uploads) is left to app/uploads.py, which streams to disk with its own limit.

Only the API (/api/...) is limited here. A declared Content-Length over the limit is refused at once with 413; a body without one (chunked) is
counted while it arrives and refused with 413 as soon as it goes over.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

MB = 1024 * 1024
JSON_LIMIT = 1 * MB
RAW_LIMIT = 64 * MB  # app.routes.annotations.MAX_MASK_BYTES
RAW_TYPES = (b"image/png", b"application/octet-stream")
STREAMED_TYPES = (b"multipart/form-data",)
API_PREFIX = "/api/"


def body_limit(content_type: bytes) -> int | None:
    media = content_type.split(b";")[0].strip().lower()
    if media in STREAMED_TYPES:
        return None
    if media in RAW_TYPES:
        return RAW_LIMIT
    return JSON_LIMIT


def too_large_message(limit: int) -> str:
    return (
        f"the request body is larger than the limit of {limit / MB:g} MB for this kind of request; "
        "volumes are uploaded as multipart/form-data"
    )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") in ("GET", "HEAD", "OPTIONS")
            or not scope.get("path", "").startswith(API_PREFIX)
        ):  # the Gradio UI at /ui has its own rules
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        limit = body_limit(headers.get(b"content-type", b""))
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": too_large_message(limit)}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, too_large_message(limit))
            return message

        await self.app(scope, counting_receive, send)
