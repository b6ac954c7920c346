"""Online endpoints: `POST /{v}/models/{model}:batchEmbedContents | :embedContent` (and the
`:asyncBatchEmbedContent` dispatch to the Batch API store).

Order of checks for an embedding call, so each failure consumes nothing it should not:
API key -> model -> body validation -> concurrency cap (503) -> scripted/random error faults
(500, 503, bare 429, hang) -> RPM/TPM/RPD admission (429 with RetryInfo) -> latency ->
embeddings -> response faults (drop, malformed, wrong_count; these calls did consume quota).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .auth import require_api_key
from .embedding import count_tokens, embed_texts
from .google_errors import (
    GoogleError,
    bare_resource_exhausted,
    key_quoted,
    internal,
    invalid_argument,
    json_response,
    model_not_found,
    not_found,
    overloaded,
)

if TYPE_CHECKING:
    from .app import Emulator

router = APIRouter()

API_VERSIONS = ("v1", "v1beta")
MAX_BATCH = 100
MAX_TOKENS = 2048
MIN_DIM, MAX_DIM = 128, 3072
TASK_TYPES = frozenset({
    "TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY",
    "CLASSIFICATION", "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY",
})
ITEM_FIELDS = frozenset({"model", "content", "taskType", "title", "outputDimensionality"})
MAX_LISTED_VIOLATIONS = 10


@dataclass(frozen=True)
class EmbedItem:
    """One text to embed with its settings, validated."""

    text: str
    title: str | None
    task_type: str | None
    dim: int
    tokens: int


@router.post("/{version}/models/{model_method}")
async def model_method(version: str, model_method: str, request: Request) -> Response:
    """Dispatch `models/{model}:{method}` to the online embedder or the Batch API store."""
    emu: Emulator = request.app.state.emulator
    model, sep, method = model_method.rpartition(":")
    if version not in API_VERSIONS or not sep:
        raise not_found(f"The requested URL /{version}/models/{model_method} was not found on this server.")
    require_api_key(request)
    if method not in ("batchEmbedContents", "embedContent", "asyncBatchEmbedContent"):
        raise not_found(f"Method {method} is not supported by the emulator (models/{model}).")
    if model not in emu.config.models:
        raise model_not_found(model, version, method)
    body = await read_json(request)
    if method == "asyncBatchEmbedContent":
        return await create_batch(emu, request, version, model, body)
    if method == "batchEmbedContents":
        items = parse_batch(body, model, max_tokens=emu.config.max_input_tokens)
        return await serve_embeddings(emu, request, items, single=False)
    items = [parse_item(body, model, "EmbedContentRequest", "", None, max_tokens=emu.config.max_input_tokens)]
    return await serve_embeddings(emu, request, items, single=True)


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or Google's 400 for anything else."""
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from None
    if not isinstance(body, dict):
        raise invalid_argument("Invalid JSON payload received. Expected an object at the top level.")
    return body


def parse_batch(body: dict[str, Any], model: str, *, max_tokens: int = MAX_TOKENS) -> list[EmbedItem]:
    """Validate a BatchEmbedContentsRequest; every offending item is named in one 400."""
    unknown = sorted(set(body) - {"requests"})
    if unknown:
        raise invalid_argument(f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.')
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise invalid_argument("* BatchEmbedContentsRequest.requests: at least one request is required\n")
    if len(requests) > MAX_BATCH:
        raise invalid_argument(
            f"* BatchEmbedContentsRequest.requests: at most {MAX_BATCH} requests can be in one batch\n"
        )
    violations: list[tuple[str, str]] = []
    items = []
    for i, request in enumerate(requests):
        items.append(parse_item(request, model, "BatchEmbedContentsRequest", f"requests[{i}].", violations,
                                max_tokens=max_tokens))
    if violations:
        raise _invalid(violations, "BatchEmbedContentsRequest")
    return items


def parse_item(
    raw: Any, model: str, message: str, prefix: str, violations: list[tuple[str, str]] | None,
    *, max_tokens: int = MAX_TOKENS,
) -> EmbedItem:
    """Validate one EmbedContentRequest; adds to `violations`, or raises at once when it is None."""
    found: list[tuple[str, str]] = []
    item = _parse_item(raw, model, prefix, found, max_tokens)
    if found and violations is None:
        raise _invalid(found, message)
    if violations is not None:
        violations.extend(found)
    return item


def _parse_item(raw: Any, model: str, prefix: str, found: list[tuple[str, str]], max_tokens: int) -> EmbedItem:
    if not isinstance(raw, dict):
        found.append((prefix.rstrip(".") or "request", "must be an object"))
        return EmbedItem("", None, None, MAX_DIM, 0)
    for name in sorted(set(raw) - ITEM_FIELDS):
        found.append((f"{prefix}{name}", "unknown field"))
    item_model = raw.get("model")
    if item_model is not None and item_model not in (model, f"models/{model}"):
        found.append((f"{prefix}model", f"{item_model!r} differs from the model in the URL (models/{model})"))
    text = _content_text(raw.get("content"), f"{prefix}content", found)
    task_type = raw.get("taskType")
    if task_type is not None and task_type not in TASK_TYPES:
        found.append((f"{prefix}task_type", f"invalid value {task_type!r}"))
    title = raw.get("title")
    if title is not None and not isinstance(title, str):
        found.append((f"{prefix}title", "must be a string"))
        title = None
    dim = raw.get("outputDimensionality", MAX_DIM)
    if isinstance(dim, bool) or not isinstance(dim, int) or not MIN_DIM <= dim <= MAX_DIM:
        found.append((f"{prefix}output_dimensionality", f"must be an integer within {MIN_DIM}..{MAX_DIM}, got {dim!r}"))
        dim = MAX_DIM
    tokens = count_tokens(text) if text else 0
    if tokens > max_tokens:
        found.append((f"{prefix}content", f"text has {tokens} tokens (estimated as ceil(characters / 4)); "
                                          f"the limit is {max_tokens} tokens per text"))
    return EmbedItem(text, title, task_type, dim, tokens)


def _content_text(content: Any, field: str, found: list[tuple[str, str]]) -> str:
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list) or not content["parts"]:
        found.append((field, "content with at least one text part is required"))
        return ""
    texts = []
    for j, part in enumerate(content["parts"]):
        if not isinstance(part, dict) or not isinstance(part.get("text"), str):
            found.append((f"{field}.parts[{j}]", "only text parts are supported by gemini-embedding-001"))
            continue
        texts.append(part["text"])
    text = "\n".join(texts)
    if texts and not text:
        found.append((field, "text is empty"))
    return text


def _invalid(violations: list[tuple[str, str]], message: str) -> GoogleError:
    shown = violations[:MAX_LISTED_VIOLATIONS]
    lines = "".join(f"* {message}.{field}: {why}\n" for field, why in shown)
    if len(violations) > len(shown):
        lines += f"* ... and {len(violations) - len(shown)} more\n"
    error = invalid_argument(lines)
    error.details = [{
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": field, "description": why} for field, why in violations],
    }]
    return error


async def serve_embeddings(emu: Emulator, request: Request, items: list[EmbedItem], single: bool) -> Response:
    """Admit, delay, embed and answer one online call, applying the injected fault if any."""
    emu.concurrency.enter()
    emu.stats.add("calls.received")  # on arrival, before any fault or latency: when a client first called
    try:
        fault = emu.faults.next_fault()
        if fault is not None:
            emu.stats.add(f"faults.{fault}")
        if fault in ("500", "503", "429"):
            return {"500": internal, "503": overloaded, "429": bare_resource_exhausted}[fault]().response()
        if fault == "hang":
            return await _hang(request, emu.config.hang_seconds)
        if fault == "quote_key":
            return key_quoted(request.headers.get("x-goog-api-key") or request.query_params.get("key") or "").response()
        tokens = sum(item.tokens for item in items)
        emu.limits.admit(len(items), tokens)
        await asyncio.sleep(emu.latency_seconds(len(items)))
        vectors = embed_items(items)
        emu.stats.add("calls")
        emu.stats.add("texts", len(items))
        emu.stats.add("tokens.online", tokens)
    finally:
        emu.concurrency.leave()
    if fault == "drop":
        return DroppedResponse()
    if fault == "malformed":
        return Response(b'{"embeddings": [{"values": [0.0123, -0.04', media_type="application/json")
    if fault == "wrong_count":
        vectors = vectors[:-1]
    if single:
        answer = json_response({"embedding": {"values": vectors[0]}} if vectors else {})
    else:
        answer = json_response({"embeddings": [{"values": v} for v in vectors]})
    if fault == "drip":
        return DrippedResponse(answer.body, emu.config.drip_seconds)
    return answer


async def create_batch(emu: Emulator, request: Request, version: str, model: str, body: dict) -> Response:
    """Create a Batch API job, applying a fault scripted for target "batch_create" if any."""
    fault = emu.faults.next_fault("batch_create")
    if fault is not None:
        emu.stats.add(f"faults.batch_create.{fault}")
    if fault in ("500", "503", "429"):
        return {"500": internal, "503": overloaded, "429": bare_resource_exhausted}[fault]().response()
    operation = await emu.batches.create(version, model, body)
    if fault == "drop":
        return DroppedResponse()  # the job exists; its name never reaches the client
    if fault == "hang":
        return await _hang(request, emu.config.hang_seconds)
    if fault == "malformed":
        return Response(b'{"name": "batches/', media_type="application/json")
    return json_response(operation)


def embed_items(items: list[EmbedItem]) -> list[np.ndarray]:
    """Vectors for `items` in order; items sharing (dimensionality, task type) are embedded together."""
    groups: dict[tuple[int, str | None], list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[(item.dim, item.task_type)].append(index)
    vectors: list[np.ndarray] = [np.empty(0, np.float32)] * len(items)
    for (dim, task_type), indices in groups.items():
        matrix = embed_texts(
            [items[i].text for i in indices], dim, task_type, [items[i].title for i in indices]
        )
        for row, index in enumerate(indices):
            vectors[index] = matrix[row]
    return vectors


async def _hang(request: Request, seconds: float) -> Response:
    """Answer nothing until the client disconnects; after `seconds`, a 504 like Google's deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if await request.is_disconnected():
            return Response(status_code=499)  # nobody is listening any more
        await asyncio.sleep(0.05)
    return GoogleError(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete.").response()


class DrippedResponse(Response):
    """The whole answer, sent in DRIP_PIECES pieces spread over `seconds`."""

    DRIP_PIECES = 25

    def __init__(self, body: bytes, seconds: float) -> None:
        super().__init__(status_code=200)
        self.payload, self.seconds = body, seconds

    async def __call__(self, scope, receive, send) -> None:
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(self.payload)).encode())],
        })
        step = -(-len(self.payload) // self.DRIP_PIECES)
        gone = asyncio.ensure_future(receive())  # the request is read: what comes next is the disconnect
        try:
            for start in range(0, len(self.payload), step):
                last = start + step >= len(self.payload)
                await send({"type": "http.response.body", "body": self.payload[start:start + step],
                            "more_body": not last})
                if not last:
                    await asyncio.wait({gone}, timeout=self.seconds / self.DRIP_PIECES)
                    if gone.done():
                        return  # the client gave up: stop dripping to nobody
        finally:
            gone.cancel()


class DroppedResponse(Response):
    """Sends headers and a fragment of the body, then returns: uvicorn closes the connection."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope, receive, send) -> None:
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"65536")],
        })
        await send({"type": "http.response.body", "body": b'{"embeddings": [{"values": [', "more_body": True})
