"""Quota the emulator enforces on online calls: RPM, TPM, RPD windows and a concurrency cap.

- RPM and TPM are sliding 60-second windows; RPD is a sliding 86,400-second window (Google
  resets at midnight Pacific; a sliding day is simpler and never more generous).
- RPM counts each text of a call (`rpm_counts="texts"`, the free tier) or each call ("calls").
  RPD counts the same unit as RPM; TPM counts `count_tokens` of every text.
- A call that would exceed any limit is rejected whole and consumes nothing: 429
  RESOURCE_EXHAUSTED with one QuotaFailure violation per exceeded limit and a RetryInfo whose
  `retryDelay` is the real time until enough of every exceeded window frees for this call.
- A call larger than a limit itself (e.g. 40K tokens against 30K TPM) can never fit. Like Google,
  it still gets a 429 (its message says the call alone exceeds the limit) with the whole window
  as the delay; clients must split such calls.
- More than `max_concurrent_calls` calls in flight: 503 UNAVAILABLE "The model is overloaded".
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .config import LimitConfig
from .google_errors import GoogleError, overloaded, quota_exceeded

MINUTE = 60.0
DAY = 86_400.0
METRIC_PREFIX = "generativelanguage.googleapis.com/"


@dataclass(frozen=True)
class Quota:
    """One enforced limit: which window, how much, and the names Google reports for it."""

    kind: str  # "rpm" | "tpm" | "rpd": also the stats suffix (errors.429.rpm)
    window: float
    limit: int
    metric: str
    quota_id: str


class _Window:
    """A sliding window of (time, amount) entries."""

    def __init__(self, span: float) -> None:
        self.span = span
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def expire(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - self.span:
            self.total -= self.entries.popleft()[1]

    def wait_for(self, amount: int, limit: int, now: float) -> float | None:
        """Seconds until `amount` fits under `limit`; 0 if it fits now; None if it never can."""
        if amount > limit:
            return None
        excess = self.total + amount - limit
        if excess <= 0:
            return 0.0
        freed = 0
        for stamp, used in self.entries:
            freed += used
            if freed >= excess:
                return stamp + self.span - now
        return self.span  # unreachable while total is consistent

    def add(self, now: float, amount: int) -> None:
        if amount:
            self.entries.append((now, amount))
            self.total += amount

    def clear(self) -> None:
        self.entries.clear()
        self.total = 0


def quotas_for(config: LimitConfig) -> list[Quota]:
    """The quotas `config` enforces, named like Google's (free tier when a per-day limit is set)."""
    tier = "free_tier" if config.rpd is not None else "paid_tier"
    suffix = "-FreeTier" if config.rpd is not None else ""
    quotas = []
    if config.rpm is not None:
        quotas.append(Quota("rpm", MINUTE, config.rpm, f"{METRIC_PREFIX}embed_content_{tier}_requests",
                            f"EmbedContentRequestsPerMinutePerProjectPerModel{suffix}"))
    if config.tpm is not None:
        quotas.append(Quota("tpm", MINUTE, config.tpm, f"{METRIC_PREFIX}embed_content_{tier}_input_token_count",
                            f"EmbedContentInputTokensPerMinutePerProjectPerModel{suffix}"))
    if config.rpd is not None:
        quotas.append(Quota("rpd", DAY, config.rpd, f"{METRIC_PREFIX}embed_content_{tier}_requests",
                            f"EmbedContentRequestsPerDayPerProjectPerModel{suffix}"))
    return quotas


class QuotaExceeded(GoogleError):
    """429 with QuotaFailure + RetryInfo; `kinds` lists the exceeded quotas, `retry_after` seconds."""

    def __init__(self, violated: list[Quota], retry_after: float, never_fits: bool) -> None:
        first = violated[0]
        base = quota_exceeded(first.metric, first.quota_id, first.limit, retry_after)
        details = base.details or []
        details[0]["violations"] = [
            {"quotaMetric": q.metric, "quotaId": q.quota_id, "quotaValue": str(q.limit)} for q in violated
        ]
        message = base.message
        if never_fits:
            message += " This single request alone exceeds the limit; split it into smaller requests."
        super().__init__(base.code, base.status, message, details)
        self.kinds = [q.kind for q in violated]
        self.retry_after = retry_after


class RateLimiter:
    """RPM/TPM/RPD windows for the online endpoints; thread-safe; limits changeable at run time."""

    def __init__(self, config: LimitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._minute_requests = _Window(MINUTE)
        self._minute_tokens = _Window(MINUTE)
        self._day_requests = _Window(DAY)
        self.configure(config)

    def configure(self, config: LimitConfig) -> None:
        """Enforce `config` from now on; usage recorded under limits already set stays counted."""
        with self._lock:
            self.config = config
            self._quotas = quotas_for(config)

    def reset(self) -> None:
        """Forget all recorded usage."""
        with self._lock:
            for window in (self._minute_requests, self._minute_tokens, self._day_requests):
                window.clear()

    def _window(self, kind: str) -> _Window:
        return {"rpm": self._minute_requests, "tpm": self._minute_tokens, "rpd": self._day_requests}[kind]

    def admit(self, texts: int, tokens: int) -> None:
        """Record one call of `texts` texts and `tokens` tokens, or raise QuotaExceeded and record nothing."""
        with self._lock:
            now = self._clock()
            requests = texts if self.config.rpm_counts == "texts" else 1
            amounts = {"rpm": requests, "tpm": tokens, "rpd": requests}
            violated: list[Quota] = []
            delay = 0.0
            never_fits = False
            for quota in self._quotas:
                window = self._window(quota.kind)
                window.expire(now)
                wait = window.wait_for(amounts[quota.kind], quota.limit, now)
                if wait is None:
                    never_fits = True
                    wait = quota.window
                if wait > 0:
                    violated.append(quota)
                    delay = max(delay, wait)
            if violated:
                raise QuotaExceeded(violated, delay, never_fits)
            # Only enforced quotas record usage, so an unlimited emulator keeps no history.
            for quota in self._quotas:
                self._window(quota.kind).add(now, amounts[quota.kind])


class ConcurrencyGate:
    """Counts online calls in flight; over the cap a call gets 503 UNAVAILABLE at once."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.in_flight = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self.cap is not None and self.in_flight >= self.cap:
                raise overloaded()
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
