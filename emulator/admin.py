"""Admin surface under `/_emulator/` (no API key; loopback callers only) and its sync client.

Endpoints:
  GET  /_emulator/stats          counters (below) as a flat {name: int} object
  POST /_emulator/reset          {"jobs": false}: startup config, empty stats/windows/faults;
                                 with "jobs": true also every batch job and file
  GET|POST /_emulator/faults     {"script": [{"kind": "503", "count": 3}], "rates": {"500": 0.1},
                                 "seed": 7, "clear": false}: clear first, then append the script,
                                 replace the rates, re-seed
  GET|POST /_emulator/limits     LimitConfig fields merged into the current limits; {"tier": "free"}
                                 starts from a preset
  GET|POST /_emulator/batch-config  BatchConfig fields merged into the current batch config, e.g.
                                 {"paused": true}, {"max_running": 1} (queue changes apply at once)
  GET|POST /_emulator/config     latency_base_ms, latency_per_text_ms, latency_jitter_ms, hang_seconds,
                                 drip_seconds, max_input_tokens

Counter names (absent = 0):
  calls, texts, tokens.online        online calls answered with embeddings (incl. response faults)
  errors.429.rpm|tpm|rpd             calls rejected by a quota (one per exceeded quota)
  errors.<code>                      every other Google error answered (400, 403, 404, 503, ...)
  faults.<kind>                      faults injected (not also counted under errors.*)
  tokens.batch, batches.*, files.*   Batch API and Files API (emulator.batches, emulator.files)
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from .config import TIER_PRESETS, BatchConfig, LimitConfig
from .google_errors import GoogleError, invalid_argument, json_response

router = APIRouter(prefix="/_emulator")

RUNTIME_FIELDS = ("latency_base_ms", "latency_per_text_ms", "latency_jitter_ms", "hang_seconds", "drip_seconds",
                  "max_input_tokens")


def _require_loopback(request: Request) -> None:
    host = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in ("localhost", "testclient")
    if not loopback:
        raise GoogleError(403, "PERMISSION_DENIED", "The emulator's admin endpoints answer loopback callers only.")


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise invalid_argument(f"admin body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid_argument("admin body must be a JSON object")
    return body


def _merge(model_cls, current, changes: dict[str, Any]):
    try:
        return model_cls.model_validate({**current.model_dump(), **changes})
    except ValidationError as exc:
        raise invalid_argument(f"invalid {model_cls.__name__}: {exc}") from None


@router.get("/stats")
async def get_stats(request: Request) -> Response:
    _require_loopback(request)
    emu = request.app.state.emulator
    emu.batches.refresh()  # jobs finish lazily; count the ones nobody has read since
    return json_response(emu.stats.snapshot())


@router.post("/reset")
async def reset(request: Request) -> Response:
    _require_loopback(request)
    body = await _body(request)
    request.app.state.emulator.reset(jobs=bool(body.get("jobs", False)))
    return json_response({})


@router.get("/faults")
async def get_faults(request: Request) -> Response:
    _require_loopback(request)
    return json_response(request.app.state.emulator.faults.snapshot())


@router.post("/faults")
async def set_faults(request: Request) -> Response:
    _require_loopback(request)
    body = await _body(request)
    faults = request.app.state.emulator.faults
    try:
        faults.set(script=body.get("script"), rates=body.get("rates"), seed=body.get("seed"),
                   clear=bool(body.get("clear", False)))
    except (ValueError, KeyError, TypeError) as exc:
        raise invalid_argument(f"invalid fault settings: {exc}") from None
    return json_response(faults.snapshot())


@router.get("/limits")
async def get_limits(request: Request) -> Response:
    _require_loopback(request)
    return json_response(request.app.state.emulator.config.limits.model_dump())


@router.post("/limits")
async def set_limits(request: Request) -> Response:
    _require_loopback(request)
    body = await _body(request)
    emu = request.app.state.emulator
    base = emu.config.limits
    tier = body.pop("tier", None)
    if tier is not None:
        if tier not in TIER_PRESETS:
            raise invalid_argument(f"unknown tier {tier!r}; use one of {', '.join(TIER_PRESETS)}")
        base = TIER_PRESETS[tier]
    emu.update_config(limits=_merge(LimitConfig, base, body))
    return json_response(emu.config.limits.model_dump())


@router.get("/batch-config")
async def get_batch_config(request: Request) -> Response:
    _require_loopback(request)
    return json_response(request.app.state.emulator.config.batch.model_dump())


@router.post("/batch-config")
async def set_batch_config(request: Request) -> Response:
    _require_loopback(request)
    body = await _body(request)
    emu = request.app.state.emulator
    emu.update_config(batch=_merge(BatchConfig, emu.config.batch, body))
    return json_response(emu.config.batch.model_dump())


@router.get("/config")
async def get_config(request: Request) -> Response:
    _require_loopback(request)
    config = request.app.state.emulator.config
    return json_response({name: getattr(config, name) for name in RUNTIME_FIELDS})


@router.post("/config")
async def set_config(request: Request) -> Response:
    _require_loopback(request)
    body = await _body(request)
    unknown = sorted(set(body) - set(RUNTIME_FIELDS))
    if unknown:
        raise invalid_argument(f"fields {unknown} cannot be changed at run time; use {list(RUNTIME_FIELDS)}")
    emu = request.app.state.emulator
    for name, value in body.items():
        if not isinstance(value, (int, float)) or value < 0:
            raise invalid_argument(f"{name} must be a number >= 0, got {value!r}")
    emu.update_config(**{name: int(value) if name == "max_input_tokens" else float(value)
                         for name, value in body.items()})
    return json_response({name: getattr(emu.config, name) for name in RUNTIME_FIELDS})


class AdminError(RuntimeError):
    """The emulator's admin endpoint refused a request; `status` and `body` say why."""

    def __init__(self, url: str, status: int, body: str) -> None:
        super().__init__(f"emulator admin {url} answered {status}: {body}")
        self.url = url
        self.status = status
        self.body = body


class AdminClient:
    """Synchronous client for `/_emulator/` (stdlib only, so any test or script can use it)."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        url = f"{self.base_url}/_emulator/{path}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise AdminError(url, exc.code, exc.read().decode(errors="replace")) from None

    def stats(self) -> dict[str, int]:
        """All counters (names in this module's docstring); absent names are 0."""
        return self._call("GET", "stats")

    def reset(self, jobs: bool = False) -> None:
        """Startup config, empty stats, windows and faults; also batch jobs and files if `jobs`."""
        self._call("POST", "reset", {"jobs": jobs})

    def faults(self) -> dict:
        return self._call("GET", "faults")

    def set_faults(
        self,
        script: list[dict] | None = None,
        rates: dict[str, float] | None = None,
        seed: int | None = None,
        clear: bool = False,
    ) -> dict:
        """Clear (if asked), append `script` entries like {"kind": "503", "count": 3}, set rates/seed."""
        body: dict[str, Any] = {"clear": clear}
        if script is not None:
            body["script"] = script
        if rates is not None:
            body["rates"] = rates
        if seed is not None:
            body["seed"] = seed
        return self._call("POST", "faults", body)

    def limits(self) -> dict:
        return self._call("GET", "limits")

    def set_limits(self, limits: LimitConfig | dict | None = None, tier: str | None = None) -> dict:
        """Merge `limits` fields into the current limits (or into preset `tier`)."""
        body = limits.model_dump() if isinstance(limits, LimitConfig) else dict(limits or {})
        if tier is not None:
            body["tier"] = tier
        return self._call("POST", "limits", body)

    def batch_config(self) -> dict:
        return self._call("GET", "batch-config")

    def set_batch_config(self, changes: BatchConfig | dict) -> dict:
        """Merge fields (e.g. item_failure_rate, fail_next_jobs, running_seconds, paused, max_running)."""
        body = changes.model_dump() if isinstance(changes, BatchConfig) else dict(changes)
        return self._call("POST", "batch-config", body)

    def set_config(self, **changes: float) -> dict:
        """Change any of RUNTIME_FIELDS (latencies, hang_seconds, drip_seconds, max_input_tokens)."""
        return self._call("POST", "config", changes)
