"""Batch API reading: job status with `batchStats`, polling intervals, and results paired with chunks.

The SDK drops `batchStats`, so status is read as raw JSON through the SDK's API client
(`GET {base}/{version}/batches/ID`, same key header and base URL). The finished job is then
turned into the SDK's `BatchJob` by the SDK's own converter, so both shapes it produces for
inline results are handled: `dest.inlined_embed_content_responses`, and `dest.inlined_responses`
when every item failed. File results are JSONL lines matched by key (their order is arbitrary).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import BatchJobError
from indexflow.tasks.gemini import classify
from indexflow.tasks.redact import redact

# Per-item error codes: 3 INVALID_ARGUMENT says the request itself is bad (retrying cannot help).
TERMINAL_ITEM_CODES = frozenset({3})


@dataclass(frozen=True)
class JobStatus:
    """One look at a job: its state (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED) and counts."""

    name: str
    state: str
    done: bool
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    error: str | None = None
    output_file: str | None = None
    display_name: str | None = None
    payload: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def settled(self) -> int:
        return self.succeeded + self.failed


def _state(value: object) -> str:
    text = str(value or "UNSPECIFIED")
    for prefix in ("BATCH_STATE_", "JOB_STATE_"):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def parse_status(payload: dict[str, Any]) -> JobStatus:
    """A JobStatus from the operation JSON of `batches.get` (counts are int64 strings; zeros omitted)."""
    meta = payload.get("metadata") or {}
    stats = meta.get("batchStats") or {}
    count = lambda k: int(stats.get(k) or 0)  # noqa: E731
    error = payload.get("error")
    output = meta.get("output") or {}
    return JobStatus(
        name=str(payload.get("name") or meta.get("name") or ""),
        state=_state(meta.get("state")),
        done=bool(payload.get("done")),
        requests=count("requestCount"),
        succeeded=count("successfulRequestCount"),
        failed=count("failedRequestCount"),
        pending=count("pendingRequestCount"),
        error=(redact(f"{error.get('code')}: {error.get('message')}") if isinstance(error, dict) else None),
        output_file=output.get("responsesFile"),
        display_name=meta.get("displayName"),
        payload=payload,
    )


async def get_status(client: Any, name: str) -> JobStatus:
    """GET the job's operation JSON through the SDK's API client (keeps `batchStats`)."""
    try:
        response = await client.aio._api_client.async_request("get", name, {}, None)
        payload = json.loads(response.body or "{}")
    except Exception as exc:
        raise classify(exc) from None
    return parse_status(payload)


def sdk_job(payload: dict[str, Any]) -> Any:
    """The SDK's `BatchJob` for an operation JSON, built by the SDK's own converter (no second GET)."""
    from google.genai import types
    from google.genai.batches import _BatchJob_from_mldev

    return types.BatchJob._from_response(response=_BatchJob_from_mldev(payload), kwargs={})


def poll_interval(items: int, idle_polls: int, configured: float | None = None) -> float:
    """Seconds to the next look: grows with job size (the seed's table) and backs off while idle."""
    if configured is not None:
        base, cap = configured, configured * 4
    elif items < 100:
        base, cap = 2.0, 5.0
    elif items < 1_000:
        base, cap = 5.0, 10.0
    elif items < 10_000:
        base, cap = 10.0, 30.0
    else:
        base, cap = 30.0, 60.0
    return min(cap, base * 1.5 ** idle_polls)


@dataclass(frozen=True)
class ItemError:
    """A chunk the job did not embed: the per-item error code (None: missing or unusable) and message."""

    chunk: Chunk
    code: int | None
    message: str

    @property
    def terminal(self) -> bool:
        return self.code in TERMINAL_ITEM_CODES


@dataclass
class JobResults:
    """Chunks with their raw vectors (row i belongs to chunks[i]) and the items that failed."""

    chunks: list[Chunk]
    vectors: np.ndarray
    errors: list[ItemError]


def _collect(pairs: list[tuple[Chunk, Any, Any]], dim: int) -> JobResults:
    """Pair (chunk, values or None, error dict/object or None) into JobResults, guarding dimensions."""
    ok: list[Chunk] = []
    rows: list[Any] = []
    errors: list[ItemError] = []
    for chunk, values, error in pairs:
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else getattr(error, "code", None)
            message = error.get("message") if isinstance(error, dict) else getattr(error, "message", None)
            errors.append(ItemError(chunk, int(code) if code is not None else None, redact(str(message or "error"))))
        elif not isinstance(values, list) or len(values) != dim:
            got = len(values) if isinstance(values, list) else None
            errors.append(ItemError(chunk, None, f"no usable {dim}-dimensional embedding in the result (got {got})"))
        else:
            ok.append(chunk)
            rows.append(values)
    vectors = np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)
    return JobResults(ok, vectors, errors)


def inline_results(job: Any, chunks: Sequence[Chunk], dim: int) -> JobResults:
    """Results of an inline job, by position, from either SDK shape of `job.dest`."""
    dest = getattr(job, "dest", None)
    responses = getattr(dest, "inlined_embed_content_responses", None)
    if responses is None:
        responses = getattr(dest, "inlined_responses", None)  # the SDK's shape when every item failed
    if responses is None or len(responses) != len(chunks):
        got = None if responses is None else len(responses)
        raise BatchJobError(
            f"batch job {getattr(job, 'name', '?')} returned {got} inline results for {len(chunks)} requests; "
            "results are matched by position, so none can be trusted", job=getattr(job, "name", None),
            state="SUCCEEDED", expected=len(chunks), got=got)
    pairs = []
    for chunk, result in zip(chunks, responses):
        response = getattr(result, "response", None)
        embedding = getattr(response, "embedding", None)
        values = getattr(embedding, "values", None)
        error = getattr(result, "error", None)
        if error is None and values is None:
            error = {"code": None, "message": "the result has neither an embedding nor an error"}
        pairs.append((chunk, values, error))
    return _collect(pairs, dim)


def file_results(data: bytes, chunks: Sequence[Chunk], dim: int) -> JobResults:
    """Results of a file job: JSONL lines matched to chunks by key, in any order."""
    by_key: dict[str, dict] = {}
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # an unparsable line cannot be matched; its chunk is reported missing below
        if isinstance(line, dict) and isinstance(line.get("key"), str):
            by_key[line["key"]] = line
    pairs = []
    for chunk in chunks:
        line = by_key.get(chunk.id)
        if line is None:
            pairs.append((chunk, None, {"code": None, "message": "no line with this key in the output file"}))
            continue
        values = ((line.get("response") or {}).get("embedding") or {}).get("values")
        pairs.append((chunk, values, line.get("error")))
    return _collect(pairs, dim)
