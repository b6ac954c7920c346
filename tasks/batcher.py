"""The online embed stage: reader -> batcher -> N embedding workers -> writer, on bounded asyncio queues.

    chunks ──reader──▶ [chunk queue] ──batcher──▶ [batch queue] ──workers×N──▶ [result queue] ──writer──▶ sink / on_failed

The reader and the batcher are `tasks.micro_batch`'s; each worker sends its batches through
`tasks.guarded_call` (slot, permit, call, guards, normalization, with `tasks.retry`'s retries and
bisection). Every queue is bounded, so a slow sink stalls the workers, then the batcher, then the
reader (backpressure end to end). The options, counters and failure records are `tasks.embed_options`'s.

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
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from indexflow.tasks.chunk import Chunk
from indexflow.tasks.embed_options import EmbedFailure, EmbedOptions, EmbedStats
from indexflow.tasks.errors import ConfigError, EndpointUnreachableError, RunInterrupted
from indexflow.tasks.guarded_call import EmbedFn, GuardedCall
from indexflow.tasks.limits import AdaptiveConcurrency, RateLimiter
from indexflow.tasks.micro_batch import END, form_batches, read_chunks
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.retry import RetryPolicy

READ_BLOCK = 64  # chunks pulled per thread hop from a synchronous iterable, at least a full batch

if TYPE_CHECKING:  # numpy loads with the first answer, not before the first call
    import numpy as np

Sink = Callable[[list[Chunk], "np.ndarray"], Any]
FailedSink = Callable[[list[EmbedFailure]], Any]
OnProgress = Callable[[int, int | None], None]

DRAIN_SECONDS = 120.0  # most time a stopping run waits for calls already sent (the HTTP timeout bounds them)
# After an interrupt the user is waiting: calls on the wire get this long, then are abandoned
# (their chunks are embedded again by the next run; nothing is half-written).
INTERRUPT_DRAIN_SECONDS = 1.0


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
        self.sink = sink
        self.on_failed = on_failed
        self.on_progress = on_progress
        self.total = total
        self.limiter = limiter
        self._protected: set[asyncio.Task] = set()  # workers with a call on the wire or a result to deliver
        self.calls = GuardedCall(
            embed, limiter=limiter, policy=policy, concurrency=AdaptiveConcurrency(options.concurrency),
            stats=stats, dimensions=options.recipe.dimensions, protected=self._protected,
        )
        self.size = options.texts_per_call
        self.stats = stats
        self.settled = 0
        self.stop = stop
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
        reader = read_chunks(chunks, self.chunk_q, block=self.read_block, on_read=self._count_read)
        batcher = form_batches(
            self.chunk_q, self.batch_q, size=self.size, token_budget=self.options.call_token_budget,
            timeout=self.options.batch_timeout, consumers=self.options.concurrency, on_batch=self._count_batch,
        )
        upstream = [
            asyncio.create_task(reader, name="embed-reader"),
            asyncio.create_task(batcher, name="embed-batcher"),
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
                end = asyncio.ensure_future(self.result_q.put(END))
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
            self.stats.concurrency_shrinks = self.calls.concurrency.shrinks
        if fatal is not None:
            raise fatal
        return self.stats

    async def _stop(self, upstream: list[asyncio.Task], drain: float = DRAIN_SECONDS) -> None:
        """After a fatal error: cancel what is idle or waiting, let calls already on the wire finish.

        A call in flight was admitted (and is paid for); its result is still handed to the sink
        if it arrives within `drain` seconds.
        """
        self.calls.stop()
        for task in upstream:
            if task not in self._protected:
                task.cancel()
        _, pending = await asyncio.wait(upstream, timeout=drain)
        for task in pending:
            task.cancel()

    # -- stages ---------------------------------------------------------------------------

    def _count_read(self) -> None:
        self.stats.chunks_read += 1
        lead = self.stats.chunks_read - self.settled
        if lead > self.stats.max_reader_lead:
            self.stats.max_reader_lead = lead

    def _count_batch(self, batch: list[Chunk]) -> None:
        self.stats.batches += 1

    async def _worker(self) -> None:
        me = asyncio.current_task()
        while (batch := await self.batch_q.get()) is not END:
            outcome = await self.calls.resolve(batch)
            self._protected.add(me)
            try:
                await self.result_q.put(outcome)
            finally:
                self._protected.discard(me)
            if self.calls.stopping:
                return

    async def _writer(self) -> None:
        while (outcome := await self.result_q.get()) is not END:
            if outcome.items:
                await _call(self.sink, list(outcome.items), outcome.vectors)
                self.stats.embedded += len(outcome.items)
            if outcome.failures:
                now = datetime.now(timezone.utc)
                failed = [
                    EmbedFailure(f.item, str(f.error), type(f.error).__name__, f.attempts, now) for f in outcome.failures
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
