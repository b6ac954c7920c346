"""The Python API: index a corpus and query a table, choosing the endpoint as the `indexflow` command does."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from indexflow.tasks.query import QueryMode, Weights
from indexflow.tasks.report import RunSummary
from indexflow.tasks.search import Hit
from indexflow.tasks.settings import DEFAULT_DB_URI, DEFAULT_TABLE

if TYPE_CHECKING:
    from indexflow.tasks.batch.wire import JobStatus


async def aindex(corpus: str | Path, *, table: str = DEFAULT_TABLE, db_uri: str = DEFAULT_DB_URI,
                 on_progress: Callable[[JobStatus], None] | None = None, wait_timeout: float | None = None,
                 **params: Any) -> RunSummary:
    """Index `corpus` as `indexflow index` does; `params` are any other parameters of `index_corpus`.

    In this process, or as a tracked flow run when a Prefect API is configured. Raises what the
    run stopped on (`DailyQuotaError`, `ConfigError`, ...) after the rows it committed are saved;
    a re-run continues from them. Lines for people go to the `indexflow` logger at INFO.
    On the Batch API route (`mode="batch"`), `on_progress(status)` gets every look at a job (a
    `JobStatus`: state, counts, `success_rate`), and after `wait_timeout` seconds the run returns
    with status "waiting": its jobs stay recorded and the next run collects them.
    """
    from indexflow.tasks.prefect_api import prefect_api_configured
    from indexflow.flows.pipeline import job_status_listener

    if wait_timeout is not None:
        params["options"] = dict(params.get("options") or {}, batch_wait_limit_seconds=wait_timeout)
    listening = job_status_listener.set(on_progress)
    try:
        return await _index(corpus, table, db_uri, params, tracked=prefect_api_configured())
    finally:
        job_status_listener.reset(listening)


async def _index(corpus: str | Path, table: str, db_uri: str, params: dict[str, Any], *, tracked: bool) -> RunSummary:
    if tracked:
        from indexflow.flows.index_corpus import index_corpus

        result = await index_corpus(corpus=str(corpus), table=table, db_uri=db_uri, **params)
        return RunSummary.from_dict(result)
    from indexflow.flows.local_run import LoggingHooks
    from indexflow.flows.pipeline import run_index, settings_from_params
    from indexflow.tasks.endpoint import endpoint_label, resolve_endpoint

    api_key = os.environ.get("GEMINI_API_KEY") or None
    base_url = params.get("base_url") or os.environ.get("GOOGLE_GEMINI_BASE_URL") or None
    label = endpoint_label(api_key, base_url)
    settings = settings_from_params(dict(params, corpus=str(corpus), table=table, db_uri=db_uri),
                                    emulator=label.startswith("emulator"))
    run = await run_index(settings, lambda: resolve_endpoint(api_key, base_url), label, LoggingHooks(),
                          writer_wait_seconds=params.get("writer_wait_seconds"))
    if run.error is not None:
        raise run.error
    return run.summary


def index(corpus: str | Path, *, table: str = DEFAULT_TABLE, db_uri: str = DEFAULT_DB_URI,
          on_progress: Callable[[JobStatus], None] | None = None, wait_timeout: float | None = None,
          **params: Any) -> RunSummary:
    """Synchronous `aindex`, for scripts (not inside a running event loop: await `aindex` there)."""
    return asyncio.run(aindex(corpus, table=table, db_uri=db_uri, on_progress=on_progress,
                              wait_timeout=wait_timeout, **params))


async def aquery(text: str, *, table: str = DEFAULT_TABLE, db_uri: str = DEFAULT_DB_URI, k: int = 10,
                 mode: QueryMode = "vector", weights: Weights = None) -> list[Hit]:
    """The `k` best chunks for `text`; `mode` is vector, fts (BM25, no API call) or hybrid (RRF).

    `weights=(vector, text)` (or "0.7,0.3") weigh a hybrid query's sides; None is plain RRF."""
    from indexflow.tasks.endpoint import resolve_endpoint
    from indexflow.tasks.query import aquery as query_table

    if mode == "fts":
        return await query_table(text, db_uri=db_uri, table=table, endpoint=None, k=k, mode=mode, weights=weights)
    with resolve_endpoint(os.environ.get("GEMINI_API_KEY"), os.environ.get("GOOGLE_GEMINI_BASE_URL")) as (endpoint, _):
        return await query_table(text, db_uri=db_uri, table=table, endpoint=endpoint, k=k, mode=mode,
                                 weights=weights)


def query(text: str, *, table: str = DEFAULT_TABLE, db_uri: str = DEFAULT_DB_URI, k: int = 10,
          mode: QueryMode = "vector", weights: Weights = None) -> list[Hit]:
    """Synchronous `aquery`, for scripts and notebooks (not inside a running event loop)."""
    return asyncio.run(aquery(text, table=table, db_uri=db_uri, k=k, mode=mode, weights=weights))
