"""The emulator's ASGI app: one `Emulator` state object plus Google-shaped and admin routes.

Routes: online embeddings (emulator.online), Batch API (emulator.batches), Files API
(emulator.files, uploads in emulator.uploads), admin under `/_emulator/` (emulator.admin). Every
`GoogleError` becomes a google.rpc.Status body and is counted in the stats (see emulator.admin for
counter names).
"""

from __future__ import annotations

import random

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from . import admin, batches, files, online, uploads
from .batches import BatchStore
from .config import BatchConfig, EmulatorConfig
from .faults import FaultInjector
from .files import FileStore
from .google_errors import GoogleError, invalid_argument
from .limits import ConcurrencyGate, QuotaExceeded, RateLimiter
from .stats import Stats
from .uploads import UploadSessions


class Emulator:
    """Everything one running emulator holds: config, stats, limits, faults, files, uploads, batch jobs."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.initial_config = config
        self.config = config
        self.stats = Stats()
        self.files = FileStore(config, self.stats)
        self.uploads = UploadSessions(self.files, self.stats)
        self.batches = BatchStore(config, self.stats, self.files)
        self.limits = RateLimiter(config.limits)
        self.concurrency = ConcurrencyGate(config.limits.max_concurrent_calls)
        self.faults = FaultInjector(config.fault_rates, config.seed)
        self._latency_rng = random.Random(config.seed)

    @property
    def batch_config(self) -> BatchConfig:
        return self.config.batch

    def update_config(self, **changes: object) -> None:
        """Replace config fields at run time and hand the new config to every part that reads it."""
        self.config = self.config.model_copy(update=changes)
        # FileStore and BatchStore read `self.config` (e.g. `.batch`) whenever they act; the batch
        # queue must also settle its past under the old paused/max_running before they change.
        self.files.config = self.config
        self.batches.configure(self.config)
        self.limits.configure(self.config.limits)
        self.concurrency.cap = self.config.limits.max_concurrent_calls

    def latency_seconds(self, texts: int) -> float:
        """Base + per-text + seeded uniform jitter, in seconds."""
        c = self.config
        jitter = self._latency_rng.uniform(0, c.latency_jitter_ms) if c.latency_jitter_ms > 0 else 0.0
        return (c.latency_base_ms + c.latency_per_text_ms * texts + jitter) / 1000.0

    def reset(self, jobs: bool = False) -> None:
        """Back to the startup config with empty stats, windows and faults; jobs and files too if asked."""
        # a deep copy: batch counters such as fail_next_jobs are consumed in place
        self.update_config(**dict(self.initial_config.model_copy(deep=True)))
        self.stats.reset()
        self.limits.reset()
        self.faults.set(rates=self.config.fault_rates, seed=self.config.seed, clear=True)
        self._latency_rng = random.Random(self.config.seed)
        if jobs:
            self.files.reset()
            self.uploads.clear()
            self.batches.reset()


async def _google_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GoogleError)
    stats = request.app.state.emulator.stats
    if request.url.path.startswith("/_emulator/"):
        pass  # the admin's own refusals are not traffic
    elif isinstance(exc, QuotaExceeded):
        for kind in exc.kinds:
            stats.add(f"errors.429.{kind}")
    else:
        stats.add(f"errors.{exc.code}")
    return exc.response()


async def _validation_error(request: Request, exc: Exception) -> Response:
    return await _google_error(request, invalid_argument(f"Invalid request: {exc}"))


def create_app(config: EmulatorConfig) -> FastAPI:
    """A fresh emulator app for `config`; its state is `app.state.emulator`."""
    app = FastAPI(title="Gemini API emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = Emulator(config)
    app.add_exception_handler(GoogleError, _google_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(admin.router)
    app.include_router(files.router)
    app.include_router(uploads.router)
    app.include_router(batches.router)
    app.include_router(online.router)
    return app
