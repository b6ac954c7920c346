"""Batch reading: a job's status with batchStats, the polling table, and results paired with chunks
(inline by position, file lines by key). Plain functions, and the real SDK against the session emulator."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import numpy as np
import pytest
from google import genai
from google.genai import types

from indexflow.tasks.batch.cadence import poll_interval
from indexflow.tasks.batch.watch import read_status
from indexflow.tasks.batch.wire import (
    TERMINAL_ITEM_CODES, ItemError, JobStatus, file_results, inline_body, inline_results, parse_status,
)
from indexflow.tasks.gemini.batches import create_job, inline_responses
from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import AuthError, BatchJobError, ConfigError
from indexflow.tasks.recipe import Recipe

pytestmark = pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")

RECIPE = Recipe()


def chunk(i: int) -> Chunk:
    text, title = f"Text number {i}.", f"Title {i}"
    return Chunk(id=f"d{i}#0", doc_id=f"d{i}", ordinal=0, text=text, title=title, source="c.jsonl", tokens=3,
                 content_hash=RECIPE.content_hash(title, text))


def client_for(emu, api_key: str | None = None) -> genai.Client:
    return genai.Client(api_key=api_key or emu.api_key,
                        http_options=types.HttpOptions(base_url=emu.base_url, api_version="v1beta"))


# -- status ----------------------------------------------------------------------------------------


def test_parse_status_reads_every_field_of_a_finished_file_job():
    payload = {"name": "batches/f1", "done": True, "error": {"code": 9, "message": "expired"}, "metadata": {
        "state": "JOB_STATE_FAILED", "displayName": "t-run-0001",
        "output": {"responsesFile": "files/out"},
        "batchStats": {"requestCount": "200", "successfulRequestCount": "150", "failedRequestCount": "30",
                       "pendingRequestCount": "20"}}}
    status = parse_status(payload)
    assert status == JobStatus(name="batches/f1", state="FAILED", done=True, requests=200, succeeded=150, failed=30,
                               pending=20, error="9: expired", output_file="files/out", display_name="t-run-0001")
    assert status.payload is payload and status.settled == 180


def test_parse_status_of_sparse_operations():
    assert parse_status({"metadata": {"name": "batches/m", "state": "BATCH_STATE_PENDING"}}) == JobStatus(
        "batches/m", "PENDING", False)
    assert parse_status({}) == JobStatus("", "UNSPECIFIED", False, 0, 0, 0, 0, None, None, None)
    assert parse_status({"name": "batches/x", "metadata": {"state": "CANCELLED"}}).state == "CANCELLED"


def test_a_status_is_an_immutable_value_compared_and_printed_without_its_payload():
    bare = JobStatus("batches/x", "FAILED", True)
    assert (bare.requests, bare.succeeded, bare.failed, bare.pending, bare.settled) == (0, 0, 0, 0, 0)
    assert (bare.error, bare.output_file, bare.display_name, bare.payload) == (None, None, None, {})
    big = JobStatus("batches/x", "FAILED", True, payload={"metadata": {"huge": "x" * 10_000}})
    assert big == bare and hash(big) == hash(bare)
    assert "huge" not in repr(big) and "payload" not in repr(big)
    with pytest.raises(dataclasses.FrozenInstanceError):
        big.state = "SUCCEEDED"  # type: ignore[misc]


def test_get_status_of_a_real_inline_job_and_its_results_by_position(emu):
    client = client_for(emu)
    chunks = [chunk(i) for i in range(3)]

    async def go():
        name = await create_job(client, RECIPE.model, inline_body(chunks, RECIPE, "status-test"))
        deadline = time.monotonic() + 60  # the session emulator finishes a job in 0.35 s
        status = await read_status(client, name)
        while not status.done and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            status = await read_status(client, name)
        return name, status

    try:
        name, status = asyncio.run(go())
    finally:
        client.close()
    assert status == JobStatus(name, "SUCCEEDED", True, requests=3, succeeded=3, failed=0, pending=0,
                               display_name="status-test")
    results = inline_results(inline_responses(status.payload), chunks, RECIPE.dimensions, job=status.name)
    assert results.chunks == chunks and results.errors == []
    assert results.vectors.shape == (3, RECIPE.dimensions) and results.vectors.dtype == np.float32

    with pytest.raises(BatchJobError) as caught:  # one result short: none can be matched by position
        inline_results(inline_responses(status.payload), chunks[:2], RECIPE.dimensions, job=status.name)
    assert (caught.value.job, caught.value.expected, caught.value.got) == (name, 2, 3)
    assert f"returned 3 inline results for 2 requests" in str(caught.value)


def test_a_job_without_inline_results_cannot_be_paired():
    with pytest.raises(BatchJobError) as caught:
        inline_results(inline_responses({"name": "batches/e", "done": True}), [chunk(0)], 4, job="batches/e")
    assert (caught.value.job, caught.value.state, caught.value.expected, caught.value.got) == ("batches/e", "SUCCEEDED",
                                                                                               1, None)


def test_get_status_raises_indexflow_errors(emu):
    """404 is what the batch route reads as "deleted behind our back"; a refused key is terminal."""
    good, bad = client_for(emu), client_for(emu, api_key="not-the-emulator-key")

    async def go():
        raised = []
        for client, name in ((good, "batches/never-made"), (bad, "batches/x")):
            try:
                await read_status(client, name)
            except Exception as exc:  # noqa: BLE001
                raised.append(exc)
        return raised

    try:
        missing, refused = asyncio.run(go())
    finally:
        good.close()
        bad.close()
    assert type(missing) is ConfigError and missing.status == 404
    assert type(refused) is AuthError and not refused.transient


# -- polling -------------------------------------------------------------------------------------


def test_poll_interval_table_boundaries_and_caps():
    # items: <100 -> 2 s (cap 5), <1,000 -> 5 s (cap 10), <10,000 -> 10 s (cap 30), else 30 s (cap 60)
    assert [poll_interval(n, 0) for n in (1, 99, 100, 999, 1_000, 9_999, 10_000)] == [2.0, 2.0, 5.0, 5.0, 10.0, 10.0,
                                                                                      30.0]
    assert [poll_interval(n, 20) for n in (99, 100, 999, 1_000, 9_999, 10_000)] == [5.0, 10.0, 10.0, 30.0, 30.0, 60.0]
    assert [poll_interval(500, i) for i in range(4)] == [5.0, 7.5, 10.0, 10.0]
    assert [poll_interval(5_000, i) for i in range(4)] == [10.0, 15.0, 22.5, 30.0]
    # configured: that base, backing off to 4x it
    assert [poll_interval(10**6, i, configured=1.0) for i in range(6)] == [1.0, 1.5, 2.25, 3.375, 4.0, 4.0]


# -- results ------------------------------------------------------------------------------------------


def test_only_code_3_invalid_argument_is_terminal():
    assert TERMINAL_ITEM_CODES == frozenset({3})
    assert [ItemError(chunk(0), code, "m").terminal for code in (3, 4, 13, None)] == [True, False, False, False]
    error = ItemError(chunk(0), 3, "m")
    assert error == ItemError(chunk(0), 3, "m") and len({error, ItemError(chunk(0), 3, "m")}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        error.code = 4  # type: ignore[misc]


def test_file_results_match_lines_by_key_and_explain_every_chunk_they_cannot_use():
    dim = 4
    c = [chunk(i) for i in range(8)]
    line = lambda obj: json.dumps(obj).encode()  # noqa: E731
    data = b"\n".join([
        line({"key": c[6].id, "response": {"embedding": {"values": [6.0, 6, 6, 6]}}}),  # any order
        b"",
        b"   ",
        line({"key": c[1].id, "error": {"code": 13, "message": "internal"}}),
        b"{not json",
        line({"key": c[0].id, "response": {"embedding": {"values": [0.5, 0, 0, 1]}}}),
        line([c[7].id]),  # not an object
        line({"key": 7, "response": {"embedding": {"values": [7.0, 7, 7, 7]}}}),  # a key that is not a string
        line({"key": c[2].id, "error": {"code": 3}}),
        line({"key": c[3].id, "response": None}),
        line({"key": c[4].id, "response": {"embedding": {"values": [1.0, 2.0, 3.0]}}}),
    ]) + b"\n"
    results = file_results(data, c, dim)
    assert results.chunks == [c[0], c[6]]
    np.testing.assert_array_equal(results.vectors, np.array([[0.5, 0, 0, 1], [6, 6, 6, 6]], np.float32))
    assert results.vectors.dtype == np.float32
    assert results.errors == [
        ItemError(c[1], 13, "internal"),
        ItemError(c[2], 3, "error"),
        ItemError(c[3], None, "no usable 4-dimensional embedding in the result (got None)"),
        ItemError(c[4], None, "no usable 4-dimensional embedding in the result (got 3)"),
        ItemError(c[5], None, "no line with this key in the output file"),
        ItemError(c[7], None, "no line with this key in the output file"),
    ]


def test_file_results_of_an_empty_output_report_every_chunk_missing():
    results = file_results(b"", [chunk(0)], 4)
    assert results.chunks == [] and results.vectors.shape == (0, 4)
    assert results.errors == [ItemError(chunk(0), None, "no line with this key in the output file")]
