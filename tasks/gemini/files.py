"""Files API calls: upload a job's JSONL input, download a job's JSONL results."""

from __future__ import annotations

import io
from typing import Any

from indexflow.tasks.gemini.errors import guarded

# A transfer moves a whole job (up to 10,000 items: about 80 MB of results), so it gets far longer
# than one call's deadline: enough for that size at 100 kB/s.
TRANSFER_DEADLINE_SECONDS = 900.0


async def upload_jsonl(client: Any, data: bytes, display_name: str, *,
                       deadline_seconds: float | None = TRANSFER_DEADLINE_SECONDS) -> str:
    """Upload a JSONL input through the Files API; returns `files/ID`."""

    async def upload() -> str:
        uploaded = await client.aio.files.upload(
            file=io.BytesIO(data), config={"mime_type": "jsonl", "display_name": display_name[:128]})
        return uploaded.name

    return await guarded(upload(), deadline_seconds=deadline_seconds, what="file upload")


async def download(client: Any, name: str, *, deadline_seconds: float | None = TRANSFER_DEADLINE_SECONDS) -> bytes:
    """The bytes of file `name` (`files/ID`)."""
    return await guarded(client.aio.files.download(file=name), deadline_seconds=deadline_seconds,
                         what="file download")
