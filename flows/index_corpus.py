"""The `index_corpus` flow: the pipeline of `flows.pipeline`, with Prefect's hooks.

Tasks here are thin: each wraps one plain stage function of the pipeline (which the CLI's
in-process run calls directly) and adds only a name, retries and the Prefect reporting.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from contextvars import ContextVar
from typing import Annotated, Any, Literal, get_args

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.cache_policies import NO_CACHE
from prefect.logging.loggers import flow_run_logger
from prefect.states import Cancelled, Completed, State
from pydantic import BeforeValidator, WithJsonSchema

from indexflow.flows.pipeline import (  # noqa: F401 - build_settings, summarize: the flow module's API
    STAGE_RETRY_DELAYS,
    build_settings,
    embed_batch_stage,
    embed_online_stage,
    finalize_stage,
    plan_stage,
    raise_if_retryable as _raise_if_retryable,
    RunResult,
    StopRequest,
    run_index,
    settings_from_params,
    summarize,
)
from indexflow.flows.signals import SIGNAL_EXIT, stop_on_signals
from indexflow.tasks.batch.admin import cancel_live_jobs
from indexflow.tasks.endpoint import endpoint_label, resolve_endpoint
from indexflow.tasks.errors import IndexflowError, RunInterrupted
from indexflow.tasks.redact import guard_logging, redact, remember
from indexflow.tasks.report import Progress, RunSummary, publish_summary
from indexflow.tasks.settings import DEFAULT_DB_URI, DEFAULT_TABLE, Settings, Tier

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


async def _retry_transient(task, task_run, state) -> bool:
    """Prefect retries the embed stage only for failures a later attempt may not see."""
    try:
        await state.aresult()
    except IndexflowError as exc:
        return exc.transient
    except Exception:
        return True
    return False


def _stage_task(name: str, fn):
    """A pipeline stage as a Prefect task: its name, and the pipeline's stage retries as Prefect's."""
    delays = STAGE_RETRY_DELAYS.get(name, ())
    if not delays:
        return task(name=name, cache_policy=NO_CACHE)(fn)
    return task(name=name, cache_policy=NO_CACHE, retries=len(delays), retry_delay_seconds=list(delays),
                retry_condition_fn=_retry_transient)(fn)


plan_task = _stage_task("plan", plan_stage)
embed_online_task = _stage_task("embed-online", embed_online_stage)
embed_batch_task = _stage_task("embed-batch", embed_batch_stage)
finalize_task = _stage_task("finalize", finalize_stage)
_TASKS = {t.name: t for t in (plan_task, embed_online_task, embed_batch_task, finalize_task)}


# Set by the CLI, which runs the flow in its own process: lines for people reach its terminal
# too (Prefect's own INFO logs stay hidden there).
terminal_echo: ContextVar[Callable[[str], None] | None] = ContextVar("indexflow_terminal_echo", default=None)
# Set by the CLI: told `(result, exit code)` when a signal stopped the run, as `run_local` tells it.
interrupt_report: ContextVar[Callable[[RunResult, int], None] | None] = ContextVar(
    "indexflow_interrupt_report", default=None)


class FlowHooks:
    """The pipeline inside a Prefect flow run: stages are task runs, lines go to the run logger,
    progress to a progress artifact."""

    def __init__(self, logger) -> None:
        self.logger = logger
        self.echo = terminal_echo.get()

    def info(self, message: str) -> None:
        message = redact(message)  # the second net: errors are redacted when they are made
        self.logger.info("%s", message)
        if self.echo is not None:
            self.echo(message)

    async def stage(self, name: str, fn, *args):
        return await _TASKS[name](*args)

    def progress(self, settings: Settings, total: int | None, fc) -> Progress:
        return Progress(settings.table, prefect=True)

    def run_id(self) -> str:
        return (flow_run.get_id() or "local").replace("-", "")[:12]


def _api_key_from_environment() -> str | None:
    """GEMINI_API_KEY, else the Prefect Secret block `gemini-api-key`, else None (emulator)."""
    key = os.environ.get("GEMINI_API_KEY")
    if not key:
        try:
            from prefect.blocks.system import Secret

            key = Secret.load(SECRET_BLOCK, _sync=True).get()
        except Exception:  # no such block, or no server to ask: the emulator it is
            return None
    remember(key)  # before anything can quote it
    return key


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
    priority: int | None = None,
    options: dict[str, Any] | None = None,
    base_url: str | None = None,
    writer_wait_seconds: float | None = None,
) -> State[dict]:
    """Index `corpus` into LanceDB table `table` at `db_uri`; calling it returns the run summary as a dict.

    The run ends Completed, or "Completed with problems" (still of type COMPLETED) when it
    skipped unreadable input or dead-lettered chunks; the state's message says how many.

    `priority` orders this run's Batch API jobs among the project's pending ones (higher first,
    default 0; the options key `batch_priority` too). `options` sets any other Settings field by
    name (e.g. `{"batch_wait_limit_seconds": 600}`).
    One run writes a table at a time: another run on the same table waits for it (at most
    `writer_wait_seconds`, None for as long as it takes), then plans against what it committed.
    The API key is read from GEMINI_API_KEY or the Prefect Secret block `gemini-api-key`, never
    from a parameter; with neither, an emulator runs in this process.
    """
    from indexflow.tasks.memory import tune_process_memory

    tune_process_memory()  # a flow run's process (a worker's subprocess, the CLI) is indexflow's
    logger = get_run_logger()
    base_url = base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or None
    api_key = _api_key_from_environment()
    guard_logging()  # Prefect's handlers exist now: no line they ship repeats the key
    label = endpoint_label(api_key, base_url)
    settings = settings_from_params(
        dict(corpus=corpus, table=table, db_uri=db_uri, mode=mode, tier=tier, dimensions=dimensions,
             batch_size=batch_size, concurrency=concurrency, rpm=rpm, tpm=tpm, rpd=rpd,
             corpus_format=corpus_format, id_field=id_field, title_field=title_field, text_field=text_field,
             max_chunk_tokens=max_chunk_tokens, delete_missing=delete_missing, rebuild=rebuild,
             retry_failed=retry_failed, priority=priority, options=options),
        emulator=label.startswith("emulator"),
    )
    hooks, stop = FlowHooks(logger), StopRequest()
    with stop_on_signals(stop, asyncio.get_running_loop(), announce=hooks.info):
        result = await run_index(settings, lambda: resolve_endpoint(api_key, base_url), label, hooks,
                                 writer_wait_seconds=writer_wait_seconds, stop=stop)
    summary = result.summary
    await publish_summary(summary)
    for row in summary.rows():
        logger.info("%-22s %s", row["metric"], row["value"])
    if isinstance(result.error, RunInterrupted):
        return interrupted_state(result, stop.signal or "SIGTERM")
    if result.error is not None:
        logger.error("%s", result.error)
        raise result.error
    return final_state(summary)


def interrupted_state(result: RunResult, signal_name: str) -> State[dict]:
    """Cancelled, saying what was kept: a signal (a worker cancelling the run) stopped it gracefully."""
    message = f"stopped by {signal_name}: kept {result.summary.chunks_embedded} chunks; run again to resume"
    get_run_logger().info("%s", message)
    report = interrupt_report.get()
    if report is not None:
        report(result, SIGNAL_EXIT.get(signal_name, 130))
    return Cancelled(data=result.summary.as_dict(), message=message)


def final_state(summary: RunSummary) -> State[dict]:
    """Completed with the summary as its result; named "Completed with problems" when anything was left out."""
    problems = summary.problem_note()
    if problems is None:
        return Completed(data=summary.as_dict())
    return Completed(data=summary.as_dict(), name=COMPLETED_WITH_PROBLEMS, message=problems)


if __name__ == "__main__":
    asyncio.run(index_corpus())
