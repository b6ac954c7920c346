"""One index run, whoever drives it: lock -> rebuild -> plan -> route -> embed -> finalize -> summary.

The Prefect flow (`index_corpus`) and the CLI's in-process run (`flows.local_run`) both call
`run_index`; they differ only in their `RunHooks`: Prefect tasks, run logger and artifacts, or
plain calls and the terminal. Nothing here imports Prefect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, ExitStack
from contextvars import ContextVar
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from indexflow.tasks.batch.options import BatchOptions, choose_route
from indexflow.tasks.errors import ConfigError, IndexflowError, RunInterrupted
from indexflow.tasks.plan import Forecast, PlanCounts, forecast
from indexflow.tasks.problems import ProblemLog
from indexflow.tasks.report import RunSummary
from indexflow.tasks.settings import Endpoint, Settings

T = TypeVar("T")

# Delays between attempts of a stage that failed transiently (after the call-level retries of
# `tasks.retry` were spent): an outage of minutes gets two more chances, resuming from the table.
STAGE_RETRY_DELAYS: dict[str, tuple[float, ...]] = {"embed-online": (10.0, 60.0), "embed-batch": (10.0, 60.0)}


# How long a first run's embed stage runs alone before its plan is counted beside it.
FIRST_CALL_HEADSTART_SECONDS = 1.0


class StopRequest(asyncio.Event):
    """Set by the first SIGINT/SIGTERM: the run stops sending, commits what it has and ends."""

    signal: str | None = None

    def request(self, signal: str) -> None:
        if not self.is_set():
            self.signal = signal
        self.set()


def build_settings(**params: Any) -> Settings:
    """Validate parameters into Settings; a bad value becomes one ConfigError naming every field at fault."""
    params = {k: v for k, v in params.items() if v is not None}
    try:
        return Settings(**params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid parameters: {problems}", fields=[e["loc"] for e in exc.errors()]) from None


def settings_from_params(params: dict[str, Any], *, emulator: bool) -> Settings:
    """Flow parameters -> Settings; `options` carries any further Settings field by name."""
    params = dict(params)
    params.pop("base_url", None)
    params.pop("writer_wait_seconds", None)
    options = params.pop("options", None) or {}
    priority = params.pop("priority", None)  # the flow's and the CLI's name for a batch job's priority
    if priority is not None:
        params["batch_priority"] = priority
    clash = sorted(set(options) & set(params))
    if clash:
        raise ConfigError(f"options {clash} are also flow parameters; set them once", fields=[(c,) for c in clash])
    # Only the default preset depends on the endpoint; an unset tier stays unset (see resolve_quota).
    default = {"default_tier": "unlimited" if emulator else "free"}
    return build_settings(**(default | params | options))


# The Python API's `on_progress(job_status)`: a callable cannot travel as a flow parameter, and the
# stages run in this process, so it rides in the context of the call that started the run.
job_status_listener: ContextVar[Callable[[Any], None] | None] = ContextVar("job_status_listener", default=None)


class ProgressSink(Protocol):
    """What the embed stages report to: `sink(done, total)`, a context manager, and `aclose`."""

    def __call__(self, done: int, total: int | None) -> None: ...
    def __enter__(self) -> "ProgressSink": ...
    def __exit__(self, *exc: object) -> None: ...
    async def aclose(self, done: int, total: int | None) -> None: ...


class RunHooks(Protocol):
    """How a driver runs the stages and tells people about them."""

    def info(self, message: str) -> None:
        """A line a user needs: the endpoint, the plan, the route, waiting for another writer."""

    async def stage(self, name: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run stage `name` (plan, embed-online, embed-batch, finalize): `await fn(*args)`, with retries."""

    def progress(self, settings: Settings, total: int | None, fc: Forecast) -> ProgressSink:
        """The sink the embed stage reports chunks settled to."""

    def run_id(self) -> str:
        """An id for this run, recorded with its Batch API jobs."""


# -- stages: plain functions; the flow wraps each in a Prefect task --------------------------------

async def plan_stage(settings: Settings) -> tuple[PlanCounts, ProblemLog]:
    """Read and chunk the corpus against the table: counts only, no API call."""
    from indexflow.tasks.plan import plan_run

    return await asyncio.to_thread(plan_run, settings)


def raise_if_retryable(outcome: Any) -> Any:
    """Raise a transient stage failure for a stage retry, carrying what the stage did (its calls, rows)."""
    error = outcome.error
    if error is None or not getattr(error, "transient", True):
        return outcome
    if isinstance(error, IndexflowError):
        raise error.add_facts(outcome=replace(outcome, error=None))
    raise error


async def embed_online_stage(settings: Settings, endpoint: Endpoint, total: int | None, progress: ProgressSink,
                             stop: asyncio.Event | None = None) -> Any:
    """The whole micro-batch pipeline; a transient stage failure is raised for a stage retry."""
    from indexflow.tasks.online import run_online

    with progress:
        outcome = await run_online(settings, endpoint, on_progress=progress, total=total, stop=stop)
        await progress.aclose(outcome.embed.embedded, total)
    return raise_if_retryable(outcome)


async def embed_batch_stage(settings: Settings, endpoint: Endpoint, total: int, run_id: str,
                            progress: ProgressSink, stop: asyncio.Event | None = None) -> Any:
    """The Batch API route; a retry resumes the jobs in the ledger, never resubmits them."""
    from indexflow.tasks.batch.route import run_batch

    with progress:
        job = asyncio.ensure_future(run_batch(settings, endpoint, on_progress=progress, total=total,
                                              on_job_status=job_status_listener.get(), run_id=run_id))
        outcome = await _unless_stopped(job, stop)
        await progress.aclose(outcome.committed_rows, total)
    return raise_if_retryable(outcome)


async def finalize_stage(settings: Settings, changed: bool = True) -> dict | None:
    """optimize(), then the vector and full-text indexes where they pay; None when an unchanged
    table had nothing to do."""
    from indexflow.tasks.table import open_store

    store = await asyncio.to_thread(open_store, settings, rebuild=False)
    if not changed and not await asyncio.to_thread(store.finalize_due):
        return None
    report = await asyncio.to_thread(store.finalize)
    return asdict(report)


async def _unless_stopped(work: "asyncio.Future[T]", stop: asyncio.Event | None) -> T:
    """`await work`, unless `stop` is set first: then cancel it and raise RunInterrupted.

    Writes are atomic commits, so abandoning a stage between them loses nothing committed.
    """
    if stop is None:
        return await work
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if work.done():
        return work.result()
    work.cancel()
    raise RunInterrupted("the run was interrupted", signal=getattr(stop, "signal", None))


# -- the run ---------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """What a run did (its summary) and what stopped it, if anything."""

    summary: RunSummary
    error: BaseException | None = None


Connect = Callable[[], AbstractContextManager[tuple[Endpoint, str]]]


async def run_index(settings: Settings, connect: Connect, label: str, hooks: RunHooks, *,
                    writer_wait_seconds: float | None = None, stop: asyncio.Event | None = None) -> RunResult:
    """The whole run; a failure is reported in the result (with what was committed), not raised.

    `connect()` (e.g. `resolve_endpoint(key, url)`) is entered only when there is something to
    embed or a batch job to follow: an unchanged corpus starts no emulator and no API client.
    """
    from indexflow.tasks.embed_options import EmbedStats
    from indexflow.tasks.online import OnlineOutcome
    from indexflow.tasks.table import open_store, recover_spilled, table_is_empty
    from indexflow.tasks.writer_lock import table_writer

    started = time.monotonic()
    hooks.info(f"Embedding endpoint: {label}")
    run = _Run(settings, connect, hooks, stop, OnlineOutcome(PlanCounts(), ProblemLog(), EmbedStats()))
    try:
        async with table_writer(settings.db_uri, settings.table, wait_seconds=writer_wait_seconds,
                                on_wait=hooks.info):
            recovered = await asyncio.to_thread(recover_spilled, settings)  # a rebuild discards them
            if recovered:
                hooks.info(f"Recovered {recovered} embedded chunk(s) that an interrupted run had paid for "
                           "but not committed; they are not embedded again")
            if settings.rebuild:
                # Drop once, here: a retried embed stage must resume from what it committed, not drop it again.
                await asyncio.to_thread(open_store, settings)
                run.settings = settings = settings.model_copy(update={"rebuild": False})
                hooks.info(f"Rebuilt table {settings.table}: every chunk will be embedded again")
            if settings.mode == "online" and await asyncio.to_thread(table_is_empty, settings):
                await run.first_run()
            else:
                await run.planned_run()
            if run.outcome.error is None:
                await run.finalize()
    except IndexflowError as exc:  # outside the embed stage: the lock, the plan, finalize
        run.outcome = replace(run.outcome, error=exc)
    finally:
        run.endpoints.close()
    summary = summarize(run.settings, label, run.route, run.outcome, time.monotonic() - started)
    return RunResult(summary, run.outcome.error)


@dataclass
class _Run:
    """One run's state between its steps."""

    settings: Settings
    connect: Connect
    hooks: RunHooks
    stop: asyncio.Event | None
    outcome: Any
    route: str = "online"

    def __post_init__(self) -> None:
        self.endpoints = ExitStack()
        self.route = self.settings.mode if self.settings.mode != "auto" else "online"

    def endpoint(self) -> Endpoint:
        endpoint, _ = self.endpoints.enter_context(self.connect())
        return endpoint

    async def plan(self, settings: Settings | None = None) -> tuple[PlanCounts, ProblemLog]:
        return await _unless_stopped(
            asyncio.ensure_future(self.hooks.stage("plan", plan_stage, settings or self.settings)), self.stop)

    def tell_plan(self, counts: PlanCounts) -> Forecast:
        fc = forecast(counts.chunks_to_embed, counts.tokens_to_embed, batch_size=self.settings.batch_size,
                      limits=self.settings.limits)
        self.hooks.info(
            f"Plan: {counts.chunks_to_embed} chunk(s) to embed ({counts.tokens_to_embed} tokens; "
            f"~${fc.online_cost_usd:.4f} online, ~${fc.batch_cost_usd:.4f} batch), "
            f"{counts.chunks_unchanged} unchanged; route: {self.route}")
        self.hooks.info(f"Limits: {self.settings.quota.describe()}")
        return fc

    async def planned_run(self) -> None:
        """Plan, choose the route, then embed what the plan found (nothing at all when nothing changed)."""
        counts, problems = await self.plan()
        self.outcome = replace(self.outcome, plan=counts, problems=problems)
        batch = BatchOptions.from_settings(self.settings)
        self.route = choose_route(self.settings.mode, counts.chunks_to_embed, threshold=batch.threshold,
                                  deadline_seconds=batch.deadline_seconds,
                                  turnaround_seconds=batch.turnaround_seconds)
        fc = self.tell_plan(counts)
        if self.route != "batch" and not counts.chunks_to_embed and not counts.chunks_stale:
            return  # nothing to embed or delete: the plan's outcome is the run's (no second read)
        progress = self.hooks.progress(self.settings, counts.chunks_to_embed, fc)
        endpoint = self.endpoint()
        if self.route == "batch":
            await self.embed("embed-batch", embed_batch_stage, self.settings, endpoint, counts.chunks_to_embed,
                             self.hooks.run_id(), progress, self.stop)
        else:
            await self.embed("embed-online", embed_online_stage, self.settings, endpoint, counts.chunks_to_embed,
                             progress, self.stop)

    async def first_run(self) -> None:
        """An empty table: everything is new, so embedding starts at once and the plan is counted
        alongside (for the plan line and the ETA) instead of before the first call."""
        progress = self.hooks.progress(self.settings, None, None)  # the total comes with the plan
        embedding = asyncio.ensure_future(self.embed(
            "embed-online", embed_online_stage, self.settings, self.endpoint(), None, progress, self.stop))
        # Counting is CPU work in a thread: give the first calls a head start on the interpreter.
        await asyncio.wait({embedding}, timeout=FIRST_CALL_HEADSTART_SECONDS)
        if embedding.done():  # a small corpus: the embed stage counted it all as it went
            embedding.result()  # what is not an IndexflowError (a crash, a cancellation) propagates
            self.tell_plan(self.outcome.plan)
            return
        try:
            # Counted as against an empty table (what it was), not against the rows being written.
            counts, _ = await self.plan(self.settings.model_copy(update={"rebuild": True}))
        except BaseException:
            embedding.cancel()
            await asyncio.gather(embedding, return_exceptions=True)
            raise
        fc = self.tell_plan(counts)
        getattr(progress, "plan", lambda total, fc: None)(counts.chunks_to_embed, fc)
        await embedding

    async def embed(self, name: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            self.outcome = await self.hooks.stage(name, fn, *args)
        except IndexflowError as exc:  # stage retries are spent too: report, then fail the run
            # The last attempt's own counters (calls, retries, rows kept) travel on the error.
            done = getattr(exc, "outcome", None) or self.outcome
            self.outcome = replace(done, error=exc)

    async def finalize(self) -> None:
        report = await _unless_stopped(asyncio.ensure_future(
            self.hooks.stage("finalize", finalize_stage, self.settings, _changed(self.outcome))), self.stop)
        if report is not None:
            self.hooks.info(
                f"Finalized {self.settings.table}: {report['rows']} rows, fragments {report['fragments_before']} "
                f"-> {report['fragments_after']}, vector index {report['vector_index']}, full-text index "
                f"{report['fts_index']} ({report['seconds']:.2f} s)")


def _changed(outcome: Any) -> bool:
    """Whether the run wrote or deleted anything (a no-op run leaves the table, and its indexes, alone)."""
    return bool(outcome.committed_rows or outcome.deleted_rows or outcome.dead_lettered
                or getattr(outcome, "jobs_created", 0) or getattr(outcome, "jobs_resumed", 0))


def summarize(settings: Settings, label: str, route: str, outcome: Any, wall: float) -> RunSummary:
    """The run's facts for people, from the plan, the route's counters and the store's."""
    BatchOutcome: type = type(None)
    if route == "batch":  # only then can it be one; the batch route imports the SDK
        from indexflow.tasks.batch.outcome import BatchOutcome

    e = outcome.embed
    status = "completed"
    if outcome.error is not None:
        status = f"stopped: {type(outcome.error).__name__}"
    elif isinstance(outcome, BatchOutcome) and outcome.status == "waiting":
        status = f"waiting: {len(outcome.jobs_waiting)} batch job(s) alive; the next run collects them"
    problems: ProblemLog = outcome.problems
    summary = RunSummary(
        table=settings.table, mode=settings.mode, route=route, endpoint=label.split(" (")[0], status=status,
        plan=outcome.plan, docs_failed=problems.count, chunks_embedded=outcome.committed_rows,
        chunks_deleted=outcome.deleted_rows, dead_lettered=outcome.dead_lettered,
        limits=settings.quota.as_dict(),
        api_calls=e.calls, tokens=e.tokens_sent, rate_limited=e.rate_limited, retries=e.retries,
        wall_seconds=wall, problems=problems.samples, failures=outcome.failures,
        message=str(outcome.error) if outcome.error is not None else None,
    )
    if isinstance(outcome, BatchOutcome):
        summary.tokens = outcome.online_tokens
        summary.batch_tokens = outcome.batch_tokens
        summary.api_calls = e.calls + outcome.jobs_created
        summary.jobs_created, summary.jobs_resumed = outcome.jobs_created, outcome.jobs_resumed
        summary.jobs_waiting = len(outcome.jobs_waiting)
        summary.jobs_failed = outcome.jobs_failed + outcome.jobs_expired
        summary.jobs_cancelled = outcome.jobs_cancelled
        summary.batch_item_failures, summary.retried_online = outcome.item_failures, outcome.retried_online
        summary.alerts = [a.message for a in outcome.alerts]
    return summary
