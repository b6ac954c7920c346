"""Google's resumable upload protocol for the emulator's Files API (what `files.upload` speaks).

  1. `POST /upload/{v}/files` with the API key, `X-Goog-Upload-Command: start`,
     `X-Goog-Upload-Header-Content-Length/-Type` and `{"file": {...}}` → 200 with an ABSOLUTE
     `x-goog-upload-url` on this emulator (`/upload/{v}/files?upload_id=TOKEN`, as Google's) and
     `x-goog-upload-status: active`.
  2. `POST` that URL, WITHOUT the key (the opaque token authorizes it), with
     `X-Goog-Upload-Command: upload[, finalize]` and `X-Goog-Upload-Offset` → `active` after a
     chunk, `final` plus `{"file": {...}}` after finalize. Errors on the upload URL also carry
     `x-goog-upload-status: final`, otherwise the SDK silently retries the chunk.

A finalized upload becomes a file of `emulator.files.FileStore`. Stats: `files.uploaded`
(finalized uploads), `files.bytes` (bytes of those uploads).
"""

from __future__ import annotations

import re
import secrets
import threading
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .auth import require_api_key
from .files import FileStore, check_version, id_of, resource
from .google_errors import GoogleError, invalid_argument, json_response, not_found
from .stats import Stats

router = APIRouter()

_FILE_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
CHUNK_GRANULARITY = 256 * 1024


class UploadSessions:
    """Open upload sessions, by opaque token; finalizing one stores the file in `files`."""

    def __init__(self, files: FileStore, stats: Stats) -> None:
        self.files = files
        self.stats = stats
        self._lock = threading.Lock()
        self._sessions: dict[str, dict[str, Any]] = {}

    def clear(self) -> None:
        """Forget every open session."""
        with self._lock:
            self._sessions.clear()

    def start(self, meta: dict[str, Any], size: int | None, mime_type: str | None) -> str:
        """Open an upload session for the file described by `meta`; returns its opaque token."""
        name = meta.get("name")
        wanted = id_of(name) if name else None
        if wanted is not None and not _FILE_ID.match(wanted):
            raise invalid_argument(
                f"Invalid file name {name!r}: the id after 'files/' must be 1-40 lowercase letters, "
                "digits or dashes, not starting or ending with a dash."
            )
        mime = mime_type or meta.get("mimeType") or meta.get("mime_type")
        if not mime:
            raise invalid_argument("Upload has no MIME type: set X-Goog-Upload-Header-Content-Type.")
        # Checked again when the file is stored: another upload may take the id meanwhile.
        if wanted is not None and self.files.exists(wanted):
            raise GoogleError(409, "ALREADY_EXISTS", f"File files/{wanted} already exists.")
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._sessions[token] = {
                "file_id": wanted,
                "display_name": meta.get("displayName") or meta.get("display_name"),
                "mime_type": mime,
                "size": size,
                "buffer": bytearray(),
            }
        return token

    def receive(
        self, token: str, command: str, offset: int | None, chunk: bytes
    ) -> tuple[dict[str, Any] | None, int]:
        """Apply one upload-URL request; returns (file record once finalized else None, bytes received)."""
        commands = {c.strip() for c in command.lower().split(",") if c.strip()}
        with self._lock:
            session = self._sessions.get(token)
        if session is None:
            raise not_found("Upload session not found or already finalized.")
        buffer: bytearray = session["buffer"]
        if "query" in commands:
            return None, len(buffer)
        if "upload" in commands:
            if offset is not None and offset != len(buffer):
                raise invalid_argument(
                    f"X-Goog-Upload-Offset is {offset} but the server has received {len(buffer)} bytes."
                )
            buffer.extend(chunk)
        if "finalize" not in commands:
            if "upload" not in commands:
                raise invalid_argument(f"Unsupported X-Goog-Upload-Command {command!r}.")
            return None, len(buffer)
        with self._lock:
            self._sessions.pop(token, None)
        if session["size"] is not None and session["size"] != len(buffer):
            raise invalid_argument(
                f"Upload finalized with {len(buffer)} bytes but X-Goog-Upload-Header-Content-Length "
                f"declared {session['size']}."
            )
        record = self.files.put_bytes(
            session["display_name"], session["mime_type"], bytes(buffer),
            file_id=session["file_id"], source="UPLOADED",
        )
        self.stats.add("files.uploaded")
        self.stats.add("files.bytes", len(buffer))
        return record, len(buffer)


# -- routes -----------------------------------------------------------------------------------


@router.post("/upload/{version}/files")
async def upload(version: str, request: Request) -> Response:
    """Resumable upload: `start` (with the key) or, with `?upload_id=`, a chunk (without it)."""
    check_version(version, request)
    token = request.query_params.get("upload_id")
    if token is not None:
        return await _upload_chunk(version, token, request)
    require_api_key(request)
    command = request.headers.get("x-goog-upload-command", "").strip().lower()
    if command != "start" or request.headers.get("x-goog-upload-protocol", "").lower() != "resumable":
        raise invalid_argument(
            "Only the resumable protocol is supported: send X-Goog-Upload-Protocol: resumable and "
            "X-Goog-Upload-Command: start."
        )
    raw = await request.body()
    try:
        payload = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from None
    meta = (payload.get("file") if isinstance(payload, dict) else None) or {}
    size_header = request.headers.get("x-goog-upload-header-content-length")
    try:
        size = int(size_header) if size_header is not None else None
    except ValueError:
        raise invalid_argument(f"X-Goog-Upload-Header-Content-Length {size_header!r} is not an integer.") from None
    token = _sessions(request).start(meta, size, request.headers.get("x-goog-upload-header-content-type"))
    base = str(request.base_url).rstrip("/")
    return Response(
        status_code=200,
        headers={
            "x-goog-upload-url": f"{base}/upload/{version}/files?upload_id={token}&upload_protocol=resumable",
            "x-goog-upload-status": "active",
            "x-goog-upload-chunk-granularity": str(CHUNK_GRANULARITY),
        },
    )


def _sessions(request: Request) -> UploadSessions:
    return request.app.state.emulator.uploads


async def _upload_chunk(version: str, token: str, request: Request) -> Response:
    command = request.headers.get("x-goog-upload-command", "")
    offset_header = request.headers.get("x-goog-upload-offset")
    try:
        offset = int(offset_header) if offset_header is not None else None
        record, received = _sessions(request).receive(token, command, offset, await request.body())
    except ValueError:
        return _upload_error(invalid_argument(f"X-Goog-Upload-Offset {offset_header!r} is not an integer."))
    except GoogleError as exc:
        return _upload_error(exc)
    if record is None:
        return Response(
            status_code=200,
            headers={"x-goog-upload-status": "active", "x-goog-upload-size-received": str(received)},
        )
    return json_response(
        {"file": resource(record, str(request.base_url), version)},
        headers={"x-goog-upload-status": "final"},
    )


def _upload_error(exc: GoogleError) -> Response:
    response = exc.response()
    # Without a status header the SDK retries the chunk three times before giving up.
    response.headers["x-goog-upload-status"] = "final"
    return response
