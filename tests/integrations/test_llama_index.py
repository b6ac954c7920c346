"""LlamaIndex's `LanceDBVectorStore` on an indexflow table: node ids, document ids and titles of known answers."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.vector_stores import VectorStoreQuery
from llama_index.vector_stores.lancedb import LanceDBVectorStore

from indexflow.integrations.llama_index import IndexflowEmbedding
from indexflow.tasks.query import query

from .conftest import DOCS, QUERIES


@pytest.fixture
def vector_store(indexed) -> LanceDBVectorStore:
    return LanceDBVectorStore(uri=indexed.db_uri, table_name=indexed.table)


@pytest.mark.parametrize("question", list(QUERIES))
def test_retriever_finds_the_known_document_with_its_metadata(vector_store, embedder, indexed, endpoint, question):
    index = VectorStoreIndex.from_vector_store(vector_store, embed_model=IndexflowEmbedding(embedder))
    found = index.as_retriever(similarity_top_k=3).retrieve(question)
    best = QUERIES[question]
    top = found[0].node
    assert top.node_id == f"{best}#0"
    assert top.ref_doc_id == best
    assert top.metadata["title"] == DOCS[best][0]
    assert top.metadata["source"].startswith(indexed.source)
    assert top.get_content() == DOCS[best][1]
    hits = query(question, db_uri=indexed.db_uri, table=indexed.table, endpoint=endpoint, k=3)
    assert [n.node.node_id for n in found] == [h.id for h in hits]
    assert [n.node.metadata["title"] for n in found] == [h.title for h in hits]


def test_store_query_with_a_query_embedding(vector_store, embedder):
    model = IndexflowEmbedding(embedder)
    vector = model.get_query_embedding("decode a JSON document into a dict")
    result = vector_store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=2))
    assert result.ids[0] == "json#0"
    assert result.nodes[0].metadata["doc_id"] == "json"
    assert result.nodes[0].metadata["title"] == DOCS["json"][0]


def test_async_query_embedding_matches_and_texts_are_refused(emu, embedder):
    model = IndexflowEmbedding(embedder)
    vector = asyncio.run(model.aget_query_embedding("dates and time zones"))
    assert emu.admin.stats()["calls"] == 1
    assert vector == model.get_query_embedding("dates and time zones")
    assert model.model_name == embedder.recipe.model
    with pytest.raises(NotImplementedError):
        model.get_text_embedding("a document LlamaIndex would insert")
    assert emu.admin.stats()["calls"] == 2
