"""The emulator's vectors carry lexical meaning: SciFact queries find judged-relevant documents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from google.genai import types

from indexflow.emulator.embedding import embed_texts
from tests.datasets import scifact_dir

DIM = 768
# Measured 0.373 top-1 (nDCG@10 0.463) at 768 dims; the floor sits just below.
TOP1_FLOOR = 0.36


def _jsonl(name: str) -> list[dict]:
    with open(scifact_dir() / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def scifact() -> tuple[list[dict], list[dict], dict[str, set[str]]]:
    qrels: dict[str, set[str]] = {}
    for line in (scifact_dir() / "qrels.tsv").read_text().splitlines()[1:]:
        query_id, doc_id, _ = line.split("\t")
        qrels.setdefault(query_id, set()).add(doc_id)
    return _jsonl("corpus.jsonl"), _jsonl("queries.jsonl"), qrels


def _normalized(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@pytest.mark.slow
def test_scifact_queries_rank_a_relevant_document_first(scifact):
    corpus, queries, qrels = scifact
    docs = _normalized(embed_texts([d["text"] for d in corpus], DIM, "RETRIEVAL_DOCUMENT",
                                   [d["title"] for d in corpus]))
    query_vectors = _normalized(embed_texts([q["text"] for q in queries], DIM, "RETRIEVAL_QUERY"))
    doc_ids = np.array([d["_id"] for d in corpus])
    top10 = doc_ids[np.argsort(-(query_vectors @ docs.T), axis=1)[:, :10]]
    hits, ndcg = 0, 0.0
    for query, ranked in zip(queries, top10):
        relevant = qrels[query["_id"]]
        hits += ranked[0] in relevant
        dcg = sum(1 / np.log2(rank + 2) for rank, doc in enumerate(ranked) if doc in relevant)
        ndcg += dcg / sum(1 / np.log2(rank + 2) for rank in range(min(len(relevant), 10)))
    top1, ndcg10 = hits / len(queries), ndcg / len(queries)
    print(f"SciFact at {DIM} dims: top-1 relevant {top1:.3f}, nDCG@10 {ndcg10:.3f} over {len(queries)} queries")
    assert top1 >= TOP1_FLOOR


def test_http_vectors_equal_embed_texts_for_a_sample(scifact, genai_client):
    corpus, queries, _ = scifact
    for doc in corpus[::1000]:  # one title per call, as the SDK sends it
        response = genai_client.models.embed_content(
            model="gemini-embedding-001", contents=[doc["text"]],
            config=types.EmbedContentConfig(task_type="RETRIEVAL_DOCUMENT", title=doc["title"],
                                            output_dimensionality=DIM))
        got = np.asarray(response.embeddings[0].values, dtype=np.float32)
        np.testing.assert_array_equal(got, embed_texts([doc["text"]], DIM, "RETRIEVAL_DOCUMENT", [doc["title"]])[0])
    texts = [q["text"] for q in queries[:40]]
    response = genai_client.models.embed_content(
        model="gemini-embedding-001", contents=texts,
        config=types.EmbedContentConfig(task_type="RETRIEVAL_QUERY", output_dimensionality=DIM))
    got = np.asarray([e.values for e in response.embeddings], dtype=np.float32)
    np.testing.assert_array_equal(got, embed_texts(texts, DIM, "RETRIEVAL_QUERY"))
