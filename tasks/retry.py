"""The project's one retry layer for API calls: backoff with full jitter, RetryInfo, bisection of 400s.

Retried: transient errors (5xx, timeouts, dropped connections, 429 per minute, bad responses).
Not retried: BadRequestError (bisected instead), AuthError, DailyQuotaError and anything that is
not an IndexflowError (a bug should surface, not be retried).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from indexflow.tasks.errors import BadRequestError, BadResponseError, IndexflowError, RateLimitedError
from indexflow.tasks.limits import Clock, RateLimiter, Sleep

if TYPE_CHECKING:
    import numpy as np

T = TypeVar("T")
Item = TypeVar("Item")


@dataclass
class RetryPolicy:
    """Attempts and time bounds, and the backoff: full jitter over base * 2**(attempt-1), capped."""

    max_attempts: int = 8
    max_elapsed: float = 900.0
    base_delay: float = 0.5
    max_delay: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, error: IndexflowError) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        jittered = self.rng.uniform(0.0, cap)
        retry_after = getattr(error, "retry_after", None) if isinstance(error, RateLimitedError) else None
        if retry_after is not None:
            # The server said when; a little jitter on top keeps paused workers from restarting in lockstep.
            return retry_after + self.rng.uniform(0.0, min(self.base_delay, retry_after * 0.1 + 0.01))
        return jittered


OnRetry = Callable[[int, IndexflowError, float], None]


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    limiter: RateLimiter | None = None,
    on_retry: OnRetry | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> T:
    """Await `fn()` until it succeeds, a terminal error, or the attempt/time bound; re-raises the last error.

    On a 429 with RetryInfo, `limiter` (when given) pauses every caller, not just this one.
    """
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except IndexflowError as error:
            if not error.transient or attempt >= policy.max_attempts:
                raise
            delay = policy.delay(attempt, error)
            if clock() - started + delay > policy.max_elapsed:
                raise
            if limiter is not None and isinstance(error, RateLimitedError):
                limiter.on_rate_limited(getattr(error, "retry_after", None))
            if on_retry is not None:
                on_retry(attempt, error, delay)
            await sleep(delay)


@dataclass
class Failure(Generic[Item]):
    """One item that could not be embedded: the last error and how many calls carried it."""

    item: Item
    error: IndexflowError
    attempts: int


@dataclass
class ResolvedBatch(Generic[Item]):
    """Embedded items with their vectors (paired, never by position across batches) and failures."""

    items: list[Item]
    vectors: np.ndarray | None
    failures: list[Failure[Item]]
    bisections: int = 0


async def embed_resolving(
    items: Sequence[Item],
    call: Callable[[Sequence[Item]], Awaitable[np.ndarray]],
    *,
    policy: RetryPolicy,
    limiter: RateLimiter | None = None,
    on_retry: OnRetry | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> ResolvedBatch[Item]:
    """Embed `items` with retries; isolate bad items so the good ones still get their vectors.

    A 400 splits the batch in halves, each retried as its own call, down to single items.
    A bad response that names bad rows (non-finite or zero vectors) after all retries fails
    those rows and embeds the rest in a new call. Everything else propagates and ends the stage:
    terminal errors, and transient ones that outlasted their retries (an outage must not send
    good chunks to the dead letters; the next attempt resumes from what was committed).
    """
    done_items: list[Item] = []
    done_vectors: list[np.ndarray] = []
    failures: list[Failure[Item]] = []
    attempts: dict[int, int] = {}
    bisections = 0

    async def counted(part: Sequence[Item]) -> np.ndarray:
        for it in part:
            attempts[id(it)] = attempts.get(id(it), 0) + 1
        return await call(part)

    # A stack, not a recursive closure: a closure that calls itself is a reference cycle, and
    # each batch's vectors then stayed alive until the garbage collector's next full pass.
    pending: list[Sequence[Item]] = [list(items)]
    while pending:
        part = pending.pop()
        try:
            vectors = await call_with_retries(
                lambda: counted(part), policy=policy, limiter=limiter, on_retry=on_retry, clock=clock, sleep=sleep
            )
        except BadRequestError as error:
            # Kept without its traceback: that holds this frame, whose `failures` hold the error,
            # a cycle that would keep this batch's vectors alive until a full garbage collection.
            error = error.with_traceback(None)
            if len(part) == 1:
                failures.append(Failure(part[0], error, attempts[id(part[0])]))
                continue
            bisections += 1
            middle = len(part) // 2
            pending += [part[middle:], part[:middle]]  # first half first, as a recursion would
            continue
        except BadResponseError as error:
            bad_rows = getattr(error, "rows", None)
            if bad_rows and len(bad_rows) < len(part):
                error = error.with_traceback(None)  # as above
                bad = set(bad_rows)
                failures.extend(Failure(part[i], error, attempts[id(part[i])]) for i in sorted(bad))
                pending.append([it for i, it in enumerate(part) if i not in bad])
                continue
            # No row named: the whole answer was unusable (wrong count, malformed). Like any other
            # transient error that outlasted its retries, that is an outage, not a bad item.
            raise
        done_items.extend(part)
        done_vectors.append(vectors)

    if done_vectors:
        import numpy as np

        vectors = np.concatenate(done_vectors)
    else:
        vectors = None
    return ResolvedBatch(done_items, vectors, failures, bisections)
