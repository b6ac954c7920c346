"""The `index_corpus` flow: settings -> plan -> embed route -> finalize -> report.

Tasks here are thin: each wraps one plain function from `tasks/` (which tests call directly) and
adds only a name, retries and the Prefect reporting.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, replace
from typing import Annotated, Any, Literal, get_args

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.cache_policies import NO_CACHE
from prefect.logging.loggers import flow_run_logger
from prefect.states import Completed, State
from pydantic import BeforeValidator, ValidationError, WithJsonSchema

from indexflow.tasks.batch_jobs import BatchOutcome, run_batch
from indexflow.tasks.batch_admin import cancel_live_jobs
from indexflow.tasks.batch_options import BatchOptions, choose_route
from indexflow.tasks.batcher import EmbedStats
from indexflow.tasks.endpoint import resolve_endpoint
from indexflow.tasks.errors import ConfigError, IndexflowError
from indexflow.tasks.online import OnlineOutcome, open_store, plan_run, run_online
from indexflow.tasks.plan import forecast
from indexflow.tasks.problems import ProblemLog
from indexflow.tasks.report import Progress, RunSummary, publish_summary
from indexflow.tasks.settings import DEFAULT_DB_URI, DEFAULT_TABLE, Endpoint, Settings, Tier
from indexflow.tasks.writer_lock import table_writer

SECRET_BLOCK = "gemini-api-key"
# The final state's name when a run completed but skipped input or dead-lettered chunks.
COMPLETED_WITH_PROBLEMS = "Completed with problems"


def _number_as_text(value: Any) -> Any:
    """A JSON integer as its digits: `prefect deployment run --param tier=1` sends 1, not "1"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


_TIER_NAMES = list(get_args(Tier))
# The schema (which the server enforces and the UI renders) admits the bare numbers of the
# numbered tiers; the validator hands the flow the tier's name either way.
TierParam = Annotated[Tier, BeforeValidator(_number_as_text), WithJsonSchema({"anyOf": [
    {"type": "string", "enum": _TIER_NAMES},
    {"type": "integer", "enum": [int(t) for t in _TIER_NAMES if t.isdigit()]},
]})]
# Free text (names, paths) that `--param table=2024` would otherwise send as a number.
TextParam = Annotated[str, BeforeValidator(_number_as_text),
                      WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]})]


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


async def _retry_transient(task, task_run, state) -> bool:
    """Prefect retries the embed stage only for failures a later attempt may not see."""
    try:
        await state.aresult()
    except IndexflowError as exc:
        return exc.transient
    except Exception:
        return True
    return False


@task(name="plan", cache_policy=NO_CACHE)
async def plan_task(settings: Settings) -> tuple:
    """Read and chunk the corpus against the table: counts only, no API call."""
    return await asyncio.to_thread(plan_run, settings)


def _raise_if_retryable(outcome: OnlineOutcome | BatchOutcome) -> OnlineOutcome | BatchOutcome:
    """Raise a transient stage failure for a Prefect retry, carrying what the stage did (its calls, rows)."""
    error = outcome.error
    if error is None or not getattr(error, "transient", True):
        return outcome
    if isinstance(error, IndexflowError):
        raise error.add_facts(outcome=replace(outcome, error=None))
    raise error


@task(name="embed-online", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=_retry_transient)
async def embed_online_task(settings: Settings, endpoint: Endpoint, total: int) -> OnlineOutcome:
    """The whole micro-batch pipeline in one task run; a transient stage failure is raised for a Prefect retry."""
    with Progress(settings.table, prefect=True) as progress:
        outcome = await run_online(settings, endpoint, on_progress=progress, total=total)
        await progress.aclose(outcome.embed.embedded, total)
    return _raise_if_retryable(outcome)


@task(name="embed-batch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=_retry_transient)
async def embed_batch_task(settings: Settings, endpoint: Endpoint, total: int, run_id: str) -> BatchOutcome:
    """The Batch API route in one task run; a retry resumes the jobs in the ledger, never resubmits them."""
    with Progress(settings.table, prefect=True) as progress:
        outcome = await run_batch(settings, endpoint, on_progress=progress, total=total, run_id=run_id)
        await progress.aclose(outcome.committed_rows, total)
    return _raise_if_retryable(outcome)


@task(name="finalize", cache_policy=NO_CACHE)
async def finalize_task(settings: Settings) -> dict:
    """optimize(), then the vector and full-text indexes where they pay."""
    store = await asyncio.to_thread(open_store, settings, rebuild=False)
    report = await asyncio.to_thread(store.finalize)
    get_run_logger().info(
        "Finalized %s: %d rows, fragments %d -> %d, vector index %s, full-text index %s (%.2f s)",
        settings.table, report.rows, report.fragments_before, report.fragments_after,
        report.vector_index, report.fts_index, report.seconds)
    return asdict(report)


def _api_key_from_environment() -> str | None:
    """GEMINI_API_KEY, else the Prefect Secret block `gemini-api-key`, else None (emulator)."""
    key = os.environ.get("GEMINI_API_KEY")
    if key:
        return key
    try:
        from prefect.blocks.system import Secret

        return Secret.load(SECRET_BLOCK, _sync=True).get()
    except Exception:  # no such block, or no server to ask: the emulator it is
        return None


def settings_from_params(params: dict[str, Any], *, emulator: bool) -> Settings:
    """Flow parameters -> Settings; `options` carries any further Settings field by name."""
    params = dict(params)
    params.pop("base_url", None)
    params.pop("writer_wait_seconds", None)
    options = params.pop("options", None) or {}
    clash = sorted(set(options) & set(params))
    if clash:
        raise ConfigError(f"options {clash} are also flow parameters; set them once", fields=[(c,) for c in clash])
    # Only the default preset depends on the endpoint; an unset tier stays unset (see resolve_quota).
    default = {"default_tier": "unlimited" if emulator else "free"}
    return build_settings(**(default | params | options))


async def _cancel_batch_jobs(flow, flow_run, state) -> None:
    """On flow-run cancellation, cancel this table's live Batch API jobs when `cancel_on_flow_cancel` is set."""
    params = dict(flow_run.parameters)
    if not (params.get("options") or {}).get("cancel_on_flow_cancel"):
        return
    base_url = params.get("base_url") or os.environ.get("GOOGLE_GEMINI_BASE_URL") or None
    with resolve_endpoint(_api_key_from_environment(), base_url) as (endpoint, label):
        settings = settings_from_params(params, emulator=label.startswith("emulator"))
        cancelled = await cancel_live_jobs(settings, endpoint)
    # Not get_run_logger(): a worker runs this hook outside any run context, where it raises.
    flow_run_logger(flow_run, flow).warning("Flow run cancelled: cancelled %d live batch job(s): %s",
                                            len(cancelled), cancelled)


@flow(name="index-corpus", flow_run_name="index-{table}-{mode}", log_prints=False,
      on_cancellation=[_cancel_batch_jobs])
async def index_corpus(
    corpus: TextParam = "data/corpus",
    table: TextParam = DEFAULT_TABLE,
    db_uri: TextParam = DEFAULT_DB_URI,
    mode: Literal["online", "batch", "auto"] = "online",
    tier: TierParam | None = None,
    dimensions: int = 768,
    batch_size: int = 100,
    concurrency: int = 8,
    rpm: int | None = None,
    tpm: int | None = None,
    rpd: int | None = None,
    corpus_format: Literal["auto", "dir", "jsonl", "parquet", "csv"] = "auto",
    id_field: TextParam | None = None,
    title_field: TextParam = "title",
    text_field: TextParam = "text",
    max_chunk_tokens: int = 1024,
    delete_missing: bool = True,
    rebuild: bool = False,
    retry_failed: bool = False,
    options: dict[str, Any] | None = None,
    base_url: str | None = None,
    writer_wait_seconds: float | None = None,
) -> State[dict]:
    """Index `corpus` into LanceDB table `table` at `db_uri`; calling it returns the run summary as a dict.

    The run ends Completed, or "Completed with problems" (still of type COMPLETED) when it
    skipped unreadable input or dead-lettered chunks; the state's message says how many.

    `options` sets any other Settings field by name (e.g. `{"batch_wait_limit_seconds": 600}`).
    One run writes a table at a time: another run on the same table waits for it (at most
    `writer_wait_seconds`, None for as long as it takes), then plans against what it committed.
    The API key is read from GEMINI_API_KEY or the Prefect Secret block `gemini-api-key`, never
    from a parameter; with neither, an emulator runs in this process.
    """
    logger = get_run_logger()
    started = time.monotonic()
    base_url = base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or None
    with resolve_endpoint(_api_key_from_environment(), base_url) as (endpoint, label):
        logger.info("Embedding endpoint: %s", label)
        settings = settings_from_params(
            dict(corpus=corpus, table=table, db_uri=db_uri, mode=mode, tier=tier, dimensions=dimensions,
                 batch_size=batch_size, concurrency=concurrency, rpm=rpm, tpm=tpm, rpd=rpd,
                 corpus_format=corpus_format, id_field=id_field, title_field=title_field, text_field=text_field,
                 max_chunk_tokens=max_chunk_tokens, delete_missing=delete_missing, rebuild=rebuild,
                 retry_failed=retry_failed, options=options),
            emulator=label.startswith("emulator"),
        )
        async with table_writer(settings.db_uri, settings.table, wait_seconds=writer_wait_seconds,
                                on_wait=logger.info):
            if settings.rebuild:
                # Drop once, here: a retried embed task must resume from what it committed, not drop it again.
                await asyncio.to_thread(open_store, settings)
                settings = settings.model_copy(update={"rebuild": False})
                logger.info("Rebuilt table %s: every chunk will be embedded again", settings.table)
            counts, _ = await plan_task(settings)
            batch = BatchOptions.from_settings(settings)
            route = choose_route(settings.mode, counts.chunks_to_embed, threshold=batch.threshold,
                                 deadline_seconds=batch.deadline_seconds, turnaround_seconds=batch.turnaround_seconds)
            fc = forecast(counts.chunks_to_embed, counts.tokens_to_embed, batch_size=settings.batch_size,
                          limits=settings.limits)
            logger.info(
                "Plan: %d chunk(s) to embed (%d tokens; ~$%.4f online, ~$%.4f batch), %d unchanged; route: %s",
                counts.chunks_to_embed, counts.tokens_to_embed, fc.online_cost_usd, fc.batch_cost_usd,
                counts.chunks_unchanged, route,
            )
            logger.info("Limits: %s", settings.quota.describe())
            try:
                if route == "batch":
                    run_id = (flow_run.get_id() or "local").replace("-", "")[:12]
                    outcome = await embed_batch_task(settings, endpoint, counts.chunks_to_embed, run_id)
                else:
                    outcome = await embed_online_task(settings, endpoint, counts.chunks_to_embed)
            except IndexflowError as exc:  # Prefect's retries are spent too: report, then fail the run
                # The last attempt's own counters (calls, retries, rows kept) travel on the error.
                done = getattr(exc, "outcome", None) or OnlineOutcome(counts, ProblemLog(), EmbedStats())
                outcome = replace(done, error=exc)
            if outcome.error is None:
                await finalize_task(settings)
    summary = summarize(settings, label, route, outcome, time.monotonic() - started)
    await publish_summary(summary)
    for row in summary.rows():
        logger.info("%-22s %s", row["metric"], row["value"])
    if outcome.error is not None:
        logger.error("%s", outcome.error)
        raise outcome.error
    return final_state(summary)


def final_state(summary: RunSummary) -> State[dict]:
    """Completed with the summary as its result; named "Completed with problems" when anything was left out."""
    problems = summary.problem_note()
    if problems is None:
        return Completed(data=summary.as_dict())
    return Completed(data=summary.as_dict(), name=COMPLETED_WITH_PROBLEMS, message=problems)


def summarize(settings: Settings, label: str, route: str, outcome: OnlineOutcome | BatchOutcome,
              wall: float) -> RunSummary:
    """The run's facts for people, from the plan, the route's counters and the store's."""
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
    return summary


if __name__ == "__main__":
    asyncio.run(index_corpus())
