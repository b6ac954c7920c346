"""Batch API submission: request bodies, the inline-or-file choice, create, and finding a job by name.

Titles per item: the SDK's inline source copies ONE `EmbedContentConfig` (task type, title,
dimensionality) into every request of a job, so it cannot carry each chunk's own title. Inline
jobs are therefore created with the REST body (`asyncBatchEmbedContent`, a title on each item)
sent through the SDK's own API client, as `tasks.gemini.embed_batch` does online: same base URL,
key header, timeout and errors. File jobs use `files.upload` + `batches.create_embeddings`, one
JSONL line per chunk keyed by the chunk id.

Creating a job is not idempotent. A create that fails in a way that may have reached the server
(timeout, dropped connection, 5xx) is followed by a look-up by display name before any retry.
"""

from __future__ import annotations

import asyncio
import io
import json
import warnings
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import BadRequestError, BatchJobError, IndexflowError, RateLimitedError
from indexflow.tasks.gemini import TITLE_TASK_TYPES, _model_path, classify
from indexflow.tasks.recipe import Recipe

# Jobs listed newer than this before an intent's time still count as candidates (clock skew).
LIST_SKEW = timedelta(minutes=10)


def item_request(chunk: Chunk, recipe: Recipe) -> dict[str, Any]:
    """One EmbedContentRequest, exactly what the online path sends for this chunk (same vector)."""
    request: dict[str, Any] = {
        "content": {"parts": [{"text": chunk.text}], "role": "user"},
        "taskType": recipe.task_type,
        "outputDimensionality": recipe.dimensions,
    }
    if recipe.send_title and recipe.task_type in TITLE_TASK_TYPES and chunk.title:
        request["title"] = chunk.title
    return request


def inline_body(chunks: Sequence[Chunk], recipe: Recipe, display_name: str) -> dict[str, Any]:
    """The `asyncBatchEmbedContent` JSON body of an inline job (results come back by position)."""
    return {"batch": {"displayName": display_name,
                      "inputConfig": {"requests": {"requests": [
                          {"request": item_request(c, recipe)} for c in chunks]}}}}


def body_size(body: dict[str, Any]) -> int:
    """Bytes of `body` as JSON on the wire (what the 20 MB inline limit counts)."""
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


def jsonl_input(chunks: Sequence[Chunk], recipe: Recipe) -> bytes:
    """The JSONL input file of a file job: one `{"key": chunk id, "request": ...}` line per chunk."""
    return b"".join(
        json.dumps({"key": c.id, "request": item_request(c, recipe)}, ensure_ascii=False,
                   separators=(",", ":")).encode() + b"\n"
        for c in chunks)


async def upload_jsonl(client: Any, data: bytes, display_name: str) -> str:
    """Upload a JSONL input through the Files API; returns `files/ID`."""
    try:
        uploaded = await client.aio.files.upload(
            file=io.BytesIO(data), config={"mime_type": "jsonl", "display_name": display_name[:128]})
    except Exception as exc:
        raise classify(exc) from None
    return uploaded.name


async def create_inline(client: Any, body: dict[str, Any], recipe: Recipe) -> str:
    """POST an inline job body through the SDK's API client; returns the job name `batches/ID`."""
    path = f"{_model_path(recipe.model)}:asyncBatchEmbedContent"
    try:
        response = await client.aio._api_client.async_request("post", path, body, None)
    except Exception as exc:
        raise classify(exc) from None
    return _name_of(response.body)


async def create_from_file(client: Any, file_name: str, recipe: Recipe, display_name: str) -> str:
    """Create a job over an uploaded JSONL file; returns the job name `batches/ID`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # create_embeddings is marked experimental
            job = await client.aio.batches.create_embeddings(
                model=recipe.model, src={"file_name": file_name}, config={"display_name": display_name})
    except Exception as exc:
        raise classify(exc) from None
    if not job.name:
        raise BatchJobError(f"creating batch job {display_name!r} returned no job name", job=display_name,
                            state="UNKNOWN")
    return job.name


def _name_of(body: str | bytes | None) -> str:
    try:
        payload = json.loads(body or "")
        name = payload.get("name") or payload["metadata"]["name"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BatchJobError("creating a batch job returned no job name", job=None, state="UNKNOWN") from None
    return str(name)


async def find_job_by_display_name(client: Any, display_name: str, *, since: datetime | None = None) -> str | None:
    """The newest job named `display_name`, listing newest first and stopping before `since`."""
    cutoff = since - LIST_SKEW if since is not None else None
    try:
        pager = await client.aio.batches.list(config={"page_size": 100})
        async for job in pager:
            if job.display_name == display_name:
                return job.name
            if cutoff is not None and job.create_time is not None and job.create_time < cutoff:
                return None
    except Exception as exc:
        raise classify(exc) from None
    return None


async def create_once(
    create: Callable[[], Awaitable[str]],
    find: Callable[[], Awaitable[str | None]],
    *,
    attempts: int = 5,
    base_delay: float = 2.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> str:
    """Create a job at most once: after any transient failure, look it up by name before trying again.

    Raises the create's terminal error (e.g. BadRequestError: no job was made), BatchJobError with
    state NOT_CREATED when attempts ran out (no job found after the last one), or BatchJobError with
    state UNKNOWN when the look-up itself failed.
    """
    last: IndexflowError | None = None
    for attempt in range(1, attempts + 1):
        try:
            return await create()
        except IndexflowError as error:
            if not error.transient:
                raise
            last = error
        # The create may have reached the server before the failure: never pay for it twice.
        try:
            found = await find()
        except IndexflowError as error:
            raise BatchJobError(
                f"a batch job create failed ({last}) and looking it up failed too ({error}); whether it exists "
                "is unknown, so its INTENT stays in the ledger for the next run to resolve",
                job=None, state="UNKNOWN", transient=True) from None
        if found is not None:
            return found
        if attempt < attempts:  # after the last one nothing is left to wait for
            delay = getattr(last, "retry_after", None) if isinstance(last, RateLimitedError) else None
            await sleep(delay if delay is not None else base_delay * 2 ** (attempt - 1))
    raise BatchJobError(
        f"could not create the batch job after {attempts} attempts ({last}); its chunks stay unindexed "
        "and the next run submits them again", job=None, state="NOT_CREATED", transient=True)


def is_payload_too_large(error: BaseException) -> bool:
    """A 400 that says the inline request is over the size limit (upload a file instead)."""
    return isinstance(error, BadRequestError) and "size" in str(error).lower() and "limit" in str(error).lower()
