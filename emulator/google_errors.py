"""Google API errors as the emulator sends them: google.rpc.Status JSON bodies.

Every error body is `{"error": {"code": <http status>, "message": ..., "status": <canonical
code name>, "details": [...]?}}`, the shape generativelanguage.googleapis.com returns and the
google-genai SDK parses into `APIError(code, status, message, details=<whole body>)`.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from fastapi.responses import Response

TYPE_PREFIX = "type.googleapis.com/google.rpc."
API_SERVICE = "generativelanguage.googleapis.com"

MISSING_KEY_MESSAGE = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
INVALID_KEY_MESSAGE = "API key not valid. Please pass a valid API key."
INTERNAL_MESSAGE = "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
OVERLOADED_MESSAGE = "The model is overloaded. Please try again later."
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. "
    "For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)


class GoogleError(Exception):
    """An error the emulator answers with; `code` is the HTTP status, `status` the canonical name."""

    def __init__(self, code: int, status: str, message: str, details: list[dict] | None = None) -> None:
        super().__init__(f"{code} {status}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.status, self.message, self.details)

    def response(self) -> Response:
        return json_response(self.body(), status_code=self.code)


def error_body(code: int, status: str, message: str, details: list[dict] | None = None) -> dict[str, Any]:
    """The google.rpc.Status body `{"error": {...}}`; `details` is left out when there are none."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialized with orjson (embedding responses are large)."""
    return Response(
        content=orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type="application/json; charset=UTF-8",
        headers=headers,
    )


def format_duration(seconds: float) -> str:
    """google.protobuf.Duration JSON: whole seconds as "38s", otherwise up to ms as "38.123s"."""
    # Round up: a client that waits the stated delay must find the capacity free.
    millis = max(0, math.ceil(seconds * 1000 - 1e-9))
    whole, frac = divmod(millis, 1000)
    return f"{whole}s" if frac == 0 else f"{whole}.{frac:03d}".rstrip("0") + "s"


# Constructors for the errors the emulator answers with, so wording lives in one place.


def invalid_argument(message: str) -> GoogleError:
    return GoogleError(400, "INVALID_ARGUMENT", message)


def missing_key() -> GoogleError:
    return GoogleError(403, "PERMISSION_DENIED", MISSING_KEY_MESSAGE)


def invalid_key() -> GoogleError:
    return GoogleError(
        400,
        "INVALID_ARGUMENT",
        INVALID_KEY_MESSAGE,
        [
            {
                "@type": TYPE_PREFIX + "ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": API_SERVICE},
            },
            {"@type": TYPE_PREFIX + "LocalizedMessage", "locale": "en-US", "message": INVALID_KEY_MESSAGE},
        ],
    )


def model_not_found(model: str, version: str, method: str) -> GoogleError:
    return GoogleError(
        404,
        "NOT_FOUND",
        f"models/{model} is not found for API version {version}, or is not supported for {method}. "
        "Call ListModels to see the list of available models and their supported methods.",
    )


def not_found(message: str) -> GoogleError:
    return GoogleError(404, "NOT_FOUND", message)


def key_quoted(key: str) -> GoogleError:
    """403 that repeats the caller's key (a gateway's habit, not Google's): the "quote_key" fault."""
    return GoogleError(403, "PERMISSION_DENIED", f"API key {key!r} is not authorized for this project.")


def internal() -> GoogleError:
    return GoogleError(500, "INTERNAL", INTERNAL_MESSAGE)


def overloaded() -> GoogleError:
    return GoogleError(503, "UNAVAILABLE", OVERLOADED_MESSAGE)


def bare_resource_exhausted() -> GoogleError:
    """The detail-less 429 Google sometimes sends (e.g. at batch creation)."""
    return GoogleError(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).")


def quota_exceeded(quota_metric: str, quota_id: str, quota_value: int, retry_seconds: float) -> GoogleError:
    """429 RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo, as Gemini's rate limiter sends."""
    delay = format_duration(retry_seconds)
    return GoogleError(
        429,
        "RESOURCE_EXHAUSTED",
        f"{QUOTA_MESSAGE}\n* Quota exceeded for metric: {quota_metric}, limit: {quota_value}\n"
        f"Please retry in {delay}.",
        [
            {
                "@type": TYPE_PREFIX + "QuotaFailure",
                "violations": [
                    {"quotaMetric": quota_metric, "quotaId": quota_id, "quotaValue": str(quota_value)}
                ],
            },
            {"@type": TYPE_PREFIX + "Help", "links": [
                {"description": "Learn more about Gemini API quotas",
                 "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
            {"@type": TYPE_PREFIX + "RetryInfo", "retryDelay": delay},
        ],
    )
