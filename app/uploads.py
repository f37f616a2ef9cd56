"""Receive one uploaded file (multipart field `file`) by streaming it to a temp file with a size limit.

Starlette's own form parser spools the whole body to disk before the route can say no; here the limit
is checked while the bytes arrive (and up front from Content-Length), so an oversized upload costs
neither memory nor disk. The temp file is always removed by the caller's context manager.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from data.errors import InvalidInput, TooLarge

FIELD = "file"


def upload_body(description: str) -> dict:
    """The OpenAPI request body of a route that reads its upload with `received_file`: one multipart file
    in field `file` (the route reads the raw stream, so FastAPI cannot describe it on its own)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [FIELD],
                        "properties": {FIELD: {"type": "string", "format": "binary", "description": description}},
                    }
                }
            },
        }
    }


MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file's bytes
WRITE_CHUNK = 1024 * 1024


@dataclass
class ReceivedFile:
    path: Path
    filename: str
    size: int


def _too_large(limit: int) -> TooLarge:
    return TooLarge(
        f"the upload is larger than the limit of {limit / (1024 * 1024):g} MB "
        "(the server's SLICEWISE_MAX_UPLOAD_MB setting)"
    )


class _FilePartCollector:
    """python-multipart callbacks: keep the bytes of the `file` part, refuse anything odd."""

    def __init__(self, out, limit: int, field: str = FIELD):
        self.out = out
        self.limit = limit
        self.field = field
        self.size = 0
        self.filename: str | None = None
        self.found = False
        self._in_file = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._pending: list[bytes] = []

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._in_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name", b"").decode("utf-8", "replace") != self.field:
            return  # other form fields are ignored
        if self.found:
            raise InvalidInput(f"send one file per upload (the form has several '{self.field}' fields)")
        if b"filename" not in options:
            raise InvalidInput(f"the form field '{self.field}' must be a file upload with a file name")
        self.found = True
        self._in_file = True
        self.filename = options[b"filename"].decode("utf-8", "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            return
        self.size += end - start
        if self.size > self.limit:
            raise _too_large(self.limit)
        self._pending.append(bytes(data[start:end]))

    def on_part_end(self) -> None:
        self._in_file = False

    def take_pending(self) -> bytes:
        chunk = b"".join(self._pending)
        self._pending.clear()
        return chunk


async def _stream_to(request: Request, out, limit: int, field: str = FIELD) -> _FilePartCollector:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidInput(
            "send the volume as multipart/form-data with the file in the field 'file' "
            "(e.g. curl -F file=@scan.nii.gz ...)"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise _too_large(limit)

    collector = _FilePartCollector(out, limit, field)
    callbacks = {
        name: getattr(collector, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
        )
    }
    parser = MultipartParser(params[b"boundary"], callbacks)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            data = collector.take_pending()
            if len(data) >= WRITE_CHUNK:
                await run_in_threadpool(out.write, data)
            elif data:
                out.write(data)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidInput(f"the multipart form data is malformed: {exc}") from None
    except ClientDisconnect:
        raise InvalidInput("the upload was interrupted before it finished") from None
    rest = collector.take_pending()
    if rest:
        out.write(rest)
    if not collector.found:
        raise InvalidInput(f"the form has no field '{field}'; send the file as -F {field}=@scan.nii.gz")
    return collector


@contextlib.asynccontextmanager
async def received_file(request: Request, tmp_dir: Path, limit: int, field: str = FIELD) -> AsyncIterator[ReceivedFile]:
    """Yields the uploaded file (multipart field `field`) on disk; removes it afterwards whatever happens."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=tmp_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            collector = await _stream_to(request, out, limit, field)
        yield ReceivedFile(path=path, filename=collector.filename or "", size=collector.size)
    finally:
        path.unlink(missing_ok=True)
