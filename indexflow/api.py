"""The Python API: index a corpus and query a table, choosing the endpoint as the `indexflow` command does."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from indexflow.tasks.query import QueryMode
from indexflow.tasks.report import RunSummary
from indexflow.tasks.search import Hit
from indexflow.tasks.settings import DEFAULT_DB_URI, DEFAULT_TABLE


async def aindex(corpus: str | Path, *, table: str = DEFAULT_TABLE, db_uri: str = DEFAULT_DB_URI,
                 **params: Any) -> RunSummary:
    """Run the `index-corpus` flow over `corpus`; `params` are any other parameters of `index_corpus`.

    Raises what the run stopped on (`DailyQuotaError`, `ConfigError`, ...) after the rows it
    committed are saved; a re-run continues from them.
    """
    # The temporary Prefect server a run starts without PREFECT_API_URL would report usage.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from indexflow.flows.index_corpus import index_corpus

    result = await index_corpus(corpus=str(corpus), table=table, db_uri=db_uri, **params)
    return RunSummary.from_dict(result)


def index(corpus: str | Path, *, table: str = DEFAULT_TABLE, db_uri: str = DEFAULT_DB_URI,
          **params: Any) -> RunSummary:
    """Synchronous `aindex`, for scripts (not inside a running event loop: await `aindex` there)."""
    return asyncio.run(aindex(corpus, table=table, db_uri=db_uri, **params))


async def aquery(text: str, *, table: str = DEFAULT_TABLE, db_uri: str = DEFAULT_DB_URI, k: int = 10,
                 mode: QueryMode = "vector") -> list[Hit]:
    """The `k` best chunks for `text`; `mode` is vector, fts (BM25, no API call) or hybrid (RRF)."""
    from indexflow.tasks.endpoint import resolve_endpoint
    from indexflow.tasks.query import aquery as query_table

    if mode == "fts":
        return await query_table(text, db_uri=db_uri, table=table, endpoint=None, k=k, mode=mode)
    with resolve_endpoint(os.environ.get("GEMINI_API_KEY"), os.environ.get("GOOGLE_GEMINI_BASE_URL")) as (endpoint, _):
        return await query_table(text, db_uri=db_uri, table=table, endpoint=endpoint, k=k, mode=mode)


def query(text: str, *, table: str = DEFAULT_TABLE, db_uri: str = DEFAULT_DB_URI, k: int = 10,
          mode: QueryMode = "vector") -> list[Hit]:
    """Synchronous `aquery`, for scripts and notebooks (not inside a running event loop)."""
    return asyncio.run(aquery(text, table=table, db_uri=db_uri, k=k, mode=mode))
