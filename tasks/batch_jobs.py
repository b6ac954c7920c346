"""The Batch API route, twin of `tasks.online.run_online`: plan, submit, record, poll, collect, write.

A run, in order:
  1. INTENT rows without a job name (a crash between create and record) are looked up by display
     name: found -> adopted; not found -> closed as "not_created" (their chunks get planned again).
  2. The same Planner as the online route picks new/changed chunks; chunks a live job already
     covers with the same content hash are in flight and not submitted again.
  3. Parts (capped by items and tokens) go inline when the body fits the inline limit, else as a
     JSONL file keyed by chunk id. Each part: items + INTENT row -> create -> job name recorded.
  4. Every open job (this run's and earlier runs') is polled, interval growing with size and
     backing off while idle, until all are settled or the wait limit ends the run as "waiting".
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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Literal

import numpy as np

# Re-exported: the route's whole public API is importable from here.
from indexflow.tasks.batch_admin import cancel_jobs, cancel_live_jobs, job_status  # noqa: F401
from indexflow.tasks.batch_options import BatchOptions, choose_route, estimate_turnaround  # noqa: F401
from indexflow.tasks.batch_results import (
    ItemError, JobResults, JobStatus, file_results, get_status, inline_results, poll_interval, sdk_job,
)
from indexflow.tasks.batch_submit import (
    body_size, create_from_file, create_inline, create_once, find_job_by_display_name, inline_body,
    is_payload_too_large, jsonl_input, upload_jsonl,
)
from indexflow.tasks.batcher import embed_chunks
from indexflow.tasks.chunk import Chunk
from indexflow.tasks.dead_letters import FailedItem
from indexflow.tasks.embed_options import EmbedOptions, EmbedStats
from indexflow.tasks.errors import BadRequestError, BatchJobError, ConfigError, IndexflowError
from indexflow.tasks.gemini import classify, make_client
from indexflow.tasks.ledger import (
    CANCELLED, COLLECTED, CREATED, DONE, EXPIRED, FAILED, INTENT, RUNNING, JobRecord, Ledger, job_key,
)
from indexflow.tasks.normalize import find_bad_rows, l2_normalize
from indexflow.tasks.online import corpus_chunks, make_planner, open_store, recover_spilled
from indexflow.tasks.plan import PRICE_PER_MILLION_TOKENS, PlanCounts, Planner
from indexflow.tasks.problems import ProblemLog
from indexflow.tasks.settings import Endpoint, Settings
from indexflow.tasks.store import VectorStore
from indexflow.tasks.writer import writer_for

log = logging.getLogger("indexflow.batch")

Progress = Callable[[int, int | None], None]


@dataclass
class BatchOutcome:
    """What the batch route did; mirrors OnlineOutcome where the fields apply."""

    plan: PlanCounts
    problems: ProblemLog
    embed: EmbedStats = field(default_factory=EmbedStats)  # the online part: item retries and fallbacks
    status: Literal["completed", "waiting", "error"] = "completed"
    committed_rows: int = 0
    deleted_rows: int = 0
    dead_lettered: int = 0
    failures: list[str] = field(default_factory=list)
    error: BaseException | None = None
    run_id: str = ""
    jobs_created: int = 0
    jobs_resumed: int = 0
    jobs_collected: int = 0
    jobs_failed: int = 0
    jobs_expired: int = 0
    jobs_cancelled: int = 0
    jobs_resubmitted: int = 0
    jobs_waiting: list[str] = field(default_factory=list)  # keys of jobs still alive at the end
    chunks_in_flight: int = 0  # planned chunks a live job from an earlier run already covers
    chunks_submitted: int = 0
    chunks_embedded_batch: int = 0
    item_failures: int = 0
    retried_online: int = 0
    online_fallback_chunks: int = 0
    cancelled_chunks: int = 0
    batch_tokens: int = 0
    online_tokens: int = 0

    @property
    def batch_cost_usd(self) -> float:
        return self.batch_tokens * PRICE_PER_MILLION_TOKENS["batch"] / 1e6

    @property
    def online_equivalent_cost_usd(self) -> float:
        """What the batch-embedded tokens would have cost through the online API."""
        return self.batch_tokens * PRICE_PER_MILLION_TOKENS["online"] / 1e6

    @property
    def cost_usd(self) -> float:
        """The run's estimated spend: batch tokens at the batch price, online retries at the online price."""
        return self.batch_cost_usd + self.online_tokens * PRICE_PER_MILLION_TOKENS["online"] / 1e6


async def run_batch(settings: Settings, endpoint: Endpoint, *, options: BatchOptions | None = None,
                    on_progress: Progress | None = None, total: int | None = None,
                    wait_limit_seconds: float | None = None, run_id: str | None = None,
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> BatchOutcome:
    """Embed what changed through the Batch API and write it; see the module docstring for the steps.

    Returns with status "waiting" when `wait_limit_seconds` (else `options.wait_limit_seconds`)
    passes with jobs still alive: they are in the ledger and the next run picks them up.
    """
    opts = options or BatchOptions.from_settings(settings)
    limit = wait_limit_seconds if wait_limit_seconds is not None else opts.wait_limit_seconds
    await asyncio.to_thread(recover_spilled, settings)  # a killed run's downloaded results: not fetched again
    store = await asyncio.to_thread(open_store, settings)
    ledger = await asyncio.to_thread(Ledger.open, settings.db_uri, settings.table)
    planner = await asyncio.to_thread(make_planner, store, settings)
    run = _BatchRun(settings, opts, store, ledger, make_client(endpoint), planner,
                    run_id or uuid.uuid4().hex[:12], clock, sleep, on_progress, total)
    return await run.run(limit)


READ_BLOCK = 256  # chunks pulled per thread hop from the corpus stream
MAX_POLL_ERRORS = 20  # consecutive transient status-read failures before the run gives up (jobs stay recorded)


class _BatchRun:
    """The state of one batch run; `run` is the whole route."""

    def __init__(self, settings: Settings, opts: BatchOptions, store: VectorStore, ledger: Ledger, client,
                 planner: Planner, run_id: str, clock, sleep, on_progress: Progress | None, total: int | None):
        self.settings, self.opts, self.store, self.ledger, self.client = settings, opts, store, ledger, client
        self.planner, self.clock, self.sleep, self.on_progress, self.total = planner, clock, sleep, on_progress, total
        self.recipe = settings.recipe
        self.writer = writer_for(store, settings)
        self.problems = ProblemLog()
        self.out = BatchOutcome(planner.counts, self.problems, run_id=run_id)
        self.jobs: dict[str, JobRecord] = {}  # open jobs this run watches
        self.resumed: set[str] = set()
        self.confirmed: set[str] = set()  # in-flight chunk ids the corpus still wants as submitted
        self.corpus_complete = False
        self.part = 0
        self.settled: dict[str, int] = {}  # items settled per watched job, from batchStats
        self.closed_items = 0  # items of jobs this run closed
        self.idle_polls = 0
        self.poll_errors = 0  # consecutive transient failures of status reads

    async def run(self, limit: float | None) -> BatchOutcome:
        started = self.clock()
        try:
            await asyncio.to_thread(self.ledger.prune)
            await self._resume()
            await self._submit_plan()
            await self._watch(None if limit is None else started + limit)
        except Exception as exc:  # fatal for the route: keep what is committed, jobs stay in the ledger
            self.out.error = exc
            log.error("batch run %s stopped: %s", self.out.run_id, exc)
        self.out.jobs_waiting = sorted(k for k, r in self.jobs.items() if r.live)
        if self.out.error is None and self.corpus_complete and not self.jobs:
            self.writer.delete(self.planner.stale_ids(
                delete_missing=self.settings.delete_missing, protected_docs=self.problems.protected_docs,
                unknown_problems=self.problems.unidentified))
        await asyncio.to_thread(self.writer.flush)
        self.out.committed_rows, self.out.deleted_rows = self.writer.committed_rows, self.writer.deleted_rows
        self.out.status = "error" if self.out.error is not None else "waiting" if self.jobs else "completed"
        return self.out

    # -- 1. resume ------------------------------------------------------------------------

    async def _resume(self) -> None:
        for record in await asyncio.to_thread(self.ledger.jobs, open_only=True):
            if record.state == INTENT and record.job_name is None:
                name = await find_job_by_display_name(self.client, record.key, since=record.created_at)
                if name is None:  # the create never reached the server: the chunks get planned again
                    await asyncio.to_thread(self.ledger.update, record.key, resolution="not_created",
                                            error="no job with this display name exists")
                    continue
                record = await asyncio.to_thread(self.ledger.update, record.key, state=CREATED, job_name=name)
                log.info("adopted job %s (%s) created before a crash", name, record.key)
            self.jobs[record.key] = record
            self.resumed.add(record.key)
        self.out.jobs_resumed = len(self.resumed)

    # -- 2-3. plan and submit ---------------------------------------------------------------

    async def _submit_plan(self) -> None:
        # Unresolved FAILED/EXPIRED jobs count too: recovering them is their chunks' way in.
        covered = await asyncio.to_thread(self.ledger.covered, list(self.jobs))
        chunks: Iterator[Chunk] = self.planner.select(corpus_chunks(self.settings, self.problems))
        part: list[Chunk] = []
        tokens = 0
        while block := await asyncio.to_thread(lambda: list(islice(chunks, READ_BLOCK))):
            for chunk in block:
                if covered.get(chunk.id, (None,))[0] == chunk.content_hash:
                    self.confirmed.add(chunk.id)
                    self.out.chunks_in_flight += 1
                    continue
                if part and (len(part) >= self.opts.max_items_per_job
                             or tokens + chunk.tokens > self.opts.max_tokens_per_job):
                    await self._submit(part)
                    part, tokens = [], 0
                part.append(chunk)
                tokens += chunk.tokens
        if part:
            await self._submit(part)
        self.corpus_complete = True

    async def _submit(self, chunks: list[Chunk], *, parent: str | None = None, generation: int = 0) -> JobRecord:
        """One job: route, INTENT (with items), create at most once, name recorded."""
        self.part += 1
        key = job_key(self.settings.table, self.out.run_id, self.part)
        body = inline_body(chunks, self.recipe, key)
        route, input_file = "inline", None
        if body_size(body) > self.opts.inline_limit_bytes:
            route, body = "file", None
            input_file = await upload_jsonl(self.client, jsonl_input(chunks, self.recipe), key)
        record = JobRecord(key, self.out.run_id, self.part, INTENT, route, len(chunks), sum(c.tokens for c in chunks),
                           input_file=input_file, parent=parent, generation=generation)
        await asyncio.to_thread(self.ledger.record_intent, record, chunks)
        try:
            try:
                name = await self._create(key, route, body, input_file, record)
            except BadRequestError as error:
                if route != "inline" or not is_payload_too_large(error):
                    raise
                # The server's inline limit is below ours: the file route has no such limit.
                input_file = await upload_jsonl(self.client, jsonl_input(chunks, self.recipe), key)
                record = await asyncio.to_thread(self.ledger.update, key, route="file", input_file=input_file)
                name = await self._create(key, "file", None, input_file, record)
        except IndexflowError as error:
            if getattr(error, "state", None) != "UNKNOWN":  # the server answered: no job was made
                await asyncio.to_thread(self.ledger.update, key, resolution="not_created", error=str(error)[:500])
            raise
        record = await asyncio.to_thread(self.ledger.update, key, state=CREATED, job_name=name)
        self.jobs[key] = record
        self.out.jobs_created += 1
        self.out.chunks_submitted += len(chunks)
        log.info("created %s job %s (%s): %d chunks", record.route, name, key, len(chunks))
        return record

    async def _create(self, key: str, route: str, body, input_file: str | None, record: JobRecord) -> str:
        if route == "inline":
            create = lambda: create_inline(self.client, body, self.recipe)  # noqa: E731
        else:
            create = lambda: create_from_file(self.client, input_file, self.recipe, key)  # noqa: E731
        find = lambda: find_job_by_display_name(self.client, key, since=record.created_at)  # noqa: E731
        return await create_once(create, find, attempts=self.opts.create_attempts, sleep=self.sleep)

    # -- 4. watch -----------------------------------------------------------------------------

    async def _watch(self, deadline: float | None) -> None:
        while self.jobs:
            progressed = False
            for key, record in list(self.jobs.items()):
                if not record.live:  # FAILED/EXPIRED left unresolved by an earlier run
                    await self._recover(record, record.state)
                    continue
                status = await self._status(record)
                if status is None:
                    continue
                if status.settled != self.settled.get(key):
                    self.settled[key], progressed = status.settled, True
                if status.state == "RUNNING" and record.state == CREATED:
                    self.jobs[key] = await asyncio.to_thread(self.ledger.update, key, state=RUNNING)
                if status.done:
                    await self._finish(self.jobs[key], status)
            self._report()
            if not self.jobs:
                return
            if deadline is not None and self.clock() >= deadline:
                log.info("wait limit reached with %d job(s) alive; a later run collects them", len(self.jobs))
                return
            self.idle_polls = 0 if progressed else self.idle_polls + 1
            interval = poll_interval(max(r.items for r in self.jobs.values()), self.idle_polls, self.opts.poll_seconds)
            if deadline is not None:
                interval = max(0.0, min(interval, deadline - self.clock()))
            await self.sleep(interval)

    async def _status(self, record: JobRecord) -> JobStatus | None:
        """The job's status; None after a transient failure (the next round looks again)."""
        try:
            status = await get_status(self.client, record.job_name)
        except ConfigError as error:  # 404: the job was deleted behind our back
            return JobStatus(record.job_name, "FAILED", True, error=str(error))
        except IndexflowError as error:
            self.poll_errors += 1
            if not error.transient or self.poll_errors > MAX_POLL_ERRORS:
                raise
            log.warning("polling %s failed (%s); looking again next round", record.job_name, error)
            return None
        self.poll_errors = 0
        return status

    def _report(self) -> None:
        done = self.closed_items + sum(self.settled.values())
        total = self.total if self.total is not None else self.out.chunks_submitted + self.out.chunks_in_flight
        log.info("batch progress: %d/%s items settled across %d job(s)", done, total, len(self.jobs))
        if self.on_progress is not None:
            self.on_progress(done, total)

    async def _finish(self, record: JobRecord, status: JobStatus) -> None:
        if status.state == "SUCCEEDED":
            record = await asyncio.to_thread(self.ledger.update, record.key, state=DONE,
                                             output_file=status.output_file, succeeded=status.succeeded,
                                             failed=status.failed)
            await self._collect(record, status)
        elif status.state == "CANCELLED":
            await asyncio.to_thread(self.ledger.update, record.key, state=CANCELLED, resolution="reported")
            self.out.jobs_cancelled += 1
            self.out.cancelled_chunks += record.items
            self.out.failures.append(f"job {record.job_name} ({record.key}) was cancelled: its {record.items} "
                                     "chunk(s) are not indexed by this run; the next run submits them again")
            await self._close(record.key)
        else:
            state = EXPIRED if status.state == "EXPIRED" else FAILED
            record = await asyncio.to_thread(self.ledger.update, record.key, state=state, error=status.error)
            await self._recover(record, state)

    async def _close(self, key: str, *, settled: bool = True) -> None:
        record = self.jobs.pop(key, None)
        if settled and record is not None:  # a resubmitted job's items are counted by its parts
            self.closed_items += record.items
        self.settled.pop(key, None)
        await asyncio.to_thread(self.ledger.forget_items, [key])

    async def _items(self, record: JobRecord) -> list[Chunk]:
        chunks = await asyncio.to_thread(self.ledger.items, record.key)
        if record.key in self.resumed and self.corpus_complete:
            chunks = [c for c in chunks if c.id in self.confirmed]  # changed or removed since submission
        return chunks

    # -- 5. collect and recover ------------------------------------------------------------

    def _committed(self, chunks: list[Chunk]) -> bool:
        """Whether every one of `chunks` is in the table with its content hash."""
        stored = self.store.existing_hashes({c.doc_id for c in chunks})
        return all(stored.get(c.id) == c.content_hash for c in chunks)

    async def _collect(self, record: JobRecord, status: JobStatus) -> None:
        """Write a SUCCEEDED job's vectors, settle its failed items, then mark it COLLECTED."""
        all_chunks = await asyncio.to_thread(self.ledger.items, record.key)
        dim = self.recipe.dimensions
        if record.key in self.resumed and all_chunks and await asyncio.to_thread(self._committed, all_chunks):
            # Written before a crash (its spill was recovered) but not yet marked: no download again.
            await asyncio.to_thread(self.ledger.update, record.key, state=COLLECTED, retried_online=0,
                                    dead_lettered=0)
            self.out.jobs_collected += 1
            await self._close(record.key)
            log.info("collected %s: its %d rows were already committed (recovered)", record.key, len(all_chunks))
            return
        if record.route == "inline":
            results = inline_results(sdk_job(status.payload), all_chunks, dim)
        else:
            try:
                data = await self.client.aio.files.download(file=status.output_file)
            except Exception as exc:
                raise classify(exc) from None
            results = file_results(data, all_chunks, dim)
        wanted = {c.id for c in await self._items(record)}
        results = _only(results, wanted)
        bad = find_bad_rows(results.vectors) if len(results.chunks) else {}
        good = [i for i in range(len(results.chunks)) if i not in bad]
        errors = results.errors + [ItemError(results.chunks[i], None, f"unusable vector ({why})") for i, why in bad.items()]
        if good:
            chunks = [results.chunks[i] for i in good]
            vectors = l2_normalize(results.vectors[good], expected_dim=dim)
            await asyncio.to_thread(self.writer.add, chunks, vectors)
            self.out.chunks_embedded_batch += len(chunks)
            self.out.batch_tokens += sum(c.tokens for c in chunks)
        retry = [e.chunk for e in errors if not e.terminal and self.opts.item_errors == "online"]
        dead = [e for e in errors if e.terminal or self.opts.item_errors != "online"]
        self.out.item_failures += len(errors)
        retried, dead_online = await self._embed_online(retry)
        await self._dead_letter([FailedItem.from_chunk(e.chunk, f"batch item error {e.code}: {e.message}", 1,
                                                       error_type="BatchItemError") for e in dead])
        await asyncio.to_thread(self.writer.flush)  # committed before the ledger says so
        await asyncio.to_thread(self.ledger.update, record.key, state=COLLECTED, retried_online=retried,
                                dead_lettered=len(dead) + dead_online)
        self.out.retried_online += retried
        self.out.jobs_collected += 1
        await self._close(record.key)
        log.info("collected %s: %d written, %d retried online, %d dead-lettered", record.key, len(good),
                 retried, len(dead) + dead_online)

    async def _recover(self, record: JobRecord, state: str) -> None:
        """A FAILED or EXPIRED job: resubmit in halves, embed online, or report, by configuration."""
        if state == EXPIRED:
            self.out.jobs_expired += 1
        else:
            self.out.jobs_failed += 1
        chunks = await self._items(record)
        message = f"job {record.job_name} ({record.key}) ended {state}: {record.error or 'no detail'}"
        mode = self.opts.failed_jobs
        if mode == "fail":
            await asyncio.to_thread(self.ledger.update, record.key, resolution="abandoned")
            self.out.failures.append(message + "; its chunks are not indexed (batch_failed_jobs='fail')")
            self.out.error = self.out.error or BatchJobError(message, job=record.job_name, state=state)
        elif mode == "resubmit" and record.generation < self.opts.max_resubmits and chunks:
            # Resolved first: a crash before the halves exist leaves the chunks to be planned again.
            await asyncio.to_thread(self.ledger.update, record.key, resolution="resubmitted")
            middle = (len(chunks) + 1) // 2
            for half in (chunks[:middle], chunks[middle:]):
                if half:
                    await self._submit(half, parent=record.key, generation=record.generation + 1)
            self.out.jobs_resubmitted += 1
            log.warning("%s; resubmitted in smaller parts", message)
            await self._close(record.key, settled=False)
            return
        else:
            embedded, dead = await self._embed_online(chunks)
            await asyncio.to_thread(self.writer.flush)
            await asyncio.to_thread(self.ledger.update, record.key, resolution="online", retried_online=embedded,
                                    dead_lettered=dead)
            self.out.online_fallback_chunks += len(chunks)
            log.warning("%s; embedded its %d chunk(s) online", message, len(chunks))
        await self._close(record.key)

    async def _embed_online(self, chunks: Sequence[Chunk]) -> tuple[int, int]:
        """Embed chunks through the online pipeline into the same writer; returns (embedded, dead-lettered)."""
        if not chunks:
            return 0, 0
        indexed = await asyncio.to_thread(self.store.existing_hashes, {c.doc_id for c in chunks})
        chunks = [c for c in chunks if indexed.get(c.id) != c.content_hash]  # committed before a crash
        dead = 0

        async def sink(part: list[Chunk], vectors: np.ndarray) -> None:
            await asyncio.to_thread(self.writer.add, part, vectors)

        async def on_failed(items) -> None:
            nonlocal dead
            dead += len(items)
            await self._dead_letter([FailedItem.of(i) for i in items])

        stats = EmbedStats()
        try:
            await embed_chunks(chunks, client=self.client, options=EmbedOptions.from_settings(self.settings),
                               sink=sink, on_failed=on_failed, stats=stats)
        finally:  # counted even when the online fallback stops the run
            for name, value in stats.as_dict().items():
                if isinstance(value, (int, float)) and name not in ("max_reader_lead", "reader_lead_bound"):
                    setattr(self.out.embed, name, getattr(self.out.embed, name) + value)
            self.out.online_tokens += stats.tokens_sent
        return stats.embedded, dead

    async def _dead_letter(self, items: list[FailedItem]) -> None:
        if items:
            await asyncio.to_thread(self.store.record_failures, items)
            self.out.dead_lettered += len(items)
            self.out.failures.extend(f"{i.chunk_id} ({i.source}): {i.error}"
                                     for i in items[: max(0, 20 - len(self.out.failures))])


def _only(results: JobResults, wanted: set[str]) -> JobResults:
    """The results restricted to chunk ids in `wanted`."""
    keep = [i for i, c in enumerate(results.chunks) if c.id in wanted]
    return JobResults([results.chunks[i] for i in keep], results.vectors[keep],
                      [e for e in results.errors if e.chunk.id in wanted])
