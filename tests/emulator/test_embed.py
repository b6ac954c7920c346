"""Online embeddings through the unmodified google-genai SDK: values, order, validation, keys."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx2
import numpy as np
import pytest
from google import genai
from google.genai import errors, types

from indexflow.emulator.embedding import count_tokens, embed_texts

MODEL = "gemini-embedding-001"
REPO_ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "Aspirin lowers the risk of heart attacks in adults.",
    "Vitamin D deficiency is common in northern countries.",
    "Gene expression changes in tumour cells after radiation.",
]


def _vectors(response: types.EmbedContentResponse) -> np.ndarray:
    return np.asarray([e.values for e in response.embeddings], dtype=np.float32)


def _embed(client: genai.Client, contents, **config) -> np.ndarray:
    config = types.EmbedContentConfig(**config) if config else None
    return _vectors(client.models.embed_content(model=MODEL, contents=contents, config=config))


def test_vectors_match_embed_texts_in_request_order(genai_client, emu):
    got = _embed(genai_client, TEXTS, task_type="RETRIEVAL_DOCUMENT", output_dimensionality=768, title="Medicine")
    want = embed_texts(TEXTS, 768, "RETRIEVAL_DOCUMENT", ["Medicine"] * len(TEXTS))
    assert got.shape == (3, 768)
    np.testing.assert_array_equal(got, want)
    reversed_got = _embed(genai_client, TEXTS[::-1], task_type="RETRIEVAL_DOCUMENT", output_dimensionality=768,
                          title="Medicine")
    np.testing.assert_array_equal(reversed_got, want[::-1])
    assert emu.admin.stats()["texts"] == 6


def test_full_vector_is_unit_and_prefix_is_not_renormalized(genai_client):
    full = _embed(genai_client, TEXTS)
    short = _embed(genai_client, TEXTS, output_dimensionality=768)
    assert full.shape == (3, 3072)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(short, full[:, :768], rtol=1e-6)
    assert (np.linalg.norm(short, axis=1) < 0.99).all()


def test_title_only_changes_retrieval_document_vectors(genai_client):
    plain = _embed(genai_client, TEXTS[:1], task_type="RETRIEVAL_QUERY", output_dimensionality=768)
    titled_query = _embed(genai_client, TEXTS[:1], task_type="RETRIEVAL_QUERY", output_dimensionality=768)
    titled_doc = _embed(genai_client, TEXTS[:1], task_type="RETRIEVAL_DOCUMENT", title="Cardiology",
                        output_dimensionality=768)
    np.testing.assert_array_equal(plain, titled_query)
    assert not np.array_equal(plain, titled_doc)


def test_embeddings_are_identical_in_another_process():
    code = (
        "import numpy as np; from indexflow.emulator.embedding import embed_texts; "
        f"print(embed_texts({TEXTS!r}, 256).tobytes().hex())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123"}, cwd=REPO_ROOT)
    assert bytes.fromhex(out.stdout.strip()) == embed_texts(TEXTS, 256).tobytes()


def test_similar_texts_are_closer_than_unrelated_ones():
    docs = embed_texts(["aspirin reduces heart attack risk", "volcanic ash in the stratosphere"], 3072)
    query = embed_texts(["does aspirin prevent heart attacks"], 3072, "RETRIEVAL_QUERY")
    scores = docs @ query[0]
    assert scores[0] > scores[1] + 0.2


def test_async_client_gets_the_same_vectors(genai_client):
    async def run() -> types.EmbedContentResponse:
        return await genai_client.aio.models.embed_content(
            model=MODEL, contents=TEXTS, config=types.EmbedContentConfig(output_dimensionality=1536)
        )

    np.testing.assert_array_equal(_vectors(asyncio.run(run())), embed_texts(TEXTS, 1536))


def test_101_texts_are_refused_with_googles_message(genai_client, emu):
    with pytest.raises(errors.ClientError) as info:
        _embed(genai_client, ["text"] * 101)
    assert (info.value.code, info.value.status) == (400, "INVALID_ARGUMENT")
    assert info.value.message.strip() == "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch"
    assert emu.admin.stats().get("texts", 0) == 0


def test_text_over_2048_tokens_is_named(genai_client):
    long_text = "word " * 2000  # 10,000 characters = 2,500 tokens
    assert count_tokens(long_text) > 2048
    with pytest.raises(errors.ClientError) as info:
        _embed(genai_client, ["short", long_text, "short"])
    assert info.value.code == 400
    assert "requests[1].content" in info.value.message
    assert "requests[0]" not in info.value.message and "requests[2]" not in info.value.message
    violations = info.value.details["error"]["details"][0]["fieldViolations"]
    assert [v["field"] for v in violations] == ["requests[1].content"]


def test_empty_text_is_named(genai_client):
    with pytest.raises(errors.ClientError) as info:
        _embed(genai_client, ["fine", "also fine", "", "fine"])
    assert info.value.status == "INVALID_ARGUMENT"
    assert "requests[2].content: text is empty" in info.value.message


@pytest.mark.parametrize("dim", [64, 127, 3073])
def test_dimensionality_outside_128_3072_is_refused(genai_client, dim):
    with pytest.raises(errors.ClientError) as info:
        _embed(genai_client, ["a text"], output_dimensionality=dim)
    assert info.value.code == 400
    assert "requests[0].output_dimensionality" in info.value.message
    assert str(dim) in info.value.message


def test_unknown_model_is_not_found_like_google(genai_client):
    with pytest.raises(errors.ClientError) as info:
        genai_client.models.embed_content(model="text-embedding-999", contents=["a"])
    assert (info.value.code, info.value.status) == (404, "NOT_FOUND")
    assert info.value.message.startswith("models/text-embedding-999 is not found for API version v1beta")


def test_wrong_key_gets_googles_api_key_invalid(emu):
    client = genai.Client(api_key="not-a-key",
                          http_options=types.HttpOptions(base_url=emu.base_url, api_version="v1beta"))
    with pytest.raises(errors.ClientError) as info:
        client.models.embed_content(model=MODEL, contents=["a"])
    assert (info.value.code, info.value.status) == (400, "INVALID_ARGUMENT")
    assert info.value.message == "API key not valid. Please pass a valid API key."
    assert info.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert emu.admin.stats()["errors.400"] == 1


def test_missing_key_gets_permission_denied(emu):
    # The SDK refuses to send without a key, so this one goes over plain HTTP.
    url = f"{emu.base_url}/v1beta/models/{MODEL}:batchEmbedContents"
    body = {"requests": [{"content": {"parts": [{"text": "a"}]}}]}
    response = httpx2.post(url, json=body)
    assert response.status_code == 403
    assert response.json()["error"]["status"] == "PERMISSION_DENIED"
    with_query_key = httpx2.post(url, params={"key": emu.api_key}, json=body)
    assert with_query_key.status_code == 200
    assert len(with_query_key.json()["embeddings"]) == 1


def test_embed_content_endpoint_answers_one_embedding(emu):
    response = httpx2.post(
        f"{emu.base_url}/v1/models/{MODEL}:embedContent",
        headers={"x-goog-api-key": emu.api_key},
        json={"content": {"parts": [{"text": TEXTS[0]}]}, "outputDimensionality": 128},
    )
    assert response.status_code == 200
    values = np.asarray(response.json()["embedding"]["values"], dtype=np.float32)
    np.testing.assert_array_equal(values, embed_texts(TEXTS[:1], 128)[0])
    bad = httpx2.post(f"{emu.base_url}/v1/models/{MODEL}:embedContent",
                      headers={"x-goog-api-key": emu.api_key}, json={"content": {"parts": [{"text": ""}]}})
    assert bad.status_code == 400
    assert "EmbedContentRequest.content: text is empty" in bad.json()["error"]["message"]
