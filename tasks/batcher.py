"""The online embed stage: reader -> batcher -> N embedding workers -> writer, on bounded asyncio queues.

    chunks ──reader──▶ [chunk queue] ──batcher──▶ [batch queue] ──workers×N──▶ [result queue] ──writer──▶ sink / on_failed

Each worker: concurrency slot -> rate-limiter permit -> one API call -> guards -> L2 normalize,
with retries, bisection of 400s and dead letters from `tasks.retry`. Every queue is bounded, so
a slow sink stalls the workers, then the batcher, then the reader (backpressure end to end).

Contract of `embed_chunks` (the caller owns flushing whatever the sink buffers):
- `sink(chunks, vectors)` gets one batch at a time: `vectors[i]` is the normalized vector of
  `chunks[i]`, always built together, never matched by position across batches. It may be sync
  (run in a worker thread, e.g. a LanceDB writer) or async. Calls are sequential.
- `on_failed(items)` gets the items that still failed after retries and bisection; the run goes on.
- On success it returns `EmbedStats`. On a fatal error (AuthError, DailyQuotaError, a ConfigError,
  a sink error, an unexpected bug) every stage stops; results already computed are still handed
  to the sink (unless the sink itself failed), then the error is re-raised. Either way, every
  vector the sink received came in a complete, paired batch.
- The counters are kept in `stats` when the caller passes one: a stopped run still reports the
  calls, retries, 429s and tokens it spent (the raised error does not carry them).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import islice
from typing import TYPE_CHECKING, Any

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import (
    BadRequestError,
    BadResponseError,
    ConfigError,
    DailyQuotaError,
    EndpointUnreachableError,
    IndexflowError,
    RateLimitedError,
    RunInterrupted,
    TransientAPIError,
)
from indexflow.tasks.limits import AdaptiveConcurrency, RateLimiter
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.retry import BatchOutcome, Failure, RetryPolicy, embed_resolving
from indexflow.tasks.settings import Limits, Settings

MAX_BATCH = 100  # texts per batchEmbedContents call, a hard API limit
READ_BLOCK = 64  # chunks pulled per thread hop from a synchronous iterable, at least a full batch

if TYPE_CHECKING:  # numpy loads with the first answer, not before the first call
    import numpy as np

EmbedFn = Callable[[Sequence[Chunk]], Awaitable["np.ndarray"]]
Sink = Callable[[list[Chunk], "np.ndarray"], Any]
FailedSink = Callable[[list["FailedItem"]], Any]
OnProgress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class FailedItem:
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


_END = object()
DRAIN_SECONDS = 120.0  # most time a stopping run waits for calls already sent (the HTTP timeout bounds them)
# After an interrupt the user is waiting: calls on the wire get this long, then are abandoned
# (their chunks are embedded again by the next run; nothing is half-written).
INTERRUPT_DRAIN_SECONDS = 1.0
# Connection failures before the endpoint has answered once mean a wrong URL or no network, not
# an outage: give up after this many instead of retrying for minutes.
CONNECT_ATTEMPTS = 3


class _Stopped(Exception):
    """Raised inside a worker instead of starting a call once the run is stopping."""


def default_embed(client: Any, recipe: Recipe, *, deadline_seconds: float | None = None) -> EmbedFn:
    """The real call: one batchEmbedContents request through google-genai, titles per item."""
    from indexflow.tasks.gemini.embed import embed_batch  # the boundary that imports google-genai

    async def embed(chunks: Sequence[Chunk]) -> np.ndarray:
        titles = [c.title for c in chunks] if recipe.send_title else None
        return await embed_batch(client, [c.text for c in chunks], recipe=recipe, titles=titles,
                                 deadline_seconds=deadline_seconds)

    return embed


async def embed_chunks(
    chunks: Iterable[Chunk] | AsyncIterable[Chunk],
    *,
    client: Any = None,
    options: EmbedOptions,
    sink: Sink,
    on_failed: FailedSink,
    on_progress: OnProgress | None = None,
    total: int | None = None,
    embed: EmbedFn | None = None,
    limiter: RateLimiter | None = None,
    policy: RetryPolicy | None = None,
    stats: EmbedStats | None = None,
    stop: asyncio.Event | None = None,
) -> EmbedStats:
    """Embed every chunk once and hand (chunks, normalized vectors) to `sink`; see the module docstring.

    `client` is a google-genai client (from `tasks.gemini.client.make_client`); `embed` replaces the
    call itself (same contract as `tasks.gemini.embed.embed_batch`, raising IndexflowError). `stats`,
    if given, is filled in place and returned, so its counters survive a fatal error. Setting
    `stop` ends the stage like a fatal error, RunInterrupted, with a short drain.
    """
    if embed is None:
        if client is None:
            raise ConfigError("embed_chunks needs a client (tasks.gemini.client.make_client) or an embed function")
        embed = default_embed(client, options.recipe)
    pipeline = _Pipeline(
        options=options,
        embed=embed,
        sink=sink,
        on_failed=on_failed,
        on_progress=on_progress,
        total=total,
        limiter=limiter or RateLimiter(options.limits),
        policy=policy or RetryPolicy(max_attempts=options.max_attempts, max_elapsed=options.max_retry_seconds),
        stats=EmbedStats() if stats is None else stats,
        stop=stop,
    )
    return await pipeline.run(chunks)


class _Pipeline:
    def __init__(
        self,
        *,
        options: EmbedOptions,
        embed: EmbedFn,
        sink: Sink,
        on_failed: FailedSink,
        on_progress: OnProgress | None,
        total: int | None,
        limiter: RateLimiter,
        policy: RetryPolicy,
        stats: EmbedStats,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.options = options
        self.embed = embed
        self.sink = sink
        self.on_failed = on_failed
        self.on_progress = on_progress
        self.total = total
        self.limiter = limiter
        self.policy = policy
        self.concurrency = AdaptiveConcurrency(options.concurrency)
        self.size = options.texts_per_call
        self.stats = stats
        self.settled = 0
        self.stopping = False
        self.stop = stop
        self.answered = False  # the endpoint has sent an HTTP answer (any status) this run
        self.connect_failures = 0
        self._protected: set[asyncio.Task] = set()  # workers with a call on the wire or a result to deliver
        n = options.concurrency
        self.chunk_q: asyncio.Queue = asyncio.Queue(maxsize=2 * self.size)
        self.batch_q: asyncio.Queue = asyncio.Queue(maxsize=n)
        self.result_q: asyncio.Queue = asyncio.Queue(maxsize=n)
        # A hop brings at least a whole batch: a batch cut short by `batch_timeout` while a slow
        # (loaded) hop was still reading would spend a request on fewer texts than it could carry.
        self.read_block = max(READ_BLOCK, self.size)
        # read block + chunk queue + batch being formed + batch queue + in flight + result queue + in the sink
        self.stats.reader_lead_bound = self.read_block + 2 * self.size + self.size * (1 + n + n + n + 1)

    async def run(self, chunks: Iterable[Chunk] | AsyncIterable[Chunk]) -> EmbedStats:
        started = time.monotonic()
        upstream = [
            asyncio.create_task(self._reader(chunks), name="embed-reader"),
            asyncio.create_task(self._batcher(), name="embed-batcher"),
            *(asyncio.create_task(self._worker(), name=f"embed-worker-{i}") for i in range(self.options.concurrency)),
        ]
        writer = asyncio.create_task(self._writer(), name="embed-writer")
        stopped = asyncio.create_task(self.stop.wait()) if self.stop is not None else None
        fatal: BaseException | None = None
        gathered = asyncio.gather(*upstream)
        # Its outcome is the tasks' own, handled below; unread, asyncio would log a cancelled
        # worker's traceback when the loop lives on (a flow run that was stopped).
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            await asyncio.wait({gathered, writer} | ({stopped} if stopped else set()),
                               return_when=asyncio.FIRST_COMPLETED)
            if stopped is not None and stopped.done() and not gathered.done() and not writer.done():
                fatal = RunInterrupted("the run was interrupted", signal=getattr(self.stop, "signal", None))
                await self._stop(upstream, drain=INTERRUPT_DRAIN_SECONDS)
            elif writer.done():  # the writer ends early only by failing: nothing can be delivered any more
                fatal = writer.exception() or RuntimeError("the embed writer stopped early")
                for task in upstream:
                    task.cancel()
            elif gathered.exception() is not None:
                fatal = gathered.exception()
                # Nothing is on the wire to wait for when no connection could be made at all.
                unreachable = isinstance(fatal, EndpointUnreachableError)
                await self._stop(upstream, drain=INTERRUPT_DRAIN_SECONDS if unreachable else DRAIN_SECONDS)
            await asyncio.gather(*upstream, return_exceptions=True)
            if not writer.done():
                # Let the writer hand over every finished batch before stopping.
                end = asyncio.ensure_future(self.result_q.put(_END))
                await asyncio.wait({end, writer}, return_when=asyncio.FIRST_COMPLETED)
                end.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            if fatal is None and writer.exception() is not None:
                fatal = writer.exception()
        finally:
            for task in (*upstream, writer, *([stopped] if stopped else [])):
                task.cancel()
            self.stats.elapsed_seconds = time.monotonic() - started
            self.stats.limiter_wait_seconds = self.limiter.waited_seconds
            self.stats.concurrency_shrinks = self.concurrency.shrinks
        if fatal is not None:
            raise fatal
        return self.stats

    async def _stop(self, upstream: list[asyncio.Task], drain: float = DRAIN_SECONDS) -> None:
        """After a fatal error: cancel what is idle or waiting, let calls already on the wire finish.

        A call in flight was admitted (and is paid for); its result is still handed to the sink
        if it arrives within `drain` seconds.
        """
        self.stopping = True
        for task in upstream:
            if task not in self._protected:
                task.cancel()
        _, pending = await asyncio.wait(upstream, timeout=drain)
        for task in pending:
            task.cancel()

    # -- stages ---------------------------------------------------------------------------

    async def _reader(self, chunks: Iterable[Chunk] | AsyncIterable[Chunk]) -> None:
        if isinstance(chunks, AsyncIterable):
            async for chunk in chunks:
                await self._put_chunk(chunk)
        else:
            iterator = iter(chunks)
            while True:
                # The source may do file I/O and parsing: pull a block per thread hop, off the loop.
                block = await asyncio.to_thread(lambda: list(islice(iterator, self.read_block)))
                if not block:
                    break
                for chunk in block:
                    await self._put_chunk(chunk)
        await self.chunk_q.put(_END)

    async def _put_chunk(self, chunk: Chunk) -> None:
        self.stats.chunks_read += 1
        lead = self.stats.chunks_read - self.settled
        if lead > self.stats.max_reader_lead:
            self.stats.max_reader_lead = lead
        await self.chunk_q.put(chunk)

    async def _batcher(self) -> None:
        """Close a batch at `size` texts, at the token budget, or `batch_timeout` after its first chunk."""
        loop = asyncio.get_running_loop()
        budget = self.options.call_token_budget
        batch: list[Chunk] = []
        tokens = 0
        deadline = 0.0
        finished = False
        while not finished:
            if not self.chunk_q.empty():
                item = self.chunk_q.get_nowait()
            elif batch:
                try:
                    item = await asyncio.wait_for(self.chunk_q.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    item = None
            else:
                item = await self.chunk_q.get()
            if item is _END:
                finished = True
            elif item is not None:
                if batch and tokens + item.tokens > budget:
                    await self._emit(batch)
                    batch, tokens = [], 0
                if not batch:
                    deadline = loop.time() + self.options.batch_timeout
                batch.append(item)
                tokens += item.tokens
                if len(batch) < self.size and tokens < budget:
                    continue
            if batch:
                await self._emit(batch)
                batch, tokens = [], 0
        for _ in range(self.options.concurrency):
            await self.batch_q.put(_END)

    async def _emit(self, batch: list[Chunk]) -> None:
        self.stats.batches += 1
        await self.batch_q.put(batch)

    async def _worker(self) -> None:
        me = asyncio.current_task()
        while (batch := await self.batch_q.get()) is not _END:
            outcome = await self._embed_batch(batch)
            self._protected.add(me)
            try:
                await self.result_q.put(outcome)
            finally:
                self._protected.discard(me)
            if self.stopping:
                return

    async def _embed_batch(self, batch: list[Chunk]) -> BatchOutcome[Chunk]:
        tokens = sum(c.tokens for c in batch)
        try:
            self.limiter.check_fits(len(batch), tokens)
        except ConfigError as error:
            if len(batch) > 1:
                raise
            # One chunk larger than a whole minute of quota can never be sent: dead-letter it.
            return BatchOutcome([], None, [Failure(batch[0], error, 0)])
        outcome = await embed_resolving(
            batch, self._attempt, policy=self.policy, limiter=self.limiter, on_retry=self._on_retry
        )
        self.stats.bisections += outcome.bisections
        return outcome

    async def _attempt(self, part: Sequence[Chunk]) -> np.ndarray:
        """One guarded API call: concurrency slot, quota permit, call, guards, normalization."""
        tokens = sum(c.tokens for c in part)
        generation = await self.concurrency.acquire()
        try:
            permit = await self.limiter.acquire(len(part), tokens)
            me = asyncio.current_task()
            sent = True
            try:
                if self.stopping:
                    raise _Stopped()
                self.stats.calls += 1
                self.stats.texts_sent += len(part)
                self.stats.tokens_sent += tokens
                self._protected.add(me)
                raw = await self.embed(part)
                self.answered = True
            except IndexflowError as error:
                if getattr(error, "reason", None) == "connect":
                    sent = False  # refused before a byte was sent: the server counted nothing
                if self.stopping:
                    raise _Stopped() from None  # no retries once the run is stopping
                self._count_error(error, generation)
                raise
            finally:
                self._protected.discard(me)
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
            vectors = l2_normalize(raw, expected_dim=self.options.recipe.dimensions)
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

    async def _writer(self) -> None:
        while (outcome := await self.result_q.get()) is not _END:
            if outcome.items:
                await _call(self.sink, list(outcome.items), outcome.vectors)
                self.stats.embedded += len(outcome.items)
            if outcome.failures:
                now = datetime.now(timezone.utc)
                failed = [
                    FailedItem(f.item, str(f.error), type(f.error).__name__, f.attempts, now) for f in outcome.failures
                ]
                await _call(self.on_failed, failed)
                self.stats.dead_lettered += len(failed)
            self.settled += len(outcome.items) + len(outcome.failures)
            if self.on_progress is not None:
                self.on_progress(self.settled, self.total)


async def _call(fn: Callable[..., Any], *args: Any) -> None:
    """Await an async callable; run a sync one in a thread so blocking I/O never stalls the loop."""
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
        await fn(*args)
    else:
        await asyncio.to_thread(fn, *args)
