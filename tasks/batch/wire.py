"""The Batch API's wire formats as pure functions: job bodies, JSONL lines, job status, results.

No I/O here: `tasks.gemini.batches` sends and reads, this module builds and parses, so every
shape is testable without a server. Inline results come back by position, file results as JSONL
lines keyed by chunk id in any order; both are paired with the chunks the ledger recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import BadRequestError, BatchJobError
from indexflow.tasks.gemini.embed import TITLE_TASK_TYPES
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.redact import redact

# Per-item error codes: 3 INVALID_ARGUMENT says the request itself is bad (retrying cannot help).
TERMINAL_ITEM_CODES = frozenset({3})


# -- requests ------------------------------------------------------------------------------------


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


def inline_body(chunks: Sequence[Chunk], recipe: Recipe, display_name: str, *, priority: int = 0) -> dict[str, Any]:
    """The `asyncBatchEmbedContent` JSON body of an inline job (results come back by position)."""
    return job_body(display_name, {"requests": {"requests": [{"request": item_request(c, recipe)} for c in chunks]}},
                    priority=priority)


def file_body(file_name: str, display_name: str, *, priority: int = 0) -> dict[str, Any]:
    """The `asyncBatchEmbedContent` JSON body of a job over an uploaded JSONL file."""
    return job_body(display_name, {"fileName": file_name}, priority=priority)


def job_body(display_name: str, input_config: dict[str, Any], *, priority: int = 0) -> dict[str, Any]:
    """A batch resource; `priority` (higher runs first) is an int64 string, sent only when not the default 0."""
    batch: dict[str, Any] = {"displayName": display_name, "inputConfig": input_config}
    if priority:
        batch["priority"] = str(priority)
    return {"batch": batch}


def body_size(body: dict[str, Any]) -> int:
    """Bytes of `body` as JSON on the wire (what the 20 MB inline limit counts)."""
    return len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


def jsonl_input(chunks: Sequence[Chunk], recipe: Recipe) -> bytes:
    """The JSONL input file of a file job: one `{"key": chunk id, "request": ...}` line per chunk."""
    return b"".join(
        json.dumps({"key": c.id, "request": item_request(c, recipe)}, ensure_ascii=False,
                   separators=(",", ":")).encode() + b"\n"
        for c in chunks)


def is_payload_too_large(error: BaseException) -> bool:
    """A 400 that says the inline request is over the size limit (upload a file instead)."""
    return isinstance(error, BadRequestError) and "size" in str(error).lower() and "limit" in str(error).lower()


# -- status --------------------------------------------------------------------------------------


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
    priority: int = 0
    payload: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def settled(self) -> int:
        return self.succeeded + self.failed

    @property
    def success_rate(self) -> float | None:
        """succeeded / (succeeded + failed) from `batchStats`; None while nothing has settled."""
        return self.succeeded / self.settled if self.settled else None


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
        priority=_int(meta.get("priority")),
        payload=payload,
    )


def _int(value: object) -> int:
    try:
        return int(value or 0)  # int64 fields arrive as strings; zeros are omitted
    except (TypeError, ValueError):
        return 0


# -- results -------------------------------------------------------------------------------------


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


def inline_results(pairs: Sequence[tuple[Any, Any]] | None, chunks: Sequence[Chunk], dim: int,
                   job: str | None = None) -> JobResults:
    """Results of inline job `job`, by position: `pairs` is (values, error) per request, in order."""
    if pairs is None or len(pairs) != len(chunks):
        got = None if pairs is None else len(pairs)
        raise BatchJobError(
            f"batch job {job or '?'} returned {got} inline results for {len(chunks)} requests; "
            "results are matched by position, so none can be trusted", job=job,
            state="SUCCEEDED", expected=len(chunks), got=got)
    return _collect([(chunk, values, error) for chunk, (values, error) in zip(chunks, pairs)], dim)


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
