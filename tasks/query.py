"""Query an index: embed the question with the table's recipe (RETRIEVAL_QUERY), normalize, search."""

from __future__ import annotations

import asyncio

from tasks.gemini import embed_query, make_client
from tasks.normalize import l2_normalize
from tasks.search import Hit
from tasks.settings import Endpoint
from tasks.store import VectorStore


async def aquery(text: str, *, db_uri: str, table: str, endpoint: Endpoint, k: int = 10,
                 hybrid: bool = False) -> list[Hit]:
    """The `k` best chunks for `text`; `hybrid` fuses vector and full-text hits (RRF)."""
    store = await asyncio.to_thread(VectorStore.open, db_uri, table, None, create=False)
    raw = await embed_query(make_client(endpoint), text, store.recipe)
    vector = l2_normalize(raw.reshape(1, -1), expected_dim=store.recipe.dimensions)[0]
    return await asyncio.to_thread(store.search, vector, k, text=text if hybrid else None, hybrid=hybrid)


def query(text: str, *, db_uri: str, table: str, endpoint: Endpoint, k: int = 10, hybrid: bool = False) -> list[Hit]:
    """Synchronous `aquery` for scripts and notebooks."""
    return asyncio.run(aquery(text, db_uri=db_uri, table=table, endpoint=endpoint, k=k, hybrid=hybrid))
