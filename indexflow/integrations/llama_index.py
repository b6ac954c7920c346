"""LlamaIndex: a query embedding model for an indexflow table opened with `LanceDBVectorStore`."""

from __future__ import annotations

from typing import Any

from indexflow.integrations.query import QueryEmbedder

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr
except ImportError as exc:  # optional: only this module needs LlamaIndex
    raise ImportError("indexflow.integrations.llama_index needs LlamaIndex: pip install 'indexflow[interop]'") from exc

REFUSE_TEXTS = (
    "IndexflowEmbedding embeds queries only: indexflow writes the table (`indexflow index`) "
    "with titles and its own recipe, which LlamaIndex's inserts would not match"
)


class IndexflowEmbedding(BaseEmbedding):
    """Query embeddings with the table's recipe; text (document) embeddings refuse."""

    # Private, not a field: fields are serialized into LlamaIndex's events, and the endpoint holds the key.
    _embedder: QueryEmbedder = PrivateAttr()

    def __init__(self, embedder: QueryEmbedder, **kwargs: Any) -> None:
        super().__init__(model_name=embedder.recipe.model, **kwargs)
        self._embedder = embedder

    @classmethod
    def for_table(cls, db_uri: str, table: str, **options: Any) -> IndexflowEmbedding:
        """The embedding model for table `table` at `db_uri`; `options` as for `QueryEmbedder.for_table`."""
        return cls(QueryEmbedder.for_table(db_uri, table, **options))

    @classmethod
    def class_name(cls) -> str:
        return "IndexflowEmbedding"

    @property
    def embedder(self) -> QueryEmbedder:
        return self._embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embedder.embed(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await self._embedder.aembed(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        raise NotImplementedError(REFUSE_TEXTS)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        raise NotImplementedError(REFUSE_TEXTS)
