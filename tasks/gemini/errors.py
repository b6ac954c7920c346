"""SDK, transport and parsing failures mapped to the project's error tree, and the per-call deadline."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

from google.genai import errors as genai_errors

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
from indexflow.tasks.redact import redact

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

T = TypeVar("T")


async def guarded(call: Awaitable[T], *, deadline_seconds: float | None, what: str) -> T:
    """Await one API call; past `deadline_seconds` it is abandoned as transient, and every failure is ours."""
    deadline = asyncio.timeout(deadline_seconds)
    try:
        async with deadline:
            return await call
    except Exception as exc:  # every failure leaves as one of ours
        if deadline.expired():
            raise TransientAPIError(
                f"the {what} did not finish within its {deadline_seconds:g} s deadline (call_deadline_seconds)",
                status=None, reason="deadline", deadline_seconds=deadline_seconds,
            ) from None
        raise classify(exc) from None


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
