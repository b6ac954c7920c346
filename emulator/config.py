"""Emulator settings: key, models, limits, latency, faults and batch-job timing, all in one object."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

FAULT_KINDS: tuple[str, ...] = ("500", "503", "429", "hang", "drop", "malformed", "wrong_count", "drip",
                                "quote_key")


class LimitConfig(BaseModel):
    """Quota the emulator enforces; None disables that limit."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    # "texts": each text of a batch call counts as one request (the free tier); "calls": one per call.
    rpm_counts: Literal["texts", "calls"] = "texts"
    max_concurrent_calls: int | None = 64


# Numbers from https://ai.google.dev/gemini-api/docs/rate-limits (gemini-embedding-001, per project and model).
TIER_PRESETS: dict[str, LimitConfig] = {
    "free": LimitConfig(rpm=100, tpm=30_000, rpd=1_000, rpm_counts="texts"),
    "tier1": LimitConfig(rpm=3_000, tpm=1_000_000, rpm_counts="texts"),
    "tier2": LimitConfig(rpm=5_000, tpm=5_000_000, rpm_counts="texts"),
    "unlimited": LimitConfig(max_concurrent_calls=None),
}


class BatchConfig(BaseModel):
    """How Batch API jobs behave."""

    pending_seconds: float = Field(default=0.5, ge=0)
    running_seconds: float = Field(default=1.0, ge=0)  # time to finish every item of a job
    item_failure_rate: float = Field(default=0.0, ge=0, le=1)
    max_concurrent_jobs: int = 100
    inline_limit_bytes: int = 20 * 1024 * 1024
    # Injected whole-job outcomes: the next N jobs created end FAILED or EXPIRED instead of SUCCEEDED.
    fail_next_jobs: int = 0
    expire_next_jobs: int = 0
    # The queue (emulator.batch_queue): while paused no PENDING job starts and paused time does not
    # count as pending time; at most max_running jobs RUNNING at once (None: no cap). Jobs that may
    # start go by priority, then age. The defaults leave every job on its own timeline.
    paused: bool = False
    max_running: int | None = Field(default=None, ge=1)  # 0 would be `paused` by another name


class EmulatorConfig(BaseModel):
    """Everything the emulator needs; built from CLI options or by the in-process server."""

    api_keys: tuple[str, ...] = ("emulator-key",)
    models: tuple[str, ...] = ("gemini-embedding-001",)
    limits: LimitConfig = LimitConfig(max_concurrent_calls=None)
    latency_base_ms: float = 0.0
    latency_per_text_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    seed: int = 0
    # probability per online call of each fault kind, e.g. {"503": 0.05}
    fault_rates: dict[str, float] = {}
    hang_seconds: float = 600.0
    # "drip": how long a whole answer takes to trickle in (each piece well within a read timeout)
    drip_seconds: float = 75.0
    # Google's per-text input limit. Lower it to play a server whose tokenizer counts more than the
    # client's estimate: the texts over it get 400 INVALID_ARGUMENT, as Google's would.
    max_input_tokens: int = Field(default=2048, ge=1)
    batch: BatchConfig = BatchConfig()
    state_dir: Path | None = None

