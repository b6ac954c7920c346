"""Files API of the emulator, driven through the unmodified google-genai SDK."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from collections.abc import Iterator

import httpx
import pytest
from google import genai
from google.genai import errors, types

from indexflow.emulator.server import RunningEmulator, running_emulator






@pytest.fixture
def client(emu: RunningEmulator) -> genai.Client:
    return genai.Client(
        api_key=emu.api_key, http_options=types.HttpOptions(base_url=emu.base_url, api_version="v1beta")
    )


def key(emu: RunningEmulator) -> dict[str, str]:
    return {"x-goog-api-key": emu.api_key}


def test_upload_then_get_describes_the_file(emu, client, tmp_path):
    data = b'{"key": "k", "request": {}}\n' * 10
    path = tmp_path / "input.jsonl"
    path.write_bytes(data)
    uploaded = client.files.upload(file=path, config={"mime_type": "jsonl", "display_name": "my input"})
    assert uploaded.name.startswith("files/")
    assert (uploaded.size_bytes, uploaded.mime_type, uploaded.display_name) == (len(data), "jsonl", "my input")
    assert uploaded.state == types.FileState.ACTIVE and uploaded.source == types.FileSource.UPLOADED
    assert uploaded.sha256_hash == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert uploaded.expiration_time > uploaded.create_time

    fetched = client.files.get(name=uploaded.name)
    assert (fetched.name, fetched.size_bytes, fetched.sha256_hash) == (uploaded.name, len(data), uploaded.sha256_hash)
    assert client.files.download(file=uploaded.name) == data
    stats = emu.admin.stats()
    assert (stats["files.uploaded"], stats["files.bytes"]) == (1, len(data))


def test_upload_larger_than_one_sdk_chunk_arrives_whole(client):
    # The SDK sends 8 MiB chunks: "upload" at offset 0, then "upload, finalize" at 8 MiB.
    data = bytes(range(256)) * (9 * 1024 * 1024 // 256)
    uploaded = client.files.upload(file=io.BytesIO(data), config={"mime_type": "application/octet-stream"})
    assert uploaded.size_bytes == len(data)
    assert client.files.download(file=uploaded.name) == data


def test_async_upload_and_download(client):
    async def run() -> tuple[types.File, bytes]:
        uploaded = await client.aio.files.upload(file=io.BytesIO(b"async bytes"), config={"mime_type": "jsonl"})
        return uploaded, await client.aio.files.download(file=uploaded.name)

    uploaded, data = asyncio.run(run())
    assert (uploaded.size_bytes, data) == (11, b"async bytes")


def test_both_download_url_forms_serve_the_bytes(emu, client):
    uploaded = client.files.upload(file=io.BytesIO(b"payload"), config={"mime_type": "jsonl"})
    file_id = uploaded.name.split("/")[1]
    for path in (f"/v1beta/files/{file_id}:download", f"/download/v1beta/files/{file_id}:download"):
        response = httpx.get(f"{emu.base_url}{path}", params={"alt": "media"}, headers=key(emu))
        assert (response.status_code, response.content) == (200, b"payload")
        assert httpx.get(f"{emu.base_url}{path}", params={"alt": "media"}).status_code == 403


def test_delete_makes_the_file_unknown(client):
    uploaded = client.files.upload(file=io.BytesIO(b"x"), config={"mime_type": "jsonl"})
    client.files.delete(name=uploaded.name)
    with pytest.raises(errors.ClientError) as info:
        client.files.get(name=uploaded.name)
    assert (info.value.code, info.value.status) == (404, "NOT_FOUND")
    with pytest.raises(errors.ClientError) as info:
        client.files.download(file=uploaded.name)
    assert info.value.code == 404


def test_list_pages_newest_first(client):
    names = [client.files.upload(file=io.BytesIO(b"%d" % i), config={"mime_type": "jsonl"}).name for i in range(5)]
    assert [f.name for f in client.files.list(config={"page_size": 2})] == names[::-1]


def test_upload_start_needs_the_key_but_the_upload_url_does_not(emu):
    start_headers = {
        "X-Goog-Upload-Protocol": "resumable",
        "X-Goog-Upload-Command": "start",
        "X-Goog-Upload-Header-Content-Length": "5",
        "X-Goog-Upload-Header-Content-Type": "jsonl",
    }
    url = f"{emu.base_url}/upload/v1beta/files"
    assert httpx.post(url, headers=start_headers, json={"file": {}}).status_code == 403
    started = httpx.post(url, headers={**start_headers, **key(emu)}, json={"file": {"display_name": "d"}})
    assert started.headers["x-goog-upload-status"] == "active"
    upload_url = started.headers["x-goog-upload-url"]
    assert upload_url.startswith(emu.base_url + "/upload/v1beta/files?")

    wrong = httpx.post(upload_url, headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "3"},
                       content=b"abc")
    assert wrong.status_code == 400 and wrong.headers["x-goog-upload-status"] == "final"
    first = httpx.post(upload_url, headers={"X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"},
                       content=b"abc")
    assert first.headers["x-goog-upload-status"] == "active"
    done = httpx.post(upload_url, headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "3"},
                      content=b"de")
    assert done.headers["x-goog-upload-status"] == "final"
    body = done.json()["file"]
    assert (body["sizeBytes"], body["displayName"], body["state"]) == ("5", "d", "ACTIVE")

    again = httpx.post(upload_url, headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "5"},
                       content=b"")
    assert again.status_code == 404 and again.headers["x-goog-upload-status"] == "final"


def test_finalizing_fewer_bytes_than_declared_is_rejected(emu):
    started = httpx.post(
        f"{emu.base_url}/upload/v1beta/files",
        headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                 "X-Goog-Upload-Header-Content-Length": "10", "X-Goog-Upload-Header-Content-Type": "jsonl",
                 **key(emu)},
        json={"file": {}},
    )
    response = httpx.post(started.headers["x-goog-upload-url"],
                          headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
                          content=b"short")
    assert response.status_code == 400 and "declared 10" in response.json()["error"]["message"]
