"""Embed a query the way `indexflow query` does: the table's recipe, RETRIEVAL_QUERY, L2-normalized."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from pydantic import SecretStr

from indexflow.tasks.errors import ConfigError
from indexflow.tasks.gemini.embed import embed_query
from indexflow.tasks.gemini.client import close_client, make_client
from indexflow.tasks.normalize import l2_normalize
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.settings import Endpoint
from indexflow.tasks.store import VectorStore


class QueryEmbedder:
    """Query vectors that match the documents of a table built with `recipe`.

    Calls run with one client on one event loop in a daemon thread: building a google-genai
    client costs ~0.4 s (TLS setup of its HTTP clients), too much to pay per query, and a loop of
    its own lets `embed` work from plain code and from inside a running loop alike (`aembed`
    from any loop). `close()` ends the thread and the client.
    """

    def __init__(self, recipe: Recipe, endpoint: Endpoint) -> None:
        self.recipe = recipe
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None  # a google-genai client (tasks.gemini), touched on self._loop only

    @classmethod
    def for_table(
        cls,
        db_uri: str,
        table: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_seconds: float = 60.0,
        storage_options: dict[str, str] | None = None,
    ) -> QueryEmbedder:
        """The embedder for table `table` at `db_uri`, its recipe read from the table.

        The key and base URL default to GEMINI_API_KEY and GOOGLE_GEMINI_BASE_URL, as for the
        `indexflow` command; unlike it, no emulator is started here (an object may outlive one).
        """
        key = api_key or os.environ.get("GEMINI_API_KEY")
        url = base_url or os.environ.get("GOOGLE_GEMINI_BASE_URL") or None
        if not key:
            raise ConfigError(
                "embedding queries needs an API key: set GEMINI_API_KEY (or pass api_key=); to use the emulator, "
                "run `indexflow emulator` and set GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:8765 GEMINI_API_KEY=emulator-key"
            )
        recipe = VectorStore.open(db_uri, table, None, create=False, storage_options=storage_options).recipe
        return cls(recipe, Endpoint(api_key=SecretStr(key), base_url=url, timeout_seconds=timeout_seconds))

    def __repr__(self) -> str:
        return f"QueryEmbedder(recipe={self.recipe!r}, base_url={self.endpoint.base_url!r})"

    def embed(self, text: str) -> list[float]:
        """The unit-length query vector for `text` (one API call); raises indexflow's errors."""
        return asyncio.run_coroutine_threadsafe(self._embed(text), self._runner()).result()

    async def aembed(self, text: str) -> list[float]:
        """`embed` for async code: the caller's loop waits without blocking."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._embed(text), self._runner()))

    def close(self) -> None:
        """Close the client and stop the thread; a later call starts them again."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._close_client(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def __enter__(self) -> QueryEmbedder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _runner(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="indexflow-query-embedder",
                                                daemon=True)
                self._thread.start()
            return self._loop

    async def _embed(self, text: str) -> list[float]:
        if self._client is None:
            self._client = make_client(self.endpoint)
        raw = await embed_query(self._client, text, self.recipe)
        return l2_normalize(raw.reshape(1, -1), expected_dim=self.recipe.dimensions)[0].tolist()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await close_client(client)
