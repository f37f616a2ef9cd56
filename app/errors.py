"""Every error the API returns, mapped in one place to `{"detail": "<message>"}` with its status code.

data/ and model/ raise typed errors (data.errors); request validation and unknown routes come from
FastAPI/Starlette; anything else is a bug: logged with its traceback and answered with a plain 500.
"""

from __future__ import annotations

import errno
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from data.errors import SlicewiseError

log = logging.getLogger("slicewise.errors")


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def describe_validation_error(exc: RequestValidationError) -> str:
    """One readable sentence per problem, e.g. "path parameter 'axis': Input should be a valid integer"."""
    parts = []
    for error in exc.errors():
        loc = [str(x) for x in error.get("loc", ())]
        where = (
            {"path": "path parameter", "query": "query parameter", "body": "request body"}.get(loc[0], loc[0])
            if loc
            else ""
        )
        field = ".".join(loc[1:])
        message = error.get("msg", "is invalid")
        if where and field:
            parts.append(f"{where} '{field}': {message}")
        elif where:
            parts.append(f"{where}: {message}")
        else:
            parts.append(message)
    return "; ".join(parts) or "the request is invalid"


async def _slicewise_error(request: Request, exc: SlicewiseError) -> JSONResponse:
    return error_response(exc.status, str(exc) or type(exc).__name__)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, describe_validation_error(exc))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
    return error_response(exc.status_code, message, getattr(exc, "headers", None))


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


async def _os_error(request: Request, exc: OSError) -> JSONResponse:
    """A full disk (or quota) is the operator's to fix, not a bug: 507 saying so. Writes are atomic, so
    the previous version of whatever was being saved is intact."""
    if exc.errno in DISK_FULL_ERRNOS:
        log.error("disk full on %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            507,
            "the server's disk is full (or over its quota), so nothing was saved; the "
            "previous version is intact. Free some space on the server and try again",
        )
    return await _unexpected_error(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SlicewiseError, _slicewise_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(Exception, _unexpected_error)
