"""LangChain's community `LanceDB` store on an indexflow table: ids, titles and scores of known answers."""

from __future__ import annotations

import asyncio

import lancedb
import pytest
from langchain_community.vectorstores import LanceDB

from indexflow.integrations.langchain import IndexflowEmbeddings, cosine_relevance
from indexflow.tasks.query import query
from indexflow.tasks.store import RECIPE_KEY

from .conftest import DOCS, QUERIES


@pytest.fixture
def store(indexed, embedder) -> LanceDB:
    return LanceDB(
        connection=lancedb.connect(indexed.db_uri), embedding=IndexflowEmbeddings(embedder),
        table_name=indexed.table, relevance_score_fn=cosine_relevance,
    )


@pytest.mark.parametrize("question", list(QUERIES))
def test_similarity_search_finds_the_known_document_with_its_metadata(store, indexed, endpoint, question):
    docs = store.similarity_search(question, k=3)
    best = QUERIES[question]
    assert docs[0].metadata["id"] == f"{best}#0"
    assert docs[0].metadata["doc_id"] == best
    assert docs[0].metadata["title"] == DOCS[best][0]
    assert docs[0].metadata["ordinal"] == 0 and docs[0].metadata["source"].startswith(indexed.source)
    assert docs[0].page_content == DOCS[best][1]
    # the same chunks in the same order as indexflow's own query
    hits = query(question, db_uri=indexed.db_uri, table=indexed.table, endpoint=endpoint, k=3)
    assert [d.metadata["id"] for d in docs] == [h.id for h in hits]
    assert [d.metadata["title"] for d in docs] == [h.title for h in hits]


def test_relevance_scores_are_indexflows_cosine_scores(store, indexed, endpoint):
    question = "how do I parse command line arguments"
    scored = store.similarity_search_with_relevance_scores(question, k=3)
    hits = query(question, db_uri=indexed.db_uri, table=indexed.table, endpoint=endpoint, k=3)
    assert [doc.metadata["id"] for doc, _ in scored] == [h.id for h in hits]
    assert [score for _, score in scored] == pytest.approx([h.score for h in hits], abs=1e-5)


def test_one_query_is_one_embedding_call_and_async_gives_the_same_vector(emu, embedder):
    embeddings = IndexflowEmbeddings(embedder)
    vector = embeddings.embed_query("zip archive")
    assert emu.admin.stats()["calls"] == 1
    assert asyncio.run(embeddings.aembed_query("zip archive")) == vector


def test_add_texts_is_refused_before_it_can_overwrite_the_table(store, indexed):
    with pytest.raises(NotImplementedError, match="overwrite"):
        store.add_texts(["a text LangChain would write"], ids=["x"])
    table = lancedb.connect(indexed.db_uri).open_table(indexed.table)
    assert table.count_rows() == len(DOCS)
    assert RECIPE_KEY.encode() in table.schema.metadata
