"""The batch route's knobs, read from Settings in one place, and the online-or-batch decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from indexflow.tasks.errors import ConfigError
from indexflow.tasks.settings import Settings

Route = Literal["online", "batch"]


def estimate_turnaround(chunks: int) -> float:
    """Typical seconds from submission to results (upper ends of the batch guide's table)."""
    return 120.0 if chunks < 100 else 600.0 if chunks < 1_000 else 1_800.0 if chunks < 10_000 else 7_200.0


def choose_route(mode: str, chunks_to_embed: int, *, threshold: int = 500, deadline_seconds: float | None = None,
                 turnaround_seconds: float | None = None) -> Route:
    """online/batch as asked; auto -> batch above `threshold` chunks unless the deadline is shorter than the turnaround."""
    if mode in ("online", "batch"):
        return mode  # type: ignore[return-value]
    if mode != "auto":
        raise ConfigError(f"mode must be 'online', 'batch' or 'auto', got {mode!r}", mode=mode)
    if chunks_to_embed <= threshold:
        return "online"
    turnaround = turnaround_seconds if turnaround_seconds is not None else estimate_turnaround(chunks_to_embed)
    if deadline_seconds is not None and deadline_seconds < turnaround:
        return "online"
    return "batch"


@dataclass(frozen=True)
class BatchOptions:
    """The knobs of the batch route; `from_settings` is the one place that reads them from Settings."""

    threshold: int = 500
    deadline_seconds: float | None = None
    turnaround_seconds: float | None = None
    max_items_per_job: int = 10_000
    max_tokens_per_job: int = 5_000_000
    inline_limit_bytes: int = 19_000_000  # the API takes 20 MB; keep a margin for headers and encoding
    poll_seconds: float | None = None  # None: by job size, as the batch guide advises
    poll_jitter: float = 0.1  # each interval moves by up to this fraction: runs started together drift apart
    wait_limit_seconds: float | None = None
    failed_jobs: Literal["resubmit", "online", "fail"] = "resubmit"
    max_resubmits: int = 2
    item_errors: Literal["online", "dead_letter"] = "online"
    cancel_on_flow_cancel: bool = False
    create_attempts: int = 5
    priority: int = 0  # sent with every job: the server runs higher priorities first
    success_rate_threshold: float = 0.95  # a job below it raises an alert (tasks.batch.alerts)

    # option name -> Settings field name
    SETTINGS_FIELDS = {
        "threshold": "batch_threshold", "deadline_seconds": "deadline_seconds",
        "turnaround_seconds": "batch_turnaround_seconds", "max_items_per_job": "batch_max_items_per_job",
        "max_tokens_per_job": "batch_max_tokens_per_job", "inline_limit_bytes": "batch_inline_limit_bytes",
        "poll_seconds": "batch_poll_seconds", "poll_jitter": "batch_poll_jitter", "wait_limit_seconds": "batch_wait_limit_seconds",
        "failed_jobs": "batch_failed_jobs", "max_resubmits": "batch_max_resubmits",
        "item_errors": "batch_item_errors", "cancel_on_flow_cancel": "cancel_on_flow_cancel",
        "priority": "batch_priority", "success_rate_threshold": "batch_success_rate_threshold",
    }

    @classmethod
    def from_settings(cls, settings: Settings, **overrides) -> BatchOptions:
        """The options `settings` ask for, with `overrides` on top."""
        defaults = cls()
        values = {opt: getattr(settings, name, getattr(defaults, opt)) for opt, name in cls.SETTINGS_FIELDS.items()}
        return cls(**(values | overrides))
