"""API-key check for Google-shaped endpoints: `x-goog-api-key` header or `?key=` query parameter."""

from __future__ import annotations

from fastapi import Request

from .google_errors import invalid_key, missing_key


def require_api_key(request: Request) -> None:
    """Raise Google's error when the request carries no key (403) or an unknown one (400)."""
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if not key:
        raise missing_key()
    if key not in request.app.state.emulator.config.api_keys:
        raise invalid_key()
