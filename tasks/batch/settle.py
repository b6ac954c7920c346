"""Settling a finished job: a SUCCEEDED job's vectors written (then marked COLLECTED), a FAILED or
EXPIRED one resubmitted in halves, embedded online or reported, and failed items retried or dead-lettered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from indexflow.tasks.batch.context import BatchContext
from indexflow.tasks.batch.ledger import COLLECTED, EXPIRED, JobRecord
from indexflow.tasks.batch.submit import Submitter
from indexflow.tasks.batch.wire import ItemError, JobResults, JobStatus, file_results, inline_results
from indexflow.tasks.batcher import embed_chunks
from indexflow.tasks.embed_options import EmbedOptions, EmbedStats
from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import BatchJobError
from indexflow.tasks.gemini.batches import inline_responses
from indexflow.tasks.gemini.files import download
from indexflow.tasks.normalize import find_bad_rows, l2_normalize

if TYPE_CHECKING:
    import numpy as np

    from indexflow.tasks.dead_letters import FailedItem

log = logging.getLogger("indexflow.batch")

Wanted = Callable[[JobRecord], Awaitable[list[Chunk]]]


class Settler:
    """Turns finished jobs into committed rows, new jobs or reported failures."""

    def __init__(self, ctx: BatchContext, submitter: Submitter, wanted: Wanted) -> None:
        self.ctx, self.submitter, self.wanted = ctx, submitter, wanted

    async def collect(self, record: JobRecord, status: JobStatus, *, resumed: bool) -> None:
        """Write a SUCCEEDED job's vectors, settle its failed items, then mark it COLLECTED."""
        ctx, out = self.ctx, self.ctx.out
        all_chunks = await asyncio.to_thread(ctx.ledger.items, record.key)
        if resumed and all_chunks and await asyncio.to_thread(self._committed, all_chunks):
            # Written before a crash (its spill was recovered) but not yet marked: no download again.
            await asyncio.to_thread(ctx.ledger.update, record.key, state=COLLECTED, retried_online=0, dead_lettered=0)
            out.jobs_collected += 1
            log.info("collected %s: its %d rows were already committed (recovered)", record.key, len(all_chunks))
            return
        results = _only(await self._results(record, status, all_chunks), {c.id for c in await self.wanted(record)})
        bad = find_bad_rows(results.vectors) if len(results.chunks) else {}
        good = [i for i in range(len(results.chunks)) if i not in bad]
        errors = results.errors + [ItemError(results.chunks[i], None, f"unusable vector ({why})") for i, why in bad.items()]
        if good:
            chunks = [results.chunks[i] for i in good]
            vectors = l2_normalize(results.vectors[good], expected_dim=ctx.recipe.dimensions)
            await asyncio.to_thread(ctx.writer.add, chunks, vectors)
            out.chunks_embedded_batch += len(chunks)
            out.batch_tokens += sum(c.tokens for c in chunks)
        online = ctx.opts.item_errors == "online"
        retry = [e.chunk for e in errors if not e.terminal and online]
        dead = [e for e in errors if e.terminal or not online]
        out.item_failures += len(errors)
        retried, dead_online = await self.embed_online(retry)
        await self.dead_letter([_failed_item(e) for e in dead])
        await asyncio.to_thread(ctx.writer.flush)  # committed before the ledger says so
        await asyncio.to_thread(ctx.ledger.update, record.key, state=COLLECTED, retried_online=retried,
                                dead_lettered=len(dead) + dead_online)
        out.retried_online += retried
        out.jobs_collected += 1
        log.info("collected %s: %d written, %d retried online, %d dead-lettered", record.key, len(good),
                 retried, len(dead) + dead_online)

    async def _results(self, record: JobRecord, status: JobStatus, chunks: list[Chunk]) -> JobResults:
        dim = self.ctx.recipe.dimensions
        if record.route == "inline":
            return inline_results(inline_responses(status.payload), chunks, dim, job=status.name)
        return file_results(await download(self.ctx.client, status.output_file), chunks, dim)

    def _committed(self, chunks: list[Chunk]) -> bool:
        """Whether every one of `chunks` is in the table with its content hash."""
        stored = self.ctx.store.existing_hashes({c.doc_id for c in chunks})
        return all(stored.get(c.id) == c.content_hash for c in chunks)

    async def recover(self, record: JobRecord, state: str) -> list[JobRecord]:
        """A FAILED or EXPIRED job, as configured: resubmitted in halves (their records are returned),
        embedded online, or reported as the run's error."""
        ctx, out = self.ctx, self.ctx.out
        if state == EXPIRED:
            out.jobs_expired += 1
        else:
            out.jobs_failed += 1
        chunks = await self.wanted(record)
        message = f"job {record.job_name} ({record.key}) ended {state}: {record.error or 'no detail'}"
        mode = ctx.opts.failed_jobs
        if mode == "fail":
            await asyncio.to_thread(ctx.ledger.update, record.key, resolution="abandoned")
            out.failures.append(message + "; its chunks are not indexed (batch_failed_jobs='fail')")
            out.error = out.error or BatchJobError(message, job=record.job_name, state=state)
            return []
        if mode == "resubmit" and record.generation < ctx.opts.max_resubmits and chunks:
            # Resolved first: a crash before the halves exist leaves the chunks to be planned again.
            await asyncio.to_thread(ctx.ledger.update, record.key, resolution="resubmitted")
            middle = (len(chunks) + 1) // 2
            halves = [await self.submitter.submit(half, parent=record.key, generation=record.generation + 1)
                      for half in (chunks[:middle], chunks[middle:]) if half]
            out.jobs_resubmitted += 1
            log.warning("%s; resubmitted in smaller parts", message)
            return halves
        embedded, dead = await self.embed_online(chunks)
        await asyncio.to_thread(ctx.writer.flush)
        await asyncio.to_thread(ctx.ledger.update, record.key, resolution="online", retried_online=embedded,
                                dead_lettered=dead)
        out.online_fallback_chunks += len(chunks)
        log.warning("%s; embedded its %d chunk(s) online", message, len(chunks))
        return []

    async def embed_online(self, chunks: Sequence[Chunk]) -> tuple[int, int]:
        """Embed chunks through the embed stage into the same writer; returns (embedded, dead-lettered)."""
        if not chunks:
            return 0, 0
        ctx = self.ctx
        indexed = await asyncio.to_thread(ctx.store.existing_hashes, {c.doc_id for c in chunks})
        chunks = [c for c in chunks if indexed.get(c.id) != c.content_hash]  # committed before a crash
        dead = 0

        async def sink(part: list[Chunk], vectors: np.ndarray) -> None:
            await asyncio.to_thread(ctx.writer.add, part, vectors)

        async def on_failed(items) -> None:
            from indexflow.tasks.dead_letters import FailedItem

            nonlocal dead
            dead += len(items)
            await self.dead_letter([FailedItem.of(i) for i in items])

        stats = EmbedStats()
        try:
            await embed_chunks(chunks, client=ctx.client, options=EmbedOptions.from_settings(ctx.settings),
                               sink=sink, on_failed=on_failed, stats=stats)
        finally:  # counted even when the online part stops the run
            ctx.out.add_embed(stats)
        return stats.embedded, dead

    async def dead_letter(self, items: list[FailedItem]) -> None:
        """Record `items` in the dead-letter table and name the first of them in the run's failures."""
        if items:
            out = self.ctx.out
            await asyncio.to_thread(self.ctx.store.record_failures, items)
            out.dead_lettered += len(items)
            out.failures.extend(f"{i.chunk_id} ({i.source}): {i.error}" for i in items[: max(0, 20 - len(out.failures))])


def _failed_item(error: ItemError) -> FailedItem:
    from indexflow.tasks.dead_letters import FailedItem

    return FailedItem.from_chunk(error.chunk, f"batch item error {error.code}: {error.message}", 1,
                                 error_type="BatchItemError")


def _only(results: JobResults, wanted: set[str]) -> JobResults:
    """The results restricted to chunk ids in `wanted`."""
    keep = [i for i, c in enumerate(results.chunks) if c.id in wanted]
    return JobResults([results.chunks[i] for i in keep], results.vectors[keep],
                      [e for e in results.errors if e.chunk.id in wanted])
