"""Batch API jobs of the emulator, driven through the unmodified google-genai SDK."""

from __future__ import annotations

import asyncio
import io
import json
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
from google import genai
from google.genai import errors, types

from indexflow.emulator.admin import AdminError
from indexflow.emulator.cli import build_parser, config_from_args
from indexflow.emulator.config import BatchConfig, EmulatorConfig
from indexflow.emulator.embedding import count_tokens, embed_texts
from indexflow.emulator.server import RunningEmulator, running_emulator
from tests.conftest import FAST_BATCHES

MODEL = "gemini-embedding-001"

pytestmark = pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")






def make_client(emu: RunningEmulator) -> genai.Client:
    return genai.Client(
        api_key=emu.api_key, http_options=types.HttpOptions(base_url=emu.base_url, api_version="v1beta")
    )


@pytest.fixture
def client(emu: RunningEmulator) -> genai.Client:
    return make_client(emu)


def raw_job(emu: RunningEmulator, name: str) -> dict:
    """The operation JSON as Google sends it (the SDK drops batchStats)."""
    response = httpx.get(f"{emu.base_url}/v1beta/{name}", headers={"x-goog-api-key": emu.api_key})
    response.raise_for_status()
    return response.json()


def wait_done(client: genai.Client, name: str, timeout: float = 10.0) -> types.BatchJob:
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if job.done:
            return job
        assert time.monotonic() < deadline, f"{name} still {job.state} after {timeout}s"
        time.sleep(0.02)


def create_inline(client: genai.Client, texts: list[str], **config) -> types.BatchJob:
    src = {"inlined_requests": {"contents": texts, "config": config or None}}
    return client.batches.create_embeddings(model=MODEL, src=src, config={"display_name": "test"})


def vectors_of(job: types.BatchJob) -> list[np.ndarray | None]:
    return [
        None if r.response is None else np.asarray(r.response.embedding.values, dtype=np.float32)
        for r in job.dest.inlined_embed_content_responses
    ]


def test_inline_lifecycle_moves_pending_running_succeeded_with_string_stats(emu, client):
    # Long enough phases that a poll every 20 ms sees each one even when a loaded machine stalls
    # this process for most of a second.
    emu.admin.set_batch_config({"pending_seconds": 1.5, "running_seconds": 2.0})
    texts = [f"document number {i} about proteins" for i in range(10)]
    job = create_inline(client, texts, output_dimensionality=128)
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.name.startswith("batches/") and job.display_name == "test"
    assert job.model == f"models/{MODEL}" and job.create_time is not None

    seen_states, processed_while_running = [], []
    deadline = time.monotonic() + 30
    while True:
        op = raw_job(emu, job.name)
        meta = op["metadata"]
        stats = meta["batchStats"]
        assert all(isinstance(v, str) for v in stats.values())
        state = meta["state"]
        if not seen_states or seen_states[-1] != state:
            seen_states.append(state)
        if state == "BATCH_STATE_RUNNING":
            processed_while_running.append(int(stats.get("successfulRequestCount", "0")))
            assert int(stats.get("pendingRequestCount", "0")) == 10 - processed_while_running[-1]
        if op["done"]:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)

    assert seen_states == ["BATCH_STATE_PENDING", "BATCH_STATE_RUNNING", "BATCH_STATE_SUCCEEDED"]
    assert processed_while_running == sorted(processed_while_running)
    assert any(0 < n < 10 for n in processed_while_running)
    assert meta["batchStats"] == {"requestCount": "10", "successfulRequestCount": "10"}
    final = client.batches.get(name=job.name)
    assert final.state == types.JobState.JOB_STATE_SUCCEEDED and final.done
    assert final.end_time is not None and final.update_time >= final.create_time


def test_inline_output_is_in_input_order_and_equals_the_embedding_function(client):
    texts = ["zebra stripes pattern", "quantum chromodynamics", "apple pie recipe", "zebra stripes pattern"]
    job = create_inline(client, texts, output_dimensionality=768, task_type="RETRIEVAL_DOCUMENT", title="Notes")
    done = wait_done(client, job.name)
    vectors = vectors_of(done)
    expected = embed_texts(texts, 768, "RETRIEVAL_DOCUMENT", ["Notes"] * len(texts))
    assert len(vectors) == 4
    for got, want in zip(vectors, expected):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(vectors[0], vectors[1])
    np.testing.assert_array_equal(vectors[0], vectors[3])


def test_invalid_inline_items_become_item_errors_not_a_failed_job(client):
    texts = ["fine text", "", "x" * (4 * 2048 + 1), "also fine"]
    done = wait_done(client, create_inline(client, texts).name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    results = done.dest.inlined_embed_content_responses
    assert [r.error is None for r in results] == [True, False, False, True]
    assert results[1].error.code == 3 and "requests[1]" in results[1].error.message
    assert results[2].error.code == 3 and "2049 tokens" in results[2].error.message
    assert len(results[0].response.embedding.values) == 3072


def test_file_input_gives_a_keyed_jsonl_output_file(emu, client):
    lines = [
        {"key": f"chunk-{i}", "request": {"content": {"parts": [{"text": f"passage {i} on cell biology"}]},
                                          "taskType": "RETRIEVAL_DOCUMENT", "outputDimensionality": 256}}
        for i in range(12)
    ]
    lines.append({"key": "bad-dim", "request": {"content": {"parts": [{"text": "t"}]}, "outputDimensionality": 5}})
    payload = ("\n".join(json.dumps(line) for line in lines) + "\n{not json\n").encode()
    uploaded = client.files.upload(file=io.BytesIO(payload), config={"mime_type": "jsonl", "display_name": "in"})
    assert uploaded.size_bytes == len(payload)

    job = client.batches.create_embeddings(model=MODEL, src={"file_name": uploaded.name})
    done = wait_done(client, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest.file_name.startswith("files/") and done.dest.inlined_embed_content_responses is None
    assert raw_job(emu, job.name)["metadata"]["batchStats"] == {
        "requestCount": "14", "successfulRequestCount": "12", "failedRequestCount": "2"}

    output = [json.loads(line) for line in client.files.download(file=done.dest.file_name).splitlines()]
    assert len(output) == 14
    by_key = {line["key"]: line for line in output if "key" in line}
    expected = embed_texts([f"passage {i} on cell biology" for i in range(12)], 256, "RETRIEVAL_DOCUMENT")
    for i in range(12):
        np.testing.assert_array_equal(
            np.asarray(by_key[f"chunk-{i}"]["response"]["embedding"]["values"], dtype=np.float32), expected[i])
    assert by_key["bad-dim"]["error"]["code"] == 3
    keyless = [line for line in output if "key" not in line]
    assert len(keyless) == 1 and "line 14" in keyless[0]["error"]["message"]
    # Lines are shuffled: a client that matches by position would be wrong.
    assert [line.get("key") for line in output] != [line.get("key") for line in lines] + [None]
    # The generated output file advertises a download URI the SDK accepts for a File object.
    generated = client.files.get(name=done.dest.file_name)
    assert generated.download_uri and generated.source == types.FileSource.GENERATED
    assert client.files.download(file=generated) == client.files.download(file=done.dest.file_name)


def test_missing_input_file_is_rejected(client):
    with pytest.raises(errors.ClientError) as info:
        client.batches.create_embeddings(model=MODEL, src={"file_name": "files/doesnotexist"})
    assert info.value.code == 400 and "files/doesnotexist" in info.value.message


def test_item_failure_rate_fails_some_items_with_error_entries(emu, client):
    emu.admin.set_batch_config({"item_failure_rate": 0.5})
    texts = [f"item text {i}" for i in range(40)]
    done = wait_done(client, create_inline(client, texts, output_dimensionality=128).name)
    results = done.dest.inlined_embed_content_responses
    failed = [i for i, r in enumerate(results) if r.error is not None]
    assert 0 < len(failed) < 40
    assert all(results[i].error.code == 13 and results[i].response is None for i in failed)
    stats = raw_job(emu, done.name)["metadata"]["batchStats"]
    assert stats["failedRequestCount"] == str(len(failed))
    assert stats["successfulRequestCount"] == str(40 - len(failed))
    assert emu.admin.stats()["batches.items_failed"] == len(failed)


def test_all_items_failed_inline_lands_in_inlined_responses(emu, client):
    # The SDK only renames inlinedResponses to inlined_embed_content_responses when some item
    # carries an embedding, so a job whose every item failed surfaces in dest.inlined_responses.
    emu.admin.set_batch_config({"item_failure_rate": 1.0})
    done = wait_done(client, create_inline(client, ["a b c", "d e f", "g h i"]).name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest.inlined_embed_content_responses is None
    assert [r.error.code for r in done.dest.inlined_responses] == [13, 13, 13]


def test_cancel_and_delete(emu, client):
    emu.admin.set_batch_config({"pending_seconds": 0.0, "running_seconds": 60.0})
    job = create_inline(client, ["one", "two"])
    client.batches.cancel(name=job.name)
    cancelled = client.batches.get(name=job.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED and cancelled.done
    assert cancelled.dest is None
    client.batches.cancel(name=job.name)  # cancelling a cancelled job is a no-op
    assert emu.admin.stats()["batches.state.CANCELLED"] == 1

    emu.admin.set_batch_config(FAST_BATCHES)
    finished = wait_done(client, create_inline(client, ["three"]).name)
    with pytest.raises(errors.ClientError) as info:
        client.batches.cancel(name=finished.name)
    assert (info.value.code, info.value.status) == (400, "FAILED_PRECONDITION")

    deleted = client.batches.delete(name=job.name)
    assert deleted is not None
    with pytest.raises(errors.ClientError) as info:
        client.batches.get(name=job.name)
    assert (info.value.code, info.value.status) == (404, "NOT_FOUND")
    assert [j.name for j in client.batches.list()] == [finished.name]


def test_injected_failed_and_expired_jobs_have_no_output(emu, client):
    emu.admin.set_batch_config({"fail_next_jobs": 1, "expire_next_jobs": 1})
    failed = create_inline(client, ["first"])
    expired = create_inline(client, ["second"])
    succeeded = create_inline(client, ["third"])
    assert emu.admin.batch_config()["fail_next_jobs"] == 0
    assert emu.admin.batch_config()["expire_next_jobs"] == 0

    assert wait_done(client, failed.name).state == types.JobState.JOB_STATE_FAILED
    assert wait_done(client, expired.name).state == types.JobState.JOB_STATE_EXPIRED
    assert wait_done(client, succeeded.name).state == types.JobState.JOB_STATE_SUCCEEDED
    for name in (failed.name, expired.name):
        op = raw_job(emu, name)
        assert op["done"] and "output" not in op["metadata"]
    assert raw_job(emu, failed.name)["error"]["code"] == 13
    stats = emu.admin.stats()
    by_state = [stats[f"batches.state.{state}"] for state in ("FAILED", "EXPIRED", "SUCCEEDED")]
    assert by_state == [1, 1, 1]


def test_inline_request_over_20_mb_is_rejected(emu, client):
    big = ["word " * (1024 * 1024 // 5)] * 21  # 21 texts of 1 MB
    with pytest.raises(errors.ClientError) as info:
        create_inline(client, big)
    assert (info.value.code, info.value.status) == (400, "INVALID_ARGUMENT")
    assert "20971520" in info.value.message
    assert list(client.batches.list()) == []
    assert emu.admin.stats()["errors.batch.400"] == 1


def test_the_101st_concurrent_job_gets_a_bare_429(emu, client):
    emu.admin.set_batch_config({"pending_seconds": 60.0})
    names = [create_inline(client, [f"t{i}"]).name for i in range(100)]
    with pytest.raises(errors.ClientError) as info:
        create_inline(client, ["one too many"])
    assert (info.value.code, info.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert "details" not in info.value.details["error"]
    client.batches.cancel(name=names[0])
    assert create_inline(client, ["room again"]).state == types.JobState.JOB_STATE_PENDING
    assert emu.admin.stats()["errors.batch.429"] == 1


def test_list_pages_newest_first_with_opaque_tokens(emu, client):
    names = [create_inline(client, [f"text {i}"]).name for i in range(5)]
    listed = [job.name for job in client.batches.list(config={"page_size": 2})]
    assert listed == names[::-1]
    headers = {"x-goog-api-key": emu.api_key}
    first = httpx.get(f"{emu.base_url}/v1beta/batches", params={"pageSize": 2}, headers=headers).json()
    assert len(first["operations"]) == 2 and first["nextPageToken"]
    seen = [op["name"] for op in first["operations"]]
    token = first["nextPageToken"]
    while token:
        page = httpx.get(f"{emu.base_url}/v1beta/batches", params={"pageSize": 2, "pageToken": token},
                         headers=headers).json()
        seen += [op["name"] for op in page["operations"]]
        token = page.get("nextPageToken")
    assert seen == names[::-1]


def test_batch_tokens_are_counted_apart_from_online_tokens(emu, client):
    batch_texts = ["alpha beta gamma delta", "the quick brown fox jumps"]
    online_texts = ["online text one", "another online text here!"]
    wait_done(client, create_inline(client, batch_texts).name)
    client.models.embed_content(model=MODEL, contents=online_texts)
    stats = emu.admin.stats()
    assert stats["tokens.batch"] == sum(count_tokens(t) for t in batch_texts)
    assert stats["tokens.online"] == sum(count_tokens(t) for t in online_texts)
    assert (stats["batches.created"], stats["batches.items"]) == (1, 2)


def test_routes_need_the_api_key(emu, client):
    job = create_inline(client, ["keyed"])
    response = httpx.get(f"{emu.base_url}/v1beta/{job.name}")
    assert response.status_code == 403 and response.json()["error"]["status"] == "PERMISSION_DENIED"
    response = httpx.get(f"{emu.base_url}/v1beta/{job.name}", headers={"x-goog-api-key": "wrong"})
    assert response.status_code == 400 and response.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_async_client_runs_the_same_lifecycle(emu, client):
    async def run() -> types.BatchJob:
        aio = client.aio
        job = await aio.batches.create_embeddings(
            model=MODEL, src={"inlined_requests": {"contents": ["async one", "async two"]}})
        deadline = time.monotonic() + 10
        while not (job := await aio.batches.get(name=job.name)).done:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        pager = await aio.batches.list(config={"page_size": 10})
        assert [j.name async for j in pager] == [job.name]
        return job

    done = asyncio.run(run())
    np.testing.assert_array_equal(np.stack(vectors_of(done)), embed_texts(["async one", "async two"], 3072))


def test_jobs_and_files_survive_a_restart_on_the_same_state_dir(tmp_path):
    config = EmulatorConfig(batch=BatchConfig(pending_seconds=2.0, running_seconds=0.5), state_dir=tmp_path)
    texts = ["persisted text one", "persisted text two"]
    payload = b'{"key": "a", "request": {"content": {"parts": [{"text": "file text"}]}}}\n'
    with running_emulator(config) as first:
        client = make_client(first)
        job = create_inline(client, texts, output_dimensionality=128)
        uploaded = client.files.upload(file=io.BytesIO(payload), config={"mime_type": "jsonl"})
        assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_PENDING
    with running_emulator(config.model_copy()) as second:
        client = make_client(second)
        assert client.files.get(name=uploaded.name).size_bytes == len(payload)
        assert client.files.download(file=uploaded.name) == payload
        done = wait_done(client, job.name)
        assert done.state == types.JobState.JOB_STATE_SUCCEEDED
        assert done.create_time == job.create_time
        np.testing.assert_array_equal(np.stack(vectors_of(done)), embed_texts(texts, 128))
        file_job = wait_done(client, client.batches.create_embeddings(
            model=MODEL, src={"file_name": uploaded.name}).name)
        output_name = file_job.dest.file_name
    with running_emulator(config.model_copy()) as third:
        client = make_client(third)
        assert [j.state for j in client.batches.list()] == [types.JobState.JOB_STATE_SUCCEEDED] * 2
        assert json.loads(client.files.download(file=output_name))["key"] == "a"


# -- priority and the queue -------------------------------------------------------------------
# The SDK's CreateEmbeddingsBatchJobConfig has no priority field, so these jobs are created with
# the REST body google-genai would send, plus `priority`.


def create_raw(emu: RunningEmulator, texts: list[str] | None = None, *, file_name: str | None = None,
               **batch_fields: object) -> httpx.Response:
    """POST `models/{MODEL}:asyncBatchEmbedContent` with extra fields in the batch resource."""
    if file_name is not None:
        input_config: dict = {"fileName": file_name}
    else:
        input_config = {"requests": {"requests": [
            {"request": {"model": f"models/{MODEL}", "content": {"parts": [{"text": t}]}}} for t in texts or ["x"]
        ]}}
    body = {"batch": {"displayName": "raw", "inputConfig": input_config, **batch_fields}}
    return httpx.post(f"{emu.base_url}/v1beta/models/{MODEL}:asyncBatchEmbedContent", json=body,
                      headers={"x-goog-api-key": emu.api_key})


def created(emu: RunningEmulator, priority: object = None, texts: list[str] | None = None) -> str:
    """The name of a job created with `priority` (None: no field at all)."""
    response = create_raw(emu, texts, **({} if priority is None else {"priority": priority}))
    assert response.status_code == 200, response.text
    return response.json()["name"]


def snapshot(emu: RunningEmulator) -> dict[str, dict]:
    """Every job's metadata from ONE list call, so all states are read at the same instant."""
    response = httpx.get(f"{emu.base_url}/v1beta/batches", params={"pageSize": 1000},
                         headers={"x-goog-api-key": emu.api_key})
    response.raise_for_status()
    return {op["name"]: op["metadata"] for op in response.json()["operations"]}


def until_all_done(emu: RunningEmulator, timeout: float = 30.0) -> list[dict[str, dict]]:
    """Snapshots every 20 ms until every job is finished; the last one has them all done."""
    seen, deadline = [], time.monotonic() + timeout
    while True:
        seen.append(snapshot(emu))
        if all(meta["state"] in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_CANCELLED") for meta in seen[-1].values()):
            return seen
        assert time.monotonic() < deadline, seen[-1]
        time.sleep(0.02)


def epoch(timestamp: str) -> float:
    return datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def states(meta_by_name: dict[str, dict], *names: str) -> tuple[str, ...]:
    return tuple(meta_by_name[name]["state"].removeprefix("BATCH_STATE_") for name in names)


# Timestamps are rendered to the microsecond: two of them differ by the true gap give or take 1 µs.
EXACT = 2e-6


def test_after_a_pause_the_higher_priority_job_takes_the_one_slot_first(emu):
    # Run times are frozen per job at creation: `high` runs long enough that polls see it RUNNING
    # even on a loaded machine, `low` briefly.
    emu.admin.set_batch_config({"paused": True, "max_running": 1, "pending_seconds": 0.0, "running_seconds": 0.2})
    low = created(emu, "1")  # older: creation order alone would run it first
    emu.admin.set_batch_config({"running_seconds": 2.0})
    high = created(emu, "9")
    # With no pending time, an unpaused queue would have both RUNNING from their creation on.
    assert states(snapshot(emu), low, high) == ("PENDING", "PENDING")

    emu.admin.set_batch_config({"paused": False})
    seen = until_all_done(emu)
    assert states(seen[-1], low, high) == ("SUCCEEDED", "SUCCEEDED")
    while_high_runs = [states(snap, low) for snap in seen if states(snap, high) == ("RUNNING",)]
    assert while_high_runs and set(while_high_runs) == {("PENDING",)}
    assert ("RUNNING", "RUNNING") not in {states(snap, low, high) for snap in seen}
    high_end, low_end = epoch(seen[-1][high]["endTime"]), epoch(seen[-1][low]["endTime"])
    # The slot went to `high` first; `low` started the moment it freed and ran its 0.2 s.
    assert high_end < low_end and low_end - high_end == pytest.approx(0.2, abs=EXACT)
    assert [seen[-1][low]["priority"], seen[-1][high]["priority"]] == ["1", "9"]


def test_a_job_created_while_paused_serves_its_pending_time_after_the_pause(emu):
    emu.admin.set_batch_config({"paused": True, "pending_seconds": 0.3, "running_seconds": 0.1})
    name = created(emu)
    before_unpause = time.time()  # the emulator runs in this process, on this clock
    emu.admin.set_batch_config({"paused": False})
    started = epoch(until_all_done(emu)[-1][name]["endTime"]) - 0.1
    # Counted from its creation it would have started 0.3 s after `createTime`, before this.
    assert started >= before_unpause + 0.3 - EXACT


def test_equal_priorities_run_in_creation_order(emu):
    emu.admin.set_batch_config({"paused": True, "max_running": 1, "pending_seconds": 0.0, "running_seconds": 0.2})
    names = [created(emu, "4") for _ in range(4)]
    emu.admin.set_batch_config({"paused": False})
    final = until_all_done(emu)[-1]
    ends = [epoch(final[name]["endTime"]) for name in names]
    assert ends == sorted(ends)
    # one at a time, each starting as the one before ends
    assert [b - a for a, b in zip(ends, ends[1:])] == pytest.approx([0.2] * 3, abs=EXACT)


def test_max_running_queues_jobs_and_a_cancel_frees_the_slot(emu):
    emu.admin.set_batch_config({"max_running": 1, "pending_seconds": 0.0, "running_seconds": 60.0})
    first, second, third = (created(emu, priority) for priority in (None, "5", None))
    assert states(snapshot(emu), first, second, third) == ("RUNNING", "PENDING", "PENDING")

    cancelled = httpx.post(f"{emu.base_url}/v1beta/{third}:cancel", headers={"x-goog-api-key": emu.api_key})
    assert cancelled.status_code == 200
    assert states(snapshot(emu), first, second, third) == ("RUNNING", "PENDING", "CANCELLED")
    httpx.post(f"{emu.base_url}/v1beta/{first}:cancel", headers={"x-goog-api-key": emu.api_key}).raise_for_status()
    after = snapshot(emu)
    assert states(after, first, second, third) == ("CANCELLED", "RUNNING", "CANCELLED")
    # `second` started at the instant `first` was cancelled, not when someone next looked.
    assert epoch(after[second]["updateTime"]) == pytest.approx(epoch(after[first]["endTime"]), abs=EXACT)


def test_priority_is_reported_on_create_get_and_list_for_inline_and_file_jobs(emu, client):
    uploaded = client.files.upload(
        file=io.BytesIO(b'{"key": "k", "request": {"content": {"parts": [{"text": "file text"}]}}}\n'),
        config={"mime_type": "jsonl"})
    answers = {
        "inline": create_raw(emu, ["a"], priority="9"),
        "file": create_raw(emu, file_name=uploaded.name, priority=-3),  # a JSON number is accepted too
        "zero": create_raw(emu, ["b"], priority="0"),
    }
    assert all(response.status_code == 200 for response in answers.values())
    names = {kind: response.json()["name"] for kind, response in answers.items()}
    expected = {"inline": "9", "file": "-3", "zero": None}
    assert {kind: r.json()["metadata"].get("priority") for kind, r in answers.items()} == expected
    assert {kind: raw_job(emu, name)["metadata"].get("priority") for kind, name in names.items()} == expected
    listed = snapshot(emu)
    assert {kind: listed[name].get("priority") for kind, name in names.items()} == expected
    # the SDK parses the resource with the field in it
    assert client.batches.get(name=names["file"]).name == names["file"]


@pytest.mark.parametrize("priority", ["high", "1.5", 1.5, True, "", " 7", "9223372036854775808", {"value": 1}])
def test_a_non_integer_priority_is_a_400_and_creates_nothing(emu, priority):
    response = create_raw(emu, ["text"], priority=priority)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT") and "priority" in error["message"]
    assert snapshot(emu) == {}
    assert emu.admin.stats()["errors.batch.400"] == 1


def test_default_jobs_report_no_priority_and_keep_their_own_timeline(emu, client):
    emu.admin.set_batch_config({"pending_seconds": 0.2, "running_seconds": 0.3})
    names = [create_inline(client, [f"text {i}"]).name for i in range(3)]
    final = until_all_done(emu)[-1]
    for name in names:
        meta = final[name]
        assert "priority" not in meta
        # Each job's own pending then running time, exactly, however late it was read.
        assert epoch(meta["endTime"]) - epoch(meta["createTime"]) == pytest.approx(0.5, abs=EXACT)


def test_queue_settings_through_the_admin_endpoint_and_the_cli(emu):
    assert {k: emu.admin.batch_config()[k] for k in ("paused", "max_running")} == {"paused": False, "max_running": None}
    changed = emu.admin.set_batch_config({"paused": True, "max_running": 2})
    assert (changed["paused"], changed["max_running"]) == (True, 2)
    assert emu.emulator.batches.config.batch.max_running == 2
    with pytest.raises(AdminError) as info:
        emu.admin.set_batch_config({"max_running": 0})
    assert info.value.status == 400

    config = config_from_args(build_parser().parse_args(["--batch-paused", "--batch-max-running", "3"]))
    assert (config.batch.paused, config.batch.max_running) == (True, 3)
    default = config_from_args(build_parser().parse_args([]))
    assert (default.batch.paused, default.batch.max_running) == (False, None)


def test_priorities_and_the_queue_survive_a_restart(tmp_path):
    queue = {"pending_seconds": 0.0, "running_seconds": 0.3, "max_running": 1}
    paused = EmulatorConfig(batch=BatchConfig(paused=True, **queue), state_dir=tmp_path)
    with running_emulator(paused) as first:
        low, high = created(first, "-1"), created(first, "2")
        assert states(snapshot(first), low, high) == ("PENDING", "PENDING")
    with running_emulator(paused.model_copy(update={"batch": BatchConfig(**queue)})) as second:
        final = until_all_done(second)[-1]
        assert [final[low].get("priority"), final[high].get("priority")] == ["-1", "2"]
        high_end, low_end = epoch(final[high]["endTime"]), epoch(final[low]["endTime"])
        assert high_end < low_end and low_end - high_end == pytest.approx(0.3, abs=EXACT)
