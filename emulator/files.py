"""Files API of the emulator: the file store, get, list, delete and download.

Uploads (Google's resumable protocol) are `emulator.uploads`; they end in `FileStore.put_bytes`.
Files expire 48 h after creation like Google's. Any file may be downloaded (Google only serves
generated files; the emulator does not enforce that). Batch output files are `source: GENERATED`
and carry a `downloadUri` on the `/download/{v}/files/ID:download?alt=media` form.

Stats: `files.downloaded` (downloads served); uploads count their own (emulator.uploads).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from typing import Any

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


class FileStore:
    """Uploaded and generated files; persisted under config.state_dir when set."""

    def __init__(self, config: EmulatorConfig, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._data: dict[str, bytes] = {}
        self._folder = jobstate.RecordFolder(config.state_dir, "files")
        self._seq = 0
        for record in self._folder.load():
            data = self._folder.blob(record["id"])
            if data is None:
                continue  # its bytes never made it to disk: not a file
            self._records[record["id"]] = record
            self._data[record["id"]] = data
            self._seq = max(self._seq, record["seq"])

    def reset(self) -> None:
        """Forget every file, on disk too."""
        with self._lock:
            for file_id in list(self._records):
                self._folder.remove(file_id)
            self._records.clear()
            self._data.clear()

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
            self._folder.save(record, data)
            return dict(record)

    def exists(self, file_id: str) -> bool:
        """Whether `files/{file_id}` is taken (expired files included until someone reads them)."""
        with self._lock:
            return file_id in self._records

    def get(self, name: str) -> dict[str, Any]:
        """The record of `files/ID` (or `ID`); 404 NOT_FOUND when absent or expired."""
        wanted = id_of(name)
        with self._lock:
            record = self._records.get(wanted)
            if record is not None and time.time() > record["created"] + FILE_TTL_SECONDS:
                self._drop(wanted)
                record = None
        if record is None:
            raise not_found(f"File files/{wanted} does not exist or you do not have permission to access it.")
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
        self._folder.remove(file_id)

    def _new_id(self) -> str:
        # Lowercase alphanumerics: the SDK's t_file_name only extracts [a-z0-9]+ from URIs.
        while True:
            file_id = secrets.token_hex(6)
            if file_id not in self._records:
                return file_id


def id_of(name: str) -> str:
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
