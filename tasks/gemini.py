"""The one module that talks to google-genai: build the client, embed a batch, classify failures.

Titles per item: `embed_content` copies ONE config (task type, title, dimensionality) into every
item of a call, so a batch of chunks from many documents could carry only one title. Instead of
splitting batches at every title change (one call per small document) or gluing the title into
the text (a different vector than Gemini's titled one), `embed_batch` sends the REST API's own
`batchEmbedContents` body with a title on each item, through the SDK's API client
(`client.aio._api_client.async_request`). That is the same code path `embed_content` uses —
same base URL, headers, key handling, timeout and `errors.APIError` raising — minus the
pydantic round trip on the response, which is also the slowest part of `embed_content` for
100 x 768 floats.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from indexflow.tasks.errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    ConfigError,
    DailyQuotaError,
    EmbedError,
    IndexflowError,
    RateLimitedError,
    TransientAPIError,
)
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.redact import redact, remember
from indexflow.tasks.settings import DEFAULT_CALL_DEADLINE_SECONDS, Endpoint

try:  # the SDK's default async transport here
    import httpx2 as _httpx2
except ImportError:  # pragma: no cover - google-genai 3.x depends on it
    _httpx2 = None
try:  # used instead when GOOGLE_GENAI_HTTP_CLIENT=httpx
    import httpx as _httpx
except ImportError:  # pragma: no cover
    _httpx = None

try:  # the SDK's async transport instead whenever aiohttp is importable (LangChain and LlamaIndex pull it in)
    import aiohttp as _aiohttp
except ImportError:
    _aiohttp = None

# aiohttp reports its ClientTimeout as the builtin TimeoutError (asyncio.TimeoutError since 3.11).
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = tuple(
    cls for mod in (_httpx2, _httpx) if mod is not None for cls in (mod.TimeoutException,)
) + (TimeoutError,)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = tuple(
    cls for mod in (_httpx2, _httpx) if mod is not None for cls in (mod.ConnectError,)
) + ((_aiohttp.ClientConnectorError,) if _aiohttp is not None else ())
_REQUEST_ERRORS: tuple[type[BaseException], ...] = tuple(
    cls for mod in (_httpx2, _httpx) if mod is not None for cls in (mod.RequestError,)
) + ((_aiohttp.ClientConnectionError, _aiohttp.ClientPayloadError) if _aiohttp is not None else ())

if TYPE_CHECKING:  # numpy loads with the first answer: the first call need not wait for it
    import numpy as np

TITLE_TASK_TYPES = frozenset({"RETRIEVAL_DOCUMENT"})

def make_client(endpoint: Endpoint) -> genai.Client:
    """A google-genai client for `endpoint`, with SDK retries off (the project owns retries)."""
    remember(endpoint.api_key.get_secret_value())
    options = genai_types.HttpOptions(
        base_url=endpoint.base_url,
        api_version=endpoint.api_version,
        timeout=int(endpoint.timeout_seconds * 1000),
        retry_options=None,
    )
    return genai.Client(api_key=endpoint.api_key.get_secret_value(), http_options=options)


def _model_path(model: str) -> str:
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


def batch_request_body(
    texts: Sequence[str],
    *,
    recipe: Recipe,
    titles: Sequence[str | None] | None = None,
    task_type: str | None = None,
) -> dict[str, Any]:
    """The `batchEmbedContents` JSON body, one request per text, each with its own title."""
    task = task_type or recipe.task_type
    send_titles = titles is not None and recipe.send_title and task in TITLE_TASK_TYPES
    if titles is not None and len(titles) != len(texts):
        raise ValueError(f"{len(titles)} titles for {len(texts)} texts")
    model = _model_path(recipe.model)
    requests = []
    for i, text in enumerate(texts):
        item: dict[str, Any] = {
            "model": model,
            "content": {"parts": [{"text": text}], "role": "user"},
            "taskType": task,
            "outputDimensionality": recipe.dimensions,
        }
        if send_titles and titles[i]:
            item["title"] = titles[i]
        requests.append(item)
    return {"requests": requests}


async def embed_batch(
    client: genai.Client,
    texts: Sequence[str],
    *,
    recipe: Recipe,
    titles: Sequence[str | None] | None = None,
    task_type: str | None = None,
    deadline_seconds: float | None = DEFAULT_CALL_DEADLINE_SECONDS,
) -> np.ndarray:
    """Raw float32 vectors (len(texts), recipe.dimensions) for one call; raises only IndexflowError.

    `titles` holds one title per text (None or "" for none); they are sent only for
    RETRIEVAL_DOCUMENT and when the recipe says so. Past `deadline_seconds` (connect and the
    whole answer) the call is abandoned as a timeout.
    """
    body = batch_request_body(texts, recipe=recipe, titles=titles, task_type=task_type)
    path = f"{_model_path(recipe.model)}:batchEmbedContents"
    deadline = asyncio.timeout(deadline_seconds)
    try:
        async with deadline:
            response = await client.aio._api_client.async_request("post", path, body, None)
    except Exception as exc:  # every failure leaves as one of ours
        if deadline.expired():
            raise TransientAPIError(
                f"the embedding call did not finish within its {deadline_seconds:g} s deadline "
                "(call_deadline_seconds)", status=None, reason="deadline", deadline_seconds=deadline_seconds,
            ) from None
        raise classify(exc) from None
    return parse_embeddings(response.body, expected=len(texts), dim=recipe.dimensions)


def parse_embeddings(body: str | bytes | None, *, expected: int, dim: int) -> np.ndarray:
    """Turn a `batchEmbedContents` response body into (expected, dim) float32, or BadResponseError."""
    try:
        # orjson: decoding 100 x 768 floats is the client's largest cost per call (5x stdlib json)
        payload = orjson.loads(body or b"")
        rows = [item["values"] for item in payload["embeddings"]]
    except (orjson.JSONDecodeError, ValueError, KeyError, TypeError) as exc:
        raise BadResponseError(
            f"the embedding response is not valid batchEmbedContents JSON ({type(exc).__name__})",
            status=200,
            reason="malformed",
        ) from None
    if len(rows) != expected:
        raise BadResponseError(
            f"asked for {expected} embeddings, got {len(rows)}",
            status=200,
            reason="wrong_count",
            expected=expected,
            got=len(rows),
        )
    import numpy as np

    try:
        vectors = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError):
        vectors = None
    if vectors is None or vectors.ndim != 2 or vectors.shape[1] != dim:
        lengths = sorted({len(r) if isinstance(r, list) else -1 for r in rows})
        raise BadResponseError(
            f"expected {dim}-dimensional embeddings, got lengths {lengths}",
            status=200,
            reason="wrong_dimensions",
            expected=dim,
            got=lengths,
        )
    return vectors.reshape(expected, dim)


async def embed_query(client: genai.Client, text: str, recipe: Recipe) -> np.ndarray:
    """The raw RETRIEVAL_QUERY vector (dim,) for `text`; the caller normalizes."""
    return (await embed_batch(client, [text], recipe=recipe, task_type="RETRIEVAL_QUERY"))[0]


def parse_duration(value: object) -> float | None:
    """Seconds from a protobuf Duration: "38s", "1.5s", or {"seconds": 38, "nanos": 0}."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)s\s*", value)
        return float(match.group(1)) if match else None
    if isinstance(value, dict):
        try:
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            return None
    return None


def _error_body(exc: genai_errors.APIError) -> dict[str, Any]:
    # `details` is the WHOLE parsed body ({"error": {...}}), or a stand-in for a non-JSON body.
    body = exc.details if isinstance(exc.details, dict) else {}
    inner = body.get("error", body)
    return inner if isinstance(inner, dict) else {}


def _quota_facts(error: dict[str, Any]) -> tuple[list[str], float | None]:
    quota_ids: list[str] = []
    retry_after = None
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("QuotaFailure"):
            for violation in detail.get("violations") or []:
                if isinstance(violation, dict) and violation.get("quotaId"):
                    quota_ids.append(str(violation["quotaId"]))
        elif kind.endswith("RetryInfo"):
            retry_after = parse_duration(detail.get("retryDelay"))
    return quota_ids, retry_after


_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})


def _reason(error: dict[str, Any]) -> str | None:
    # Google answers a wrong key with 400 INVALID_ARGUMENT + ErrorInfo(reason=API_KEY_INVALID), not 401.
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("ErrorInfo"):
            return str(detail.get("reason"))
    return None


def _header_retry_after(exc: genai_errors.APIError) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def classify(exc: BaseException) -> IndexflowError:
    """Map an SDK, transport or parsing failure to the project's error tree (never leaking the key)."""
    if isinstance(exc, IndexflowError):
        return exc
    if isinstance(exc, genai_errors.APIError):
        return _classify_api_error(exc)
    if isinstance(exc, _TIMEOUT_ERRORS):
        return TransientAPIError(
            f"the embedding call timed out ({type(exc).__name__})",
            status=None,
            reason="timeout",
        )
    if isinstance(exc, _CONNECT_ERRORS):
        # No connection at all (refused, no route, unknown host): the endpoint may be misconfigured.
        return TransientAPIError(
            f"cannot connect to the embedding endpoint ({type(exc).__name__}: {redact(str(exc))[:200]})",
            status=None,
            reason="connect",
        )
    if isinstance(exc, _REQUEST_ERRORS):
        return TransientAPIError(
            f"the connection to the embedding endpoint failed ({type(exc).__name__}: "
            f"{redact(str(exc))[:200]})",
            status=None,
            reason="connection",
        )
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return BadResponseError(
            f"the embedding endpoint answered with a body that is not JSON ({type(exc).__name__})",
            status=None,
            reason="malformed",
        )
    return EmbedError(
        f"unexpected {type(exc).__name__} from the embedding call: {redact(str(exc))[:300]}",
        status=None,
        reason="unexpected",
    )


def _classify_api_error(exc: genai_errors.APIError) -> IndexflowError:
    code = int(exc.code or 0)
    error = _error_body(exc)
    message = redact(str(error.get("message") or exc.message or exc.status or "no message"))[:500]
    status = str(error.get("status") or exc.status or "")
    if code == 429:
        quota_ids, retry_after = _quota_facts(error)
        day = next((q for q in quota_ids if "perday" in q.lower()), None)
        if day is not None:
            return DailyQuotaError(
                f"the daily quota {day} is spent (429 {status}); the run stops and resumes when "
                "re-run after the quota resets (midnight Pacific for Google)",
                status=429,
                quota_id=day,
            )
        if retry_after is None:
            retry_after = _header_retry_after(exc)
        return RateLimitedError(
            f"rate limited (429 {status}{', ' + quota_ids[0] if quota_ids else ''}); "
            f"retry after {retry_after if retry_after is not None else 'an unspecified delay'} s",
            status=429,
            retry_after=retry_after,
            quota_id=quota_ids[0] if quota_ids else None,
        )
    if code in (401, 403) or _reason(error) in _KEY_REASONS:
        return AuthError(
            f"the embedding endpoint refused the API key ({code} {status}: {message}); "
            "check GEMINI_API_KEY or the endpoint's key",
            status=code,
        )
    if code == 404:
        return ConfigError(
            f"the embedding endpoint has no such model or path ({code} {status}: {message}); "
            "check the model name and the base URL",
            status=code,
        )
    if code in (408, 499) or code >= 500:
        return TransientAPIError(
            f"the embedding endpoint failed ({code} {status}: {message})",
            status=code,
            reason=status or str(code),
        )
    return BadRequestError(
        f"the embedding endpoint rejected the batch ({code} {status}: {message})",
        status=code,
        reason=message,
    )
