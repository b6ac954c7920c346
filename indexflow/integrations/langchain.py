"""LangChain: embeddings for querying an indexflow table through `langchain_community`'s `LanceDB` store."""

from __future__ import annotations

from typing import Any

from indexflow.integrations.query import QueryEmbedder

try:
    from langchain_core.embeddings import Embeddings
except ImportError as exc:  # optional: only this module needs LangChain
    raise ImportError("indexflow.integrations.langchain needs LangChain: pip install 'indexflow[interop]'") from exc

REFUSE_DOCUMENTS = (
    "IndexflowEmbeddings embeds queries only: indexflow writes the table (`indexflow index`), and "
    "LangChain's LanceDB.add_texts would replace it (its default mode is 'overwrite')"
)


class IndexflowEmbeddings(Embeddings):
    """Query embeddings with the table's recipe; `embed_documents` refuses, which keeps `add_texts` off the table."""

    def __init__(self, embedder: QueryEmbedder) -> None:
        self.embedder = embedder

    @classmethod
    def for_table(cls, db_uri: str, table: str, **options: Any) -> IndexflowEmbeddings:
        """Embeddings for table `table` at `db_uri`; `options` as for `QueryEmbedder.for_table`."""
        return cls(QueryEmbedder.for_table(db_uri, table, **options))

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed(text)

    async def aembed_query(self, text: str) -> list[float]:
        return await self.embedder.aembed(text)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError(REFUSE_DOCUMENTS)


def cosine_relevance(distance: float) -> float:
    """Cosine similarity from the `_distance` LangChain's store reports (LanceDB's default, squared L2).

    Every indexflow vector and query vector is unit length, so |q - v|² = 2 - 2·cos: pass this as
    `LanceDB(relevance_score_fn=cosine_relevance)` to get the score `indexflow query` prints.
    """
    return 1.0 - distance / 2.0
