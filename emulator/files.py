"""Files API of the emulator: Google's resumable upload, get, list, delete and download.

Upload (what google-genai's `files.upload` does):
  1. `POST /upload/{v}/files` with the API key, `X-Goog-Upload-Command: start`,
     `X-Goog-Upload-Header-Content-Length/-Type` and `{"file": {...}}` → 200 with an ABSOLUTE
     `x-goog-upload-url` on this emulator (`/upload/{v}/files?upload_id=TOKEN`, as Google's) and
     `x-goog-upload-status: active`.
  2. `POST` that URL, WITHOUT the key (the opaque token authorizes it), with
     `X-Goog-Upload-Command: upload[, finalize]` and `X-Goog-Upload-Offset` → `active` after a
     chunk, `final` plus `{"file": {...}}` after finalize. Errors on the upload URL also carry
     `x-goog-upload-status: final`, otherwise the SDK silently retries the chunk.
Files expire 48 h after creation like Google's. Any file may be downloaded (Google only serves
generated files; the emulator does not enforce that). Batch output files are `source: GENERATED`
and carry a `downloadUri` on the `/download/{v}/files/ID:download?alt=media` form.

Stats: `files.uploaded` (finalized uploads), `files.bytes` (bytes of those uploads).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from . import jobstate
from .auth import require_api_key
from .config import EmulatorConfig
from .google_errors import GoogleError, invalid_argument, json_response, not_found
from .stats import Stats

router = APIRouter()

API_VERSIONS = ("v1", "v1beta", "v1alpha")
FILE_TTL_SECONDS = 48 * 3600
_FILE_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")


class FileStore:
    """Uploaded and generated files; persisted under config.state_dir when set."""

    def __init__(self, config: EmulatorConfig, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._data: dict[str, bytes] = {}
        self._uploads: dict[str, dict[str, Any]] = {}
        self._seq = 0
        self._load()

    # -- persistence ----------------------------------------------------------------------

    def _folder(self) -> Path | None:
        state_dir = self.config.state_dir
        return Path(state_dir) / "files" if state_dir is not None else None

    def _load(self) -> None:
        folder = self._folder()
        if folder is None:
            return
        for record in jobstate.read_json_records(folder):
            blob = folder / f"{record.get('id')}.bin"
            if not blob.is_file():
                continue
            self._records[record["id"]] = record
            self._data[record["id"]] = blob.read_bytes()
            self._seq = max(self._seq, record["seq"])

    def _persist(self, record: dict[str, Any], data: bytes) -> None:
        folder = self._folder()
        if folder is not None:
            # Bytes first: a record without its bytes is skipped on load, never half-served.
            jobstate.write_atomic(folder / f"{record['id']}.bin", data)
            jobstate.write_json(folder / f"{record['id']}.json", record)

    def _unpersist(self, file_id: str) -> None:
        folder = self._folder()
        if folder is not None:
            jobstate.remove(folder / f"{file_id}.json", folder / f"{file_id}.bin")

    def reset(self) -> None:
        """Forget every file and pending upload, on disk too."""
        with self._lock:
            for file_id in list(self._records):
                self._unpersist(file_id)
            self._records.clear()
            self._data.clear()
            self._uploads.clear()

    # -- store operations -----------------------------------------------------------------

    def put_bytes(
        self,
        display_name: str | None,
        mime_type: str,
        data: bytes,
        *,
        file_id: str | None = None,
        source: str = "GENERATED",
    ) -> dict[str, Any]:
        """Store `data` as a new ACTIVE file and return its record (render with `resource`)."""
        with self._lock:
            file_id = file_id or self._new_id()
            if file_id in self._records:
                raise GoogleError(409, "ALREADY_EXISTS", f"File files/{file_id} already exists.")
            self._seq += 1
            now = time.time()
            record = {
                "id": file_id,
                "seq": self._seq,
                "displayName": display_name,
                "mimeType": mime_type,
                "size": len(data),
                "created": now,
                "sha256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
                "source": source,
            }
            self._records[file_id] = record
            self._data[file_id] = data
            self._persist(record, data)
            return dict(record)

    def get(self, name: str) -> dict[str, Any]:
        """The record of `files/ID` (or `ID`); 404 NOT_FOUND when absent or expired."""
        file_id = _file_id(name)
        with self._lock:
            record = self._records.get(file_id)
            if record is not None and time.time() > record["created"] + FILE_TTL_SECONDS:
                self._drop(file_id)
                record = None
        if record is None:
            raise not_found(f"File files/{file_id} does not exist or you do not have permission to access it.")
        return dict(record)

    def get_bytes(self, name: str) -> bytes:
        """The content of `files/ID` (or `ID`)."""
        record = self.get(name)
        with self._lock:
            return self._data[record["id"]]

    def delete(self, name: str) -> None:
        """Remove `files/ID`; 404 when it does not exist."""
        record = self.get(name)
        with self._lock:
            self._drop(record["id"])

    def list_page(self, page_size: int, page_token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Files newest first, one page, with the next page's token."""
        with self._lock:
            records = [dict(r) for r in self._records.values()]
        return jobstate.page_newest_first(records, page_size, page_token)

    def _drop(self, file_id: str) -> None:
        self._records.pop(file_id, None)
        self._data.pop(file_id, None)
        self._unpersist(file_id)

    def _new_id(self) -> str:
        # Lowercase alphanumerics: the SDK's t_file_name only extracts [a-z0-9]+ from URIs.
        while True:
            file_id = secrets.token_hex(6)
            if file_id not in self._records:
                return file_id

    # -- resumable upload -----------------------------------------------------------------

    def start_upload(self, meta: dict[str, Any], size: int | None, mime_type: str | None) -> str:
        """Open an upload session for the file described by `meta`; returns its opaque token."""
        name = meta.get("name")
        file_id = _file_id(name) if name else None
        if file_id is not None and not _FILE_ID.match(file_id):
            raise invalid_argument(
                f"Invalid file name {name!r}: the id after 'files/' must be 1-40 lowercase letters, "
                "digits or dashes, not starting or ending with a dash."
            )
        mime = mime_type or meta.get("mimeType") or meta.get("mime_type")
        if not mime:
            raise invalid_argument("Upload has no MIME type: set X-Goog-Upload-Header-Content-Type.")
        token = secrets.token_urlsafe(24)
        with self._lock:
            if file_id is not None and file_id in self._records:
                raise GoogleError(409, "ALREADY_EXISTS", f"File files/{file_id} already exists.")
            self._uploads[token] = {
                "file_id": file_id,
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
            session = self._uploads.get(token)
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
            self._uploads.pop(token, None)
        if session["size"] is not None and session["size"] != len(buffer):
            raise invalid_argument(
                f"Upload finalized with {len(buffer)} bytes but X-Goog-Upload-Header-Content-Length "
                f"declared {session['size']}."
            )
        record = self.put_bytes(
            session["display_name"], session["mime_type"], bytes(buffer),
            file_id=session["file_id"], source="UPLOADED",
        )
        self.stats.add("files.uploaded")
        self.stats.add("files.bytes", len(buffer))
        return record, len(buffer)


def _file_id(name: str) -> str:
    """`files/ID` or `ID` → `ID`."""
    return name[len("files/"):] if name.startswith("files/") else name


def resource(record: dict[str, Any], base_url: str, version: str) -> dict[str, Any]:
    """The File resource JSON Google returns for `record`."""
    base = base_url.rstrip("/")
    file_id = record["id"]
    body: dict[str, Any] = {
        "name": f"files/{file_id}",
        "mimeType": record["mimeType"],
        "sizeBytes": str(record["size"]),  # int64 travels as a string
        "createTime": jobstate.rfc3339(record["created"]),
        "updateTime": jobstate.rfc3339(record["created"]),
        "expirationTime": jobstate.rfc3339(record["created"] + FILE_TTL_SECONDS),
        "sha256Hash": record["sha256"],
        "uri": f"{base}/{version}/files/{file_id}",
        "state": "ACTIVE",
        "source": record["source"],
    }
    if record.get("displayName"):
        body["displayName"] = record["displayName"]
    if record["source"] == "GENERATED":
        body["downloadUri"] = f"{base}/download/{version}/files/{file_id}:download?alt=media"
    return body


def check_version(version: str, request: Request) -> None:
    """404 for a path whose first segment is not an API version Google serves."""
    if version not in API_VERSIONS:
        raise not_found(f"The requested URL {request.url.path} was not found on this server.")


def _store(request: Request) -> FileStore:
    return request.app.state.emulator.files


def _base_url(request: Request) -> str:
    return str(request.base_url)


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
    token = _store(request).start_upload(meta, size, request.headers.get("x-goog-upload-header-content-type"))
    upload_url = f"{_base_url(request).rstrip('/')}/upload/{version}/files?upload_id={token}&upload_protocol=resumable"
    return Response(
        status_code=200,
        headers={
            "x-goog-upload-url": upload_url,
            "x-goog-upload-status": "active",
            "x-goog-upload-chunk-granularity": str(256 * 1024),
        },
    )


async def _upload_chunk(version: str, token: str, request: Request) -> Response:
    store = _store(request)
    command = request.headers.get("x-goog-upload-command", "")
    offset_header = request.headers.get("x-goog-upload-offset")
    try:
        offset = int(offset_header) if offset_header is not None else None
        record, received = store.receive(token, command, offset, await request.body())
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
        {"file": resource(record, _base_url(request), version)},
        headers={"x-goog-upload-status": "final"},
    )


def _upload_error(exc: GoogleError) -> Response:
    response = exc.response()
    # Without a status header the SDK retries the chunk three times before giving up.
    response.headers["x-goog-upload-status"] = "final"
    return response


@router.get("/{version}/files", dependencies=[Depends(require_api_key)])
async def list_files(version: str, request: Request, pageSize: int = 10, pageToken: str | None = None) -> Response:
    """`files.list`: newest first, at most 100 per page."""
    check_version(version, request)
    page_size = max(1, min(pageSize, 100))
    try:
        page, next_token = _store(request).list_page(page_size, pageToken)
    except ValueError:
        raise invalid_argument(f"Invalid page token {pageToken!r}.") from None
    body: dict[str, Any] = {"files": [resource(r, _base_url(request), version) for r in page]}
    if next_token:
        body["nextPageToken"] = next_token
    return json_response(body)


@router.get("/{version}/files/{file_ref}", dependencies=[Depends(require_api_key)])
async def get_file(version: str, file_ref: str, request: Request) -> Response:
    """`files.get`, or the download when the path ends in `:download`."""
    check_version(version, request)
    file_id, _, method = file_ref.partition(":")
    if method:
        return _download(file_id, method, request)
    return json_response(resource(_store(request).get(file_id), _base_url(request), version))


@router.get("/download/{version}/files/{file_ref}", dependencies=[Depends(require_api_key)])
async def download_form(version: str, file_ref: str, request: Request) -> Response:
    """The `/download/{v}/files/ID:download?alt=media` form Google gives generated files."""
    check_version(version, request)
    file_id, _, method = file_ref.partition(":")
    return _download(file_id, method or "download", request)


def _download(file_id: str, method: str, request: Request) -> Response:
    if method != "download":
        raise not_found(f"Method files.{method} is not supported.")
    if request.query_params.get("alt") != "media":
        raise invalid_argument("Downloading a file requires the query parameter alt=media.")
    store = _store(request)
    record = store.get(file_id)
    store.stats.add("files.downloaded")
    return Response(content=store.get_bytes(file_id), media_type=record["mimeType"])


@router.delete("/{version}/files/{file_id}", dependencies=[Depends(require_api_key)])
async def delete_file(version: str, file_id: str, request: Request) -> Response:
    """`files.delete` → `{}`."""
    check_version(version, request)
    _store(request).delete(file_id)
    return json_response({})
