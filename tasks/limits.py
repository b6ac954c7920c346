"""Client-side quota: admit a call only when the server's own windows would accept it.

Why sliding windows and not token buckets: the server counts requests and tokens over a sliding
60-second window (and requests over a day). A token bucket that starts full and refills lets
through up to `capacity + rate * t` in the first `t` seconds, which a sliding window refuses, so
the client would trip 429s on its own traffic. `RateLimiter` mirrors the server instead: it keeps
every admitted call (a `Permit`) and admits a new one only if the costs still inside the window
plus the new cost stay within each limit. A permit stays in the window from admission until
`window` seconds after its call *finished* (in-flight calls never expire): the server stamps a
call somewhere between the two, so this is the conservative reading and costs only one call's
latency per minute of quota. The day is a count, not a window (`DayQuota`): a run never waits
for it; once it is spent the run stops, and a re-run after the reset resumes.

`AdaptiveConcurrency` is the AIMD gate: overload (429/503) halves the allowed concurrency once
per "generation" of calls, successes grow it back by one per `limit` successes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from indexflow.tasks.errors import ConfigError, DailyQuotaError
from indexflow.tasks.settings import Limits

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

MINUTE = 60.0


@dataclass
class Permit:
    """One admitted call: its cost and when it was admitted and finished (inf while in flight)."""

    requests: int
    tokens: int
    admitted: float
    finished: float = math.inf


class DayQuota:
    """Requests per day as this run spends them: never waited for; once spent, every later call raises."""

    def __init__(self, rpd: int | None) -> None:
        self.rpd = rpd
        self.used = 0
        self.exhausted: DailyQuotaError | None = None

    def check(self, requests: int) -> None:
        """Raise DailyQuotaError if the day is spent, here or as the server said, or `requests` would overspend it."""
        if self.exhausted is not None:
            raise self.exhausted
        if self.rpd is not None and self.used + requests > self.rpd:
            self.exhausted = DailyQuotaError(
                f"the daily quota of {self.rpd} requests is spent ({self.used} used by this run); "
                "the run stops here and resumes where it left off when re-run after the quota resets",
                status=None,
                quota_id="client:rpd",
                limit=self.rpd,
                used=self.used,
            )
            raise self.exhausted


class RateLimiter:
    """Requests-per-minute, tokens-per-minute and requests-per-day windows, plus a shared 429 pause."""

    def __init__(
        self,
        limits: Limits,
        *,
        window: float = MINUTE,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.limits = limits
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._permits: deque[Permit] = deque()
        self._day = DayQuota(limits.rpd)
        self._paused_until = -math.inf
        self._turn = asyncio.Lock()  # FIFO: callers are admitted in arrival order
        self._changed = asyncio.Event()
        self.waited_seconds = 0.0
        # What holds the next call, while one is held: ("tokens/min", clock time it may go) for
        # people watching a throttled run; None while calls flow.
        self.holding: tuple[str, float] | None = None

    def cost(self, texts: int) -> int:
        """Requests one call of `texts` texts spends, as the quota counts them."""
        return texts if self.limits.count == "texts" else 1

    def check_fits(self, texts: int, tokens: int) -> None:
        """Raise ConfigError for a call no window could ever admit (it would wait forever)."""
        requests = self.cost(texts)
        if self.limits.rpm is not None and requests > self.limits.rpm:
            raise ConfigError(
                f"a call of {texts} texts counts {requests} requests, over the limit of {self.limits.rpm} "
                "requests per minute; lower batch_size to at most the rpm",
                requests=requests,
                rpm=self.limits.rpm,
            )
        if self.limits.tpm is not None and tokens > self.limits.tpm:
            raise ConfigError(
                f"a call of {tokens} tokens exceeds the limit of {self.limits.tpm} tokens per minute; "
                "lower max_chunk_tokens or max_tokens_per_call, or raise tpm",
                tokens=tokens,
                tpm=self.limits.tpm,
            )

    async def acquire(self, texts: int, tokens: int) -> Permit:
        """Wait until every window admits a call of `texts` texts and `tokens` tokens, then record it."""
        self.check_fits(texts, tokens)
        requests = self.cost(texts)
        async with self._turn:
            while True:
                now = self._clock()
                self._day.check(requests)
                delay = self.delay(requests, tokens, now)
                if delay == 0:
                    self.holding = None
                    permit = Permit(requests, tokens, admitted=now)
                    self._permits.append(permit)
                    self._day.used += requests
                    return permit
                self.holding = (self.holder(requests, tokens, now), now + delay)
                if math.isinf(delay):
                    # Only calls still in flight hold the window: wait for one to finish.
                    self._changed.clear()
                    await self._changed.wait()
                else:
                    self.waited_seconds += delay
                    await self._sleep(delay)

    def complete(self, permit: Permit) -> None:
        """Stamp the call as finished; its cost leaves the window `window` seconds from now."""
        permit.finished = self._clock()
        self._changed.set()

    def refund(self, permit: Permit) -> None:
        """The call never reached the server (no connection): its cost leaves every window now."""
        try:
            self._permits.remove(permit)
        except ValueError:
            pass  # already pruned
        else:
            self._day.used -= permit.requests
        self._changed.set()

    def delay(self, requests: int, tokens: int, now: float) -> float:
        """Seconds until a call of this cost would be admitted (0 = now, inf = after a call finishes)."""
        self._prune(now)
        delay = max(0.0, self._paused_until - now)
        for limit, cost, key in (
            (self.limits.rpm, requests, "requests"),
            (self.limits.tpm, tokens, "tokens"),
        ):
            if limit is not None:
                delay = max(delay, self._window_delay(limit, cost, key, now))
        return delay

    def holder(self, requests: int, tokens: int, now: float) -> str:
        """Which limit keeps a call of this cost waiting: the longest of the pause and the windows."""
        reasons = [(max(0.0, self._paused_until - now), "a 429 pause")]
        for limit, cost, key, name in ((self.limits.rpm, requests, "requests", "requests/min"),
                                       (self.limits.tpm, tokens, "tokens", "tokens/min")):
            if limit is not None:
                reasons.append((self._window_delay(limit, cost, key, now), name))
        return max(reasons, key=lambda r: r[0])[1]

    def _window_delay(self, limit: int, cost: int, key: str, now: float) -> float:
        used = sum(getattr(p, key) for p in self._permits)
        excess = used + cost - limit
        if excess <= 0:
            return 0.0
        for permit in sorted((p for p in self._permits if not math.isinf(p.finished)), key=lambda p: p.finished):
            excess -= getattr(permit, key)
            if excess <= 0:
                return max(0.0, permit.finished + self.window - now)
        return math.inf

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        self._permits = deque(p for p in self._permits if p.finished > horizon)

    def mark_day_exhausted(self, error: DailyQuotaError) -> None:
        """The server reported the daily quota spent: every later acquire raises `error`."""
        self._day.exhausted = error
        self._changed.set()

    def pause_until(self, until: float) -> None:
        """Admit nothing before clock time `until` (every worker shares this gate)."""
        self._paused_until = max(self._paused_until, until)

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A 429 with RetryInfo: pause every caller for the delay the server asked for."""
        if retry_after is not None and retry_after > 0:
            self.pause_until(self._clock() + retry_after)

    @property
    def in_window(self) -> tuple[int, int]:
        """(requests, tokens) currently counted in the minute window."""
        self._prune(self._clock())
        return sum(p.requests for p in self._permits), sum(p.tokens for p in self._permits)


class AdaptiveConcurrency:
    """An async semaphore whose limit shrinks on overload (halve, min 1) and grows back on success (+1)."""

    def __init__(self, maximum: int, *, minimum: int = 1, grow_every: int | None = None) -> None:
        if maximum < 1 or minimum < 1 or minimum > maximum:
            raise ConfigError(
                f"concurrency bounds must satisfy 1 <= minimum <= maximum, got {minimum}..{maximum}",
                minimum=minimum,
                maximum=maximum,
            )
        self.maximum = maximum
        self.minimum = minimum
        self.limit = maximum
        self.in_use = 0
        self.shrinks = 0
        self._grow_every = grow_every
        self._successes = 0
        self._generation = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> int:
        """Wait for a slot; returns the generation to hand back to `on_overload`."""
        while self.in_use >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                self._wake()
                raise
        self.in_use += 1
        return self._generation

    def release(self) -> None:
        """Give a slot back."""
        self.in_use -= 1
        self._wake()

    def on_success(self) -> None:
        """Additive increase: +1 after `grow_every` (default: the current limit) successes."""
        if self.limit >= self.maximum:
            return
        self._successes += 1
        if self._successes >= (self._grow_every or self.limit):
            self._successes = 0
            self.limit += 1
            self._wake()

    def on_overload(self, generation: int) -> None:
        """Multiplicative decrease, once per generation: a burst of 429s from calls sent together halves once."""
        if generation < self._generation:
            return
        self._generation += 1
        self._successes = 0
        new_limit = max(self.minimum, self.limit // 2)
        if new_limit < self.limit:
            self.shrinks += 1
        self.limit = new_limit

    def _wake(self) -> None:
        free = self.limit - self.in_use
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1
