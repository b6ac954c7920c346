"""Contract tests for the SDK's private parts `tasks.gemini.sdk_hooks` uses: an upgrade of google-genai
that moves or changes one fails here, by name, before any run depends on it."""

from __future__ import annotations

import asyncio
import inspect

from google import genai
from google.genai import batches as genai_batches
from google.genai import types

from indexflow.tasks.gemini.batches import inline_responses
from indexflow.tasks.gemini.sdk_hooks import batch_job_from_operation, raw_request


def test_the_api_client_async_request_keeps_its_signature():
    client = genai.Client(api_key="contract-test-key", http_options=types.HttpOptions(base_url="http://127.0.0.1:9"))
    request = client.aio._api_client.async_request  # AttributeError here: the hook moved
    params = list(inspect.signature(request).parameters)
    assert params[:4] == ["http_method", "path", "request_dict", "http_options"], params
    assert inspect.iscoroutinefunction(request)


def test_raw_request_returns_the_body_of_a_real_answer(emu, genai_client):
    body = asyncio.run(raw_request(genai_client, "post", "models/gemini-embedding-001:batchEmbedContents",
                                   {"requests": [{"model": "models/gemini-embedding-001",
                                                  "content": {"parts": [{"text": "contract"}]},
                                                  "outputDimensionality": 128}]}))
    assert b'"embeddings"' in (body if isinstance(body, bytes) else body.encode())


def test_the_batch_job_converter_exists_and_reads_both_inline_shapes():
    assert callable(genai_batches._BatchJob_from_mldev)  # AttributeError here: the hook moved
    ok = {"name": "batches/c", "done": True, "metadata": {"state": "BATCH_STATE_SUCCEEDED", "output": {
        "inlinedEmbedContentResponses": {"inlinedResponses": [
            {"response": {"embedding": {"values": [0.5, 0.5]}}},
            {"error": {"code": 3, "message": "bad item"}}]}}}}
    job = batch_job_from_operation(ok)
    assert isinstance(job, types.BatchJob) and job.name == "batches/c"
    assert inline_responses(ok) == [([0.5, 0.5], None), (None, {"code": 3, "message": "bad item"})]
    failed = {"name": "batches/f", "done": True, "metadata": {"state": "BATCH_STATE_SUCCEEDED", "output": {
        "inlinedResponses": {"inlinedResponses": [{"error": {"code": 13, "message": "internal"}}]}}}}
    assert inline_responses(failed) == [(None, {"code": 13, "message": "internal"})]
    assert inline_responses({"name": "batches/e", "done": True}) is None
