"""Query an index: embed the question with the table's recipe (RETRIEVAL_QUERY), normalize, search."""

from __future__ import annotations

import asyncio
from typing import Literal

from indexflow.tasks.errors import ConfigError
from indexflow.tasks.fusion import FusionWeights
from indexflow.tasks.gemini.embed import embed_query
from indexflow.tasks.gemini.client import make_client
from indexflow.tasks.normalize import l2_normalize
from indexflow.tasks.search import Hit, IndexPolicy
from indexflow.tasks.settings import Endpoint
from indexflow.tasks.store import VectorStore

QueryMode = Literal["vector", "fts", "hybrid"]
QUERY_MODES: tuple[QueryMode, ...] = ("vector", "fts", "hybrid")
Weights = FusionWeights | tuple[float, float] | str | None  # (vector, text), "0.7,0.3"; None is plain RRF


async def aquery(text: str, *, db_uri: str, table: str, endpoint: Endpoint | None, k: int = 10,
                 mode: QueryMode = "vector", weights: Weights = None,
                 policy: IndexPolicy | None = None) -> list[Hit]:
    """The `k` best chunks for `text`: by vector, by full text (BM25; no API call), or both fused (RRF).

    `weights` (vector, text) weigh the two sides of a hybrid query; only hybrid accepts them.
    `policy` overrides the index rule's nprobes/refine (e.g. `IndexPolicy(nprobes=100)`)."""
    if mode not in QUERY_MODES:
        raise ConfigError(f"query mode must be one of {', '.join(QUERY_MODES)}, got {mode!r}", mode=mode)
    if weights is not None and mode != "hybrid":
        raise ConfigError(f"fusion weights apply to hybrid queries only, not mode {mode!r}", mode=mode)
    fusion = FusionWeights.of(weights)  # refused before the table is opened or the query embedded
    store = await asyncio.to_thread(VectorStore.open, db_uri, table, None, create=False, policy=policy)
    vector = None
    if mode != "fts":
        if endpoint is None:
            raise ConfigError(f"query mode {mode!r} embeds the query and needs an endpoint", mode=mode)
        raw = await embed_query(make_client(endpoint), text, store.recipe)
        vector = l2_normalize(raw.reshape(1, -1), expected_dim=store.recipe.dimensions)[0]
    return await asyncio.to_thread(store.search, vector, k, text=text if mode != "vector" else None,
                                   hybrid=mode == "hybrid", weights=fusion)


def query(text: str, *, db_uri: str, table: str, endpoint: Endpoint | None, k: int = 10,
          mode: QueryMode = "vector", weights: Weights = None, policy: IndexPolicy | None = None) -> list[Hit]:
    """Synchronous `aquery` for scripts and notebooks."""
    return asyncio.run(aquery(text, db_uri=db_uri, table=table, endpoint=endpoint, k=k, mode=mode, weights=weights,
                              policy=policy))
