"""One micro-batch through the API as every embed worker sends it, guarded on the way out and back.

    concurrency slot -> rate-limiter permit -> the call -> guards on the answer -> L2 normalize

inside `tasks.retry`'s retries and bisection. Overload (429, 503) shrinks the shared concurrency,
a spent daily quota closes the limiter, and connection failures before the endpoint ever
answered end the run early: that is a wrong URL or no network, not an outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.embed_options import EmbedStats
from indexflow.tasks.errors import (
    BadRequestError,
    BadResponseError,
    ConfigError,
    DailyQuotaError,
    EndpointUnreachableError,
    IndexflowError,
    RateLimitedError,
    TransientAPIError,
)
from indexflow.tasks.limits import AdaptiveConcurrency, RateLimiter
from indexflow.tasks.retry import Failure, ResolvedBatch, RetryPolicy, embed_resolving

if TYPE_CHECKING:  # numpy loads with the first answer, not before the first call
    import numpy as np

EmbedFn = Callable[[Sequence[Chunk]], Awaitable["np.ndarray"]]

# Connection failures before the endpoint has answered once mean a wrong URL or no network, not
# an outage: give up after this many instead of retrying for minutes.
CONNECT_ATTEMPTS = 3


class Stopped(Exception):
    """Raised instead of starting a call once the run is stopping."""


class GuardedCall:
    """The embed stage's calls: shared concurrency, quota and counters, and the stop that ends them."""

    def __init__(
        self,
        embed: EmbedFn,
        *,
        limiter: RateLimiter,
        policy: RetryPolicy,
        concurrency: AdaptiveConcurrency,
        stats: EmbedStats,
        dimensions: int,
        protected: set[asyncio.Task],
    ) -> None:
        self.embed = embed
        self.limiter = limiter
        self.policy = policy
        self.concurrency = concurrency
        self.stats = stats
        self.dimensions = dimensions
        # Tasks with a call on the wire: a stopping run lets them finish (the pipeline's drain).
        self.protected = protected
        self.stopping = False
        self.answered = False  # the endpoint has sent an HTTP answer (any status) this run
        self.connect_failures = 0

    def stop(self) -> None:
        """Start no call from now on, and retry none; calls already on the wire run to their end."""
        self.stopping = True

    async def resolve(self, batch: list[Chunk]) -> ResolvedBatch[Chunk]:
        """Embed one micro-batch with retries and bisection: vectors for the good chunks, failures for the rest."""
        tokens = sum(c.tokens for c in batch)
        try:
            self.limiter.check_fits(len(batch), tokens)
        except ConfigError as error:
            if len(batch) > 1:
                raise
            # One chunk larger than a whole minute of quota can never be sent: dead-letter it.
            return ResolvedBatch([], None, [Failure(batch[0], error, 0)])
        outcome = await embed_resolving(
            batch, self.attempt, policy=self.policy, limiter=self.limiter, on_retry=self._on_retry
        )
        self.stats.bisections += outcome.bisections
        return outcome

    async def attempt(self, part: Sequence[Chunk]) -> np.ndarray:
        """One guarded API call: concurrency slot, quota permit, call, guards, normalization."""
        tokens = sum(c.tokens for c in part)
        generation = await self.concurrency.acquire()
        try:
            permit = await self.limiter.acquire(len(part), tokens)
            me = asyncio.current_task()
            sent = True
            try:
                if self.stopping:
                    raise Stopped()
                self.stats.calls += 1
                self.stats.texts_sent += len(part)
                self.stats.tokens_sent += tokens
                self.protected.add(me)
                raw = await self.embed(part)
                self.answered = True
            except IndexflowError as error:
                if getattr(error, "reason", None) == "connect":
                    sent = False  # refused before a byte was sent: the server counted nothing
                if self.stopping:
                    raise Stopped() from None  # no retries once the run is stopping
                self._count_error(error, generation)
                raise
            finally:
                self.protected.discard(me)
                if sent:
                    self.limiter.complete(permit)
                else:
                    self.limiter.refund(permit)
            from indexflow.tasks.normalize import find_bad_rows, l2_normalize

            bad = find_bad_rows(raw)
            if bad:
                self.stats.other_errors += 1
                rows = list(bad)
                raise BadResponseError(
                    f"{len(rows)} of {len(part)} embeddings are unusable (first: chunk {part[rows[0]].id}, "
                    f"{bad[rows[0]]})",
                    status=200,
                    rows=rows,
                    reasons=bad,
                    reason=bad[rows[0]],
                )
            vectors = l2_normalize(raw, expected_dim=self.dimensions)
            self.concurrency.on_success()
            return vectors
        finally:
            self.concurrency.release()

    def _count_error(self, error: IndexflowError, generation: int) -> None:
        status = getattr(error, "status", None)
        if status is not None:
            self.answered = True
        elif getattr(error, "reason", None) == "connect" and not self.answered:
            self.connect_failures += 1
            if self.connect_failures >= CONNECT_ATTEMPTS:
                raise EndpointUnreachableError(str(error), attempts=self.connect_failures) from error
        if isinstance(error, RateLimitedError):
            self.stats.rate_limited += 1
            self.concurrency.on_overload(generation)
        elif isinstance(error, TransientAPIError) and status == 503:
            self.stats.unavailable += 1
            self.concurrency.on_overload(generation)
        elif error.transient or isinstance(error, BadRequestError):
            self.stats.other_errors += 1
        if isinstance(error, DailyQuotaError):
            self.limiter.mark_day_exhausted(error)

    def _on_retry(self, attempt: int, error: IndexflowError, delay: float) -> None:
        self.stats.retries += 1
