"""What goes into and comes out of the online embed stage: its knobs, its counters, its failures.

Apart from the pipeline (`tasks.batcher`) because the batch route, the flow and the report use
them too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.settings import Limits, Settings

MAX_BATCH = 100  # texts per batchEmbedContents call, a hard API limit


@dataclass(frozen=True)
class EmbedFailure:
    """A chunk that could not be embedded: what went wrong, after how many calls, and when."""

    chunk: Chunk
    error: str
    error_type: str
    attempts: int
    failed_at: datetime


@dataclass(frozen=True)
class EmbedOptions:
    """The knobs of the embed stage; `from_settings` builds them from the run's Settings."""

    recipe: Recipe = field(default_factory=Recipe)
    limits: Limits = field(default_factory=Limits)
    batch_size: int = MAX_BATCH
    batch_timeout: float = 0.05
    call_token_budget: int = MAX_BATCH * 2048
    concurrency: int = 8
    max_attempts: int = 8
    max_retry_seconds: float = 900.0
    call_deadline_seconds: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "EmbedOptions":
        return cls(
            recipe=settings.recipe,
            limits=settings.limits,
            batch_size=settings.batch_size,
            batch_timeout=settings.batch_timeout,
            call_token_budget=settings.call_token_budget,
            concurrency=settings.concurrency,
            max_attempts=settings.max_attempts,
            max_retry_seconds=settings.max_retry_seconds,
            call_deadline_seconds=settings.call_deadline_seconds,
        )

    @property
    def texts_per_call(self) -> int:
        """batch_size, but never over 100 nor over the RPM when each text counts as a request."""
        size = min(self.batch_size, MAX_BATCH)
        if self.limits.rpm is not None and self.limits.count == "texts":
            size = min(size, self.limits.rpm)
        return size


@dataclass
class EmbedStats:
    """Counters of one embed stage run, for the report."""

    chunks_read: int = 0
    embedded: int = 0
    dead_lettered: int = 0
    calls: int = 0  # HTTP calls made, including retries and bisection halves
    texts_sent: int = 0
    tokens_sent: int = 0
    batches: int = 0  # batches formed by the batcher
    rate_limited: int = 0  # 429s answered per minute
    unavailable: int = 0  # 503s
    other_errors: int = 0  # 500s, timeouts, dropped connections, bad responses, 400s
    retries: int = 0
    bisections: int = 0
    limiter_wait_seconds: float = 0.0
    concurrency_shrinks: int = 0
    max_reader_lead: int = 0  # most chunks read but not yet handed to a sink
    reader_lead_bound: int = 0  # what the queue sizes allow for max_reader_lead
    elapsed_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
