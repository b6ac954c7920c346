"""The online route: corpus -> chunks -> plan filter -> micro-batcher -> group writer -> stale deletes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from indexflow.tasks.batcher import default_embed, embed_chunks
from indexflow.tasks.chunk import Chunk
from indexflow.tasks.embed_options import EmbedFailure, EmbedOptions, EmbedStats
from indexflow.tasks.errors import EndpointUnreachableError, StoreError
from indexflow.tasks.limits import RateLimiter
from indexflow.tasks.plan import PlanCounts, Planner, corpus_chunks, make_planner
from indexflow.tasks.problems import ProblemLog
from indexflow.tasks.settings import Endpoint, Settings
from indexflow.tasks.spill import SpillLog, spill_for
from indexflow.tasks.table import nothing_written_yet, open_store, recover_spilled

if TYPE_CHECKING:  # LanceDB (and numpy) load on first use: a first run sends its first call meanwhile
    import numpy as np

    from indexflow.tasks.store import VectorStore
    from indexflow.tasks.writer import GroupWriter


@dataclass
class OnlineOutcome:
    """What the online route did; small enough to return from a Prefect task."""

    plan: PlanCounts
    problems: ProblemLog
    embed: EmbedStats
    committed_rows: int = 0
    deleted_rows: int = 0
    dead_lettered: int = 0
    failures: list[str] = field(default_factory=list)
    error: BaseException | None = None


async def run_online(settings: Settings, endpoint: Endpoint | None, *,
                     on_progress: Callable[[int, int | None], None] | None = None,
                     total: int | None = None, stop: asyncio.Event | None = None) -> OnlineOutcome:
    """Embed what changed and write it; on a fatal error (or `stop`) keep what was committed and report it.

    The table is the record of progress: a re-run after any failure plans again from what is
    committed, so nothing is embedded twice and nothing is lost. When nothing was ever written
    (`nothing_written_yet`) there is nothing to compare with, so the table opens while the first
    calls are already on their way.
    """
    await asyncio.to_thread(recover_spilled, settings)  # a killed run's vectors first: they count as committed
    fresh = nothing_written_yet(settings)
    # On a first run LanceDB loads once the first call is on the wire: before, its import would
    # only slow that call down; after, it costs nothing while the call waits for its answer.
    first_call = asyncio.Event()
    if not fresh:
        first_call.set()

    # Made before the table opens: a first run's answers are on disk while LanceDB still loads.
    spill = spill_for(settings)

    async def open_table() -> tuple[VectorStore, GroupWriter]:
        await first_call.wait()
        return await asyncio.to_thread(_open_for_writing, settings, spill)

    opening = asyncio.ensure_future(open_table())
    if fresh:
        planner = Planner({})
    else:
        store, _ = await opening
        planner = await asyncio.to_thread(make_planner, store, settings)
    problems = ProblemLog()
    failures: list[str] = []
    dead = 0

    guard = threading.Lock()  # the sink and the clock below commit from worker threads

    def locked(fn: Callable, *args: object, **kwargs: object):
        with guard:
            return fn(*args, **kwargs)

    # Rows that arrived while the table was still opening: spilled already, handed to the writer
    # once it exists. The sink does not wait for the opening, or answers would queue in memory.
    early: list = []

    def hand_over(writer: GroupWriter) -> None:
        while early:
            writer.add_batch(early.pop(0), spilled=spill is not None)

    async def sink(chunks: list[Chunk], vectors: np.ndarray) -> None:
        if opening.done():  # one thread hop: spill and buffer
            _, writer = opening.result()
            await asyncio.to_thread(locked, lambda: (hand_over(writer), writer.add(chunks, vectors)))
            return
        early.append(await asyncio.to_thread(locked, spilled_rows, chunks, vectors))

    def spilled_rows(chunks: list[Chunk], vectors: np.ndarray):
        from indexflow.tasks.rows import rows_from

        batch = rows_from(chunks, vectors)
        if spill is not None:
            spill.append(batch)
        return batch

    async def commit_on_time() -> None:
        # A throttled run may go a minute between results; without this its last group would
        # wait that long, and a killed or cancelled run would lose it. Shielded: a cancelled waiter
        # (the clock, a stopping stage) must not cancel the opening itself.
        _, writer = await asyncio.shield(opening)
        while True:
            await asyncio.sleep(settings.write_group_seconds / 2)
            try:
                await asyncio.to_thread(locked, lambda: (hand_over(writer), writer.commit_if_due()))
            except Exception:  # the final flush commits (and reports) whatever this could not
                pass

    async def on_failed(items: list[EmbedFailure]) -> None:
        from indexflow.tasks.dead_letters import FailedItem

        nonlocal dead
        store, _ = await asyncio.shield(opening)
        dead += len(items)
        failures.extend(f"{i.chunk.id} ({i.chunk.source}): {i.error}" for i in items[: max(0, 20 - len(failures))])
        rows = [FailedItem.from_chunk(i.chunk, i.error, i.attempts, i.failed_at) for i in items]
        await asyncio.to_thread(store.record_failures, rows)

    options = EmbedOptions.from_settings(settings)
    if endpoint is None:  # the plan found nothing to embed: no client (and no SDK import) is needed
        async def embed(chunks):
            raise StoreError("the corpus changed while this run read it (a chunk to embed appeared after "
                             "planning found none); run again")
    else:
        from indexflow.tasks.gemini.client import make_client  # imports google-genai: only when there is work

        call = default_embed(make_client(endpoint), options.recipe, deadline_seconds=options.call_deadline_seconds)

        async def embed(chunks):
            first_call.set()
            return await call(chunks)
    error: BaseException | None = None
    stats = EmbedStats()  # filled in place: a stopped stage still reports what it spent
    limiter = RateLimiter(options.limits)
    watch = getattr(on_progress, "watch", None)
    if watch is not None:  # a terminal progress bar shows when the limiter holds calls
        watch(limiter)
    clock = asyncio.ensure_future(commit_on_time())
    try:
        await embed_chunks(
            planner.select(corpus_chunks(settings, problems)),
            embed=embed, options=options, sink=sink, on_failed=on_failed,
            on_progress=on_progress, total=total, stats=stats, limiter=limiter, stop=stop,
        )
    except EndpointUnreachableError as exc:
        error = exc.add_facts(base_url=endpoint.base_url or "https://generativelanguage.googleapis.com")
    except Exception as exc:  # fatal for the stage: commit what we have, then let the caller decide
        error = exc
    finally:
        first_call.set()  # a run that sent no call still opens the table, to commit and delete
        clock.cancel()
        await asyncio.gather(clock, return_exceptions=True)
    _, writer = await opening  # a table that cannot be opened fails the stage here, nothing written
    await asyncio.to_thread(locked, hand_over, writer)
    # Stale rows are deleted only when the whole corpus was seen; after a failure the stream
    # stopped early and everything unseen would look deleted.
    if error is None:
        writer.delete(planner.stale_ids(delete_missing=settings.delete_missing,
                                        protected_docs=problems.protected_docs,
                                        unknown_problems=problems.unidentified))
    await asyncio.to_thread(locked, writer.flush)
    return OnlineOutcome(planner.counts, problems, stats, writer.committed_rows, writer.deleted_rows,
                         dead, failures, error)


def _open_for_writing(settings: Settings, spill: SpillLog | None = None) -> tuple[VectorStore, GroupWriter]:
    from indexflow.tasks.writer import writer_for

    store = open_store(settings)
    return store, writer_for(store, settings, spill)
