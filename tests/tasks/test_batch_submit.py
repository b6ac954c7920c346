"""Batch submission: request bodies (the same vector as online), sizes, create at most once, finding a
job by display name. Plain functions, and the real SDK against the session emulator where the
server's answer matters."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from google import genai
from google.genai import types

from indexflow.tasks.batch.create import create_once
from indexflow.tasks.batch.wire import body_size, file_body, inline_body, is_payload_too_large, item_request, jsonl_input
from indexflow.tasks.gemini.batches import LIST_SKEW, create_job, find_job_by_display_name, operation_name
from indexflow.tasks.gemini.files import upload_jsonl
from indexflow.tasks.chunk import Chunk
from indexflow.tasks.errors import AuthError, BadRequestError, BatchJobError, RateLimitedError, TransientAPIError
from indexflow.tasks.gemini.embed import batch_request_body
from indexflow.tasks.recipe import Recipe

pytestmark = pytest.mark.filterwarnings("ignore::google.genai._common.ExperimentalWarning")

RECIPE = Recipe()


def chunk(doc: str = "d", text: str = "A short text.", title: str = "A title", recipe: Recipe = RECIPE) -> Chunk:
    return Chunk(id=f"{doc}#0", doc_id=doc, ordinal=0, text=text, title=title, source="c.jsonl",
                 tokens=len(text.split()), content_hash=recipe.content_hash(title, text))


def client_for(emu, api_key: str | None = None) -> genai.Client:
    return genai.Client(api_key=api_key or emu.api_key,
                        http_options=types.HttpOptions(base_url=emu.base_url, api_version="v1beta"))


# -- request bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe, title", [
    (Recipe(), "A title"),                                   # RETRIEVAL_DOCUMENT: the title is sent
    (Recipe(), ""),                                          # no title, none sent
    (Recipe(send_title=False), "A title"),                   # the recipe says no titles
    (Recipe(task_type="RETRIEVAL_QUERY"), "A title"),        # a task type that takes no title
    (Recipe(dimensions=256, task_type="SEMANTIC_SIMILARITY", send_title=True), "A title"),
])
def test_an_item_is_exactly_the_request_the_online_route_sends(recipe, title):
    c = chunk(title=title, recipe=recipe)
    (online,) = batch_request_body([c.text], recipe=recipe, titles=[c.title])["requests"]
    online.pop("model")  # a batch names its model once, for the whole job
    assert item_request(c, recipe) == online
    sends_title = bool(title) and recipe.send_title and recipe.task_type == "RETRIEVAL_DOCUMENT"
    assert ("title" in item_request(c, recipe)) is sends_title


def test_item_request_golden_body():
    assert item_request(chunk(), RECIPE) == {
        "content": {"parts": [{"text": "A short text."}], "role": "user"},
        "taskType": "RETRIEVAL_DOCUMENT", "outputDimensionality": 768, "title": "A title"}


def test_body_size_counts_utf8_bytes_on_the_wire_not_escapes():
    assert body_size({"t": "é"}) == len('{"t":"é"}'.encode()) == 10  # "\u00e9" would be 14
    body = inline_body([chunk(text="naïve café — ünïcode " * 50)], RECIPE, "job")
    wire = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert body_size(body) == len(wire)


def test_jsonl_input_is_one_utf8_line_per_chunk_keyed_by_chunk_id():
    chunks = [chunk("a", text="café"), chunk("b", text="plain")]
    data = jsonl_input(chunks, RECIPE)
    assert data.endswith(b"\n") and "café".encode() in data and b"\\u00e9" not in data
    lines = data.splitlines()
    assert [json.loads(line) for line in lines] == [{"key": c.id, "request": item_request(c, RECIPE)} for c in chunks]
    assert lines[0] == ('{"key":"a#0","request":' + json.dumps(item_request(chunks[0], RECIPE), ensure_ascii=False,
                                                             separators=(",", ":")) + "}").encode()


def test_operation_name_reads_the_operation_name_at_the_top_or_in_its_metadata():
    assert operation_name(b'{"name": "batches/top", "metadata": {"name": "batches/meta"}}') == "batches/top"
    assert operation_name(b'{"metadata": {"name": "batches/meta"}}') == "batches/meta"
    assert operation_name('{"name": "batches/s"}') == "batches/s"


@pytest.mark.parametrize("body", [None, b"", b"not json", b"{}", b'{"metadata": null}', b"[]", b'"text"'])
def test_a_create_answer_without_a_job_name_is_an_unknown_job(body):
    # ValueError, KeyError, TypeError, AttributeError: each one an answer that names no job
    with pytest.raises(BatchJobError) as caught:
        operation_name(body)
    assert caught.value.state == "UNKNOWN" and caught.value.job is None


def test_is_payload_too_large_only_for_a_400_about_the_size_limit():
    assert is_payload_too_large(BadRequestError("Request payload SIZE exceeds the LIMIT: 20971520 bytes", status=400))
    assert not is_payload_too_large(BadRequestError("request size is wrong", status=400))
    assert not is_payload_too_large(BadRequestError("over the limit of 100 requests", status=400))
    assert not is_payload_too_large(TransientAPIError("size limit", status=503))
    assert not is_payload_too_large(ValueError("size limit"))


# -- create at most once -------------------------------------------------------------------------


def attempt_creates(create_errors: list, find_results: list, **kw):
    calls = {"create": 0, "find": 0, "slept": []}

    async def create():
        calls["create"] += 1
        if create_errors:
            raise create_errors.pop(0)
        return "batches/new"

    async def find():
        calls["find"] += 1
        result = find_results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    async def sleep(seconds):
        calls["slept"].append(seconds)

    try:
        return asyncio.run(create_once(create, find, sleep=sleep, **kw)), calls
    except Exception as exc:  # noqa: BLE001 - returned for the test to inspect
        return exc, calls


def test_create_once_defaults_to_5_attempts_2s_apart_doubling_and_no_wait_after_the_last():
    result, calls = attempt_creates([TransientAPIError("503", status=503)] * 5, [None] * 5)
    assert isinstance(result, BatchJobError) and result.state == "NOT_CREATED" and result.transient
    assert result.job is None and "after 5 attempts" in str(result)
    assert calls["create"] == calls["find"] == 5
    assert calls["slept"] == [2.0, 4.0, 8.0, 16.0], "the run gives up at once after the last look-up"


def test_create_once_waits_what_a_429_asks_then_backs_off_again():
    result, calls = attempt_creates([RateLimitedError("429", retry_after=7.0), RateLimitedError("429", retry_after=None),
                                     TransientAPIError("500", status=500)], [None] * 3, base_delay=0.5)
    assert result == "batches/new" and calls["create"] == 4
    assert calls["slept"] == [7.0, 1.0, 2.0]


def test_a_failed_lookup_leaves_the_job_unknown_and_transient():
    result, calls = attempt_creates([TransientAPIError("x", status=500)], [TransientAPIError("list", status=503)])
    assert isinstance(result, BatchJobError) and (result.state, result.job, result.transient) == ("UNKNOWN", None, True)
    assert calls == {"create": 1, "find": 1, "slept": []}


# -- through the SDK and the emulator ----------------------------------------------------------------


def test_find_by_display_name_stops_at_jobs_older_than_the_intent_minus_10_minutes(emu):
    client = client_for(emu)

    async def go():
        wanted = await create_job(client, RECIPE.model, inline_body([chunk()], RECIPE, "wanted"))
        await create_job(client, RECIPE.model, inline_body([chunk()], RECIPE, "newer"))
        listed = {j.display_name: j async for j in await client.aio.batches.list()}
        t = listed["newer"].create_time  # listed first (newest first); "wanted" comes after it

        async def find(since):
            return await find_job_by_display_name(client, "wanted", since=since)

        return wanted, listed, [await find(None), await find(t + timedelta(minutes=9)), await find(t + LIST_SKEW),
                                await find(t + LIST_SKEW + timedelta(microseconds=1)),
                                await find_job_by_display_name(client, "never made")]

    try:
        wanted, listed, found = asyncio.run(go())
    finally:
        client.close()
    assert LIST_SKEW == timedelta(minutes=10)
    assert listed["wanted"].name == wanted
    # no cut-off; within the skew; a job exactly at the cut-off still counts; one past it ends the search
    assert found == [wanted, wanted, wanted, None, None]


def test_upload_keeps_the_first_128_characters_of_the_display_name(emu):
    client = client_for(emu)
    name = "k" * 100 + "-" + "x" * 99

    async def go():
        uploaded = await upload_jsonl(client, jsonl_input([chunk()], RECIPE), name)
        return uploaded, await client.aio.files.get(name=uploaded)

    try:
        uploaded, file = asyncio.run(go())
    finally:
        client.close()
    assert uploaded.startswith("files/") and file.display_name == name[:128]


def test_every_server_call_raises_indexflow_errors_not_sdk_ones(emu):
    """A refused key is an AuthError (terminal) on each call of the submit path, never a raw SDK error."""
    client = client_for(emu, api_key="not-the-emulator-key")

    async def go():
        calls = {
            "upload": upload_jsonl(client, b"{}\n", "d"),
            "create_inline": create_job(client, RECIPE.model, inline_body([chunk()], RECIPE, "d")),
            "create_from_file": create_job(client, RECIPE.model, file_body("files/x", "d")),
            "find": find_job_by_display_name(client, "d"),
        }
        raised = {}
        for what, call in calls.items():
            try:
                await call
            except Exception as exc:  # noqa: BLE001 - inspected below
                raised[what] = exc
        return raised

    try:
        raised = asyncio.run(go())
    finally:
        client.close()
    assert {what: type(exc) for what, exc in raised.items()} == dict.fromkeys(
        ["upload", "create_inline", "create_from_file", "find"], AuthError)
    assert all(not exc.transient and "not-the-emulator-key" not in str(exc) for exc in raised.values())

