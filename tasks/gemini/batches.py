"""Batch API calls: create a job from a REST body, read one, find one by display name, cancel one.

Jobs are created with the REST body (`asyncBatchEmbedContent`) sent through the SDK's API client
rather than `batches.create_embeddings`: the SDK's config can carry neither a title per item nor
the job's `priority`. Jobs are read as raw JSON for the same reason the SDK's `BatchJob` exists
without `batchStats`. Every function returns plain data (names, dicts, lists).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from indexflow.tasks.errors import BatchJobError
from indexflow.tasks.gemini.client import model_path
from indexflow.tasks.gemini.errors import guarded
from indexflow.tasks.gemini.sdk_hooks import batch_job_from_operation, raw_request
from indexflow.tasks.settings import DEFAULT_CALL_DEADLINE_SECONDS as DEADLINE

# Jobs listed newer than this before an intent's time still count as candidates (clock skew).
LIST_SKEW = timedelta(minutes=10)


async def create_job(client: Any, model: str, body: dict[str, Any], *, deadline_seconds: float | None = DEADLINE) -> str:
    """POST a job body (`{"batch": {...}}`); returns the job name `batches/ID`."""
    path = f"{model_path(model)}:asyncBatchEmbedContent"
    answer = await guarded(raw_request(client, "post", path, body), deadline_seconds=deadline_seconds,
                           what="batch job create")
    return operation_name(answer)


def operation_name(body: str | bytes | None) -> str:
    """The job name in a create's answer (top level or in its metadata); BatchJobError (UNKNOWN) without one."""
    try:
        payload = json.loads(body or "")
        name = payload.get("name") or payload["metadata"]["name"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BatchJobError("creating a batch job returned no job name", job=None, state="UNKNOWN") from None
    return str(name)


async def get_job(client: Any, name: str, *, deadline_seconds: float | None = DEADLINE) -> dict[str, Any]:
    """The job's operation JSON (`GET batches/ID`), `batchStats` included."""

    async def read() -> dict[str, Any]:
        return json.loads(await raw_request(client, "get", name, {}) or "{}")

    return await guarded(read(), deadline_seconds=deadline_seconds, what="batch job read")


async def find_job_by_display_name(client: Any, display_name: str, *, since: datetime | None = None,
                                   deadline_seconds: float | None = DEADLINE) -> str | None:
    """The newest job named `display_name`, listing newest first and stopping before `since`."""
    cutoff = since - LIST_SKEW if since is not None else None

    async def scan() -> str | None:
        pager = await client.aio.batches.list(config={"page_size": 100})
        async for job in pager:
            if job.display_name == display_name:
                return job.name
            if cutoff is not None and job.create_time is not None and job.create_time < cutoff:
                return None
        return None

    return await guarded(scan(), deadline_seconds=deadline_seconds, what="batch job listing")


async def cancel_job(client: Any, name: str, *, deadline_seconds: float | None = DEADLINE) -> bool:
    """Ask the server to cancel job `name`; False when it had already finished (a 400)."""
    from google.genai import errors as genai_errors

    async def cancel() -> bool:
        try:
            await client.aio.batches.cancel(name=name)
        except genai_errors.ClientError as exc:
            if exc.code == 400:
                return False
            raise
        return True

    return await guarded(cancel(), deadline_seconds=deadline_seconds, what="batch job cancel")


def inline_responses(payload: dict[str, Any]) -> list[tuple[list[float] | None, dict[str, Any] | None]] | None:
    """(values, error) per inline result of a finished job's JSON, in request order; None without any.

    Read through the SDK's converter, so both of its shapes count: `inlined_embed_content_responses`,
    and `inlined_responses` when every item failed.
    """
    job = batch_job_from_operation(payload)
    dest = getattr(job, "dest", None)
    responses: Sequence[Any] | None = getattr(dest, "inlined_embed_content_responses", None)
    if responses is None:
        responses = getattr(dest, "inlined_responses", None)
    if responses is None:
        return None
    pairs = []
    for result in responses:
        embedding = getattr(getattr(result, "response", None), "embedding", None)
        values = getattr(embedding, "values", None)
        error = getattr(result, "error", None)
        if error is not None and not isinstance(error, dict):
            error = {"code": getattr(error, "code", None), "message": getattr(error, "message", None)}
        if error is None and values is None:
            error = {"code": None, "message": "the result has neither an embedding nor an error"}
        pairs.append((list(values) if values is not None else None, error))
    return pairs
