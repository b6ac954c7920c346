"""The Batch API route, twin of the online route (`tasks.online`): plan, submit, record, poll, collect, write.

A run, in order:
  1. INTENT rows without a job name (a crash between create and record) are looked up by display
     name: found -> adopted; not found -> closed as "not_created" (their chunks get planned again).
  2. The plan stage both routes share (`tasks.plan`) picks new/changed chunks; chunks a live job already
     covers with the same content hash are in flight and not submitted again.
  3. Parts (capped by items and tokens) go inline when the body fits the inline limit, else as a
     JSONL file keyed by chunk id. Each part: items + INTENT row -> create -> job name recorded.
  4. Every open job (this run's and earlier runs') is polled, interval growing with size and
     backing off while idle (`cadence`), until all are settled or the wait limit ends the run as
     "waiting". Each look is handed to `on_job_status`; a success rate that can no longer reach
     the threshold, or ends below it, raises an alert (`alerts`).
  5. SUCCEEDED -> results normalized and written through GroupWriter, flushed, THEN marked
     COLLECTED (a crash in between re-downloads, never re-submits). Per-item errors: code 3
     (invalid) is dead-lettered, others are retried online or dead-lettered (`item_errors`).
     FAILED/EXPIRED -> resubmitted in halves (up to `max_resubmits`), else embedded online, or
     reported as the run's error (`failed_jobs`). CANCELLED -> reported; this run does not submit
     its chunks again, a later run plans them like any unindexed chunk.
  6. Stale rows are deleted only when the whole corpus was read, nothing failed and no job is left.
A chunk of an earlier run's job that the corpus no longer wants (changed or removed meanwhile) is
not written when that job is collected.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from itertools import islice

from indexflow.tasks.batch.cadence import jittered, poll_interval
from indexflow.tasks.batch.context import BatchContext
from indexflow.tasks.batch.ledger import CANCELLED, CREATED, DONE, EXPIRED, FAILED, INTENT, RUNNING, JobRecord, Ledger
from indexflow.tasks.batch.options import BatchOptions
from indexflow.tasks.batch.outcome import BatchOutcome
from indexflow.tasks.batch.settle import Settler
from indexflow.tasks.batch.submit import Submitter
from indexflow.tasks.batch.watch import OnJobStatus, RateWatch, StatusReader
from indexflow.tasks.batch.wire import JobStatus
from indexflow.tasks.batcher import OnProgress
from indexflow.tasks.chunk import Chunk
from indexflow.tasks.gemini.batches import find_job_by_display_name
from indexflow.tasks.gemini.client import make_client
from indexflow.tasks.plan import Planner, corpus_chunks, make_planner
from indexflow.tasks.problems import ProblemLog
from indexflow.tasks.settings import Endpoint, Settings
from indexflow.tasks.table import open_store, recover_spilled
from indexflow.tasks.writer import writer_for

log = logging.getLogger("indexflow.batch")

READ_BLOCK = 256  # chunks pulled per thread hop from the corpus stream


async def run_batch(settings: Settings, endpoint: Endpoint, *, options: BatchOptions | None = None,
                    on_progress: OnProgress | None = None, total: int | None = None,
                    on_job_status: OnJobStatus | None = None,
                    wait_limit_seconds: float | None = None, run_id: str | None = None,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> BatchOutcome:
    """Embed what changed through the Batch API and write it; see the module docstring for the steps.

    `on_progress(done, total)` follows items settled across jobs; `on_job_status(status)` gets
    every look at a job. Returns with status "waiting" when `wait_limit_seconds` (else
    `options.wait_limit_seconds`) passes with jobs still alive: the next run picks them up.
    """
    opts = options or BatchOptions.from_settings(settings)
    limit = wait_limit_seconds if wait_limit_seconds is not None else opts.wait_limit_seconds
    await asyncio.to_thread(recover_spilled, settings)  # a killed run's downloaded results: not fetched again
    store = await asyncio.to_thread(open_store, settings)
    ledger = await asyncio.to_thread(Ledger.open, settings.db_uri, settings.table)
    planner = await asyncio.to_thread(make_planner, store, settings)
    problems = ProblemLog()
    out = BatchOutcome(planner.counts, problems, run_id=run_id or uuid.uuid4().hex[:12])
    ctx = BatchContext(settings, opts, store, ledger, make_client(endpoint), writer_for(store, settings), out, sleep)
    run = BatchRun(ctx, planner, clock, on_progress, on_job_status, total)
    return await run.run(limit)


class BatchRun:
    """One batch run: resume what earlier runs left, submit the plan, watch every open job until settled."""

    def __init__(self, ctx: BatchContext, planner: Planner, clock: Callable[[], float],
                 on_progress: OnProgress | None, on_job_status: OnJobStatus | None, total: int | None) -> None:
        self.ctx, self.out, self.planner, self.clock = ctx, ctx.out, planner, clock
        self.on_progress, self.total = on_progress, total
        self.submitter = Submitter(ctx)
        self.settler = Settler(ctx, self.submitter, self._wanted)
        self.reader, self.rate = StatusReader(ctx), RateWatch(ctx, on_job_status)
        self.jobs: dict[str, JobRecord] = {}  # open jobs this run watches
        self.resumed: set[str] = set()
        self.confirmed: set[str] = set()  # in-flight chunk ids the corpus still wants as submitted
        self.corpus_complete = False
        self.settled: dict[str, int] = {}  # items settled per watched job, from batchStats
        self.closed_items = 0  # items of jobs this run closed
        self.idle_polls = 0

    async def run(self, limit: float | None) -> BatchOutcome:
        ctx, out = self.ctx, self.out
        started = self.clock()
        try:
            await asyncio.to_thread(ctx.ledger.prune)
            for record in await resume_jobs(ctx):
                self.jobs[record.key] = record
                self.resumed.add(record.key)
            out.jobs_resumed = len(self.resumed)
            await self._submit_plan()
            await self._watch(None if limit is None else started + limit)
        except Exception as exc:  # fatal for the route: keep what is committed, jobs stay in the ledger
            out.error = exc
            log.error("batch run %s stopped: %s", out.run_id, exc)
        out.jobs_waiting = sorted(k for k, r in self.jobs.items() if r.live)
        if out.error is None and self.corpus_complete and not self.jobs:
            ctx.writer.delete(self.planner.stale_ids(
                delete_missing=ctx.settings.delete_missing, protected_docs=out.problems.protected_docs,
                unknown_problems=out.problems.unidentified))
        await asyncio.to_thread(ctx.writer.flush)
        out.committed_rows, out.deleted_rows = ctx.writer.committed_rows, ctx.writer.deleted_rows
        out.status = "error" if out.error is not None else "waiting" if self.jobs else "completed"
        return out

    async def _submit_plan(self) -> None:
        opts = self.ctx.opts
        # Unresolved FAILED/EXPIRED jobs count too: recovering them is their chunks' way in.
        covered = await asyncio.to_thread(self.ctx.ledger.covered, list(self.jobs))
        chunks: Iterator[Chunk] = self.planner.select(corpus_chunks(self.ctx.settings, self.out.problems))
        part: list[Chunk] = []
        tokens = 0
        while block := await asyncio.to_thread(lambda: list(islice(chunks, READ_BLOCK))):
            for chunk in block:
                if covered.get(chunk.id, (None,))[0] == chunk.content_hash:
                    self.confirmed.add(chunk.id)
                    self.out.chunks_in_flight += 1
                    continue
                if part and (len(part) >= opts.max_items_per_job or tokens + chunk.tokens > opts.max_tokens_per_job):
                    await self._submit(part)
                    part, tokens = [], 0
                part.append(chunk)
                tokens += chunk.tokens
        if part:
            await self._submit(part)
        self.corpus_complete = True

    async def _submit(self, part: list[Chunk]) -> None:
        record = await self.submitter.submit(part)
        self.jobs[record.key] = record

    async def _watch(self, deadline: float | None) -> None:
        while self.jobs:
            progressed = False
            for key, record in list(self.jobs.items()):
                if not record.live:  # FAILED/EXPIRED left unresolved by an earlier run
                    await self._recover(record, record.state)
                    continue
                status = await self.reader.status(record)
                if status is None:
                    continue
                if status.settled != self.settled.get(key):
                    self.settled[key], progressed = status.settled, True
                await self.rate.look(record, status)
                if status.state == "RUNNING" and record.state == CREATED:
                    self.jobs[key] = await asyncio.to_thread(self.ctx.ledger.update, key, state=RUNNING)
                if status.done:
                    await self._finish(self.jobs[key], status)
            self._report()
            if not self.jobs:
                return
            if deadline is not None and self.clock() >= deadline:
                log.info("wait limit reached with %d job(s) alive; a later run collects them", len(self.jobs))
                return
            self.idle_polls = 0 if progressed else self.idle_polls + 1
            largest = max(r.items for r in self.jobs.values())
            interval = poll_interval(largest, self.idle_polls, self.ctx.opts.poll_seconds)
            interval = jittered(interval, self.ctx.opts.poll_jitter)
            if deadline is not None:
                interval = max(0.0, min(interval, deadline - self.clock()))
            await self.ctx.sleep(interval)

    def _report(self) -> None:
        done = self.closed_items + sum(self.settled.values())
        total = self.total if self.total is not None else self.out.chunks_submitted + self.out.chunks_in_flight
        log.info("batch progress: %d/%s items settled across %d job(s)", done, total, len(self.jobs))
        if self.on_progress is not None:
            self.on_progress(done, total)

    async def _finish(self, record: JobRecord, status: JobStatus) -> None:
        ledger, out = self.ctx.ledger, self.out
        if status.state == "SUCCEEDED":
            record = await asyncio.to_thread(ledger.update, record.key, state=DONE, output_file=status.output_file,
                                             succeeded=status.succeeded, failed=status.failed)
            await self.settler.collect(record, status, resumed=record.key in self.resumed)
            await self._close(record.key)
        elif status.state == "CANCELLED":
            await asyncio.to_thread(ledger.update, record.key, state=CANCELLED, resolution="reported")
            out.jobs_cancelled += 1
            out.cancelled_chunks += record.items
            out.failures.append(f"job {record.job_name} ({record.key}) was cancelled: its {record.items} "
                                "chunk(s) are not indexed by this run; the next run submits them again")
            await self._close(record.key)
        else:
            state = EXPIRED if status.state == "EXPIRED" else FAILED
            record = await asyncio.to_thread(ledger.update, record.key, state=state, error=status.error)
            await self._recover(record, state)

    async def _recover(self, record: JobRecord, state: str) -> None:
        halves = await self.settler.recover(record, state)
        self.jobs.update((half.key, half) for half in halves)
        await self._close(record.key, settled=not halves)  # a resubmitted job's items are counted by its parts

    async def _close(self, key: str, *, settled: bool = True) -> None:
        record = self.jobs.pop(key, None)
        if settled and record is not None:
            self.closed_items += record.items
        self.settled.pop(key, None)
        await asyncio.to_thread(self.ctx.ledger.forget_items, [key])

    async def _wanted(self, record: JobRecord) -> list[Chunk]:
        """The job's chunks the corpus still wants as submitted (all of them for this run's own jobs)."""
        chunks = await asyncio.to_thread(self.ctx.ledger.items, record.key)
        if record.key in self.resumed and self.corpus_complete:
            chunks = [c for c in chunks if c.id in self.confirmed]  # changed or removed since submission
        return chunks


async def resume_jobs(ctx: BatchContext) -> list[JobRecord]:
    """The open jobs earlier runs left, with every INTENT resolved: adopted by display name, or closed."""
    ledger, records = ctx.ledger, []
    for record in await asyncio.to_thread(ledger.jobs, open_only=True):
        if record.state == INTENT and record.job_name is None:
            name = await find_job_by_display_name(ctx.client, record.key, since=record.created_at,
                                                  deadline_seconds=ctx.deadline)
            if name is None:  # the create never reached the server: the chunks get planned again
                await asyncio.to_thread(ledger.update, record.key, resolution="not_created",
                                        error="no job with this display name exists")
                continue
            record = await asyncio.to_thread(ledger.update, record.key, state=CREATED, job_name=name)
            log.info("adopted job %s (%s) created before a crash", name, record.key)
        records.append(record)
    return records
