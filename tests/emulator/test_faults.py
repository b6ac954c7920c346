"""Every fault kind as the unmodified SDK sees it, scripted and by seeded probability; admin reset."""

from __future__ import annotations

import asyncio
import json
import time

import httpx2
import pytest
from google import genai
from google.genai import errors, types

from indexflow.emulator.cli import build_parser, config_from_args
from indexflow.emulator.faults import FaultInjector, parse_script_spec

MODEL = "gemini-embedding-001"
TEXTS = ["first text", "second text", "third text"]


def _embed(client: genai.Client) -> int:
    return len(client.models.embed_content(model=MODEL, contents=TEXTS).embeddings)


def _outcome(client: genai.Client) -> str:
    try:
        return f"ok{_embed(client)}"
    except errors.APIError as exc:
        return str(exc.code)


@pytest.mark.parametrize(
    ("kind", "error_type", "code", "status"),
    [("500", errors.ServerError, 500, "INTERNAL"), ("503", errors.ServerError, 503, "UNAVAILABLE")],
)
def test_server_error_faults(genai_client, emu, kind, error_type, code, status):
    emu.admin.set_faults(script=[{"kind": kind, "count": 1}])
    with pytest.raises(error_type) as info:
        _embed(genai_client)
    assert (info.value.code, info.value.status) == (code, status)
    assert _embed(genai_client) == 3  # the script was one call long
    stats = emu.admin.stats()
    assert stats[f"faults.{kind}"] == 1 and stats["calls"] == 1


def test_bare_429_has_no_retry_info(genai_client, emu):
    emu.admin.set_faults(script=[{"kind": "429"}])
    with pytest.raises(errors.ClientError) as info:
        _embed(genai_client)
    assert (info.value.code, info.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert "details" not in info.value.details["error"]


def test_quote_key_is_a_403_that_repeats_the_callers_key(genai_client, emu):
    emu.admin.set_faults(script=[{"kind": "quote_key"}])
    with pytest.raises(errors.ClientError) as info:
        _embed(genai_client)
    assert (info.value.code, info.value.status) == (403, "PERMISSION_DENIED")
    assert emu.api_key in info.value.details["error"]["message"]
    assert _embed(genai_client) == 3 and emu.admin.stats()["faults.quote_key"] == 1


def test_drip_sends_the_right_answer_slowly_in_pieces(genai_client, emu):
    emu.admin.set_config(drip_seconds=1.0)
    expected = genai_client.models.embed_content(model=MODEL, contents=TEXTS).embeddings
    emu.admin.set_faults(script=[{"kind": "drip"}])
    pieces: list[float] = []
    started = time.monotonic()
    with httpx2.stream("POST", f"{emu.base_url}/v1beta/models/{MODEL}:batchEmbedContents",
                       headers={"x-goog-api-key": emu.api_key}, timeout=5.0,
                       json={"requests": [{"model": f"models/{MODEL}", "content": {"parts": [{"text": t}]}}
                                          for t in TEXTS]}) as response:
        body = b""
        for piece in response.iter_raw():
            pieces.append(time.monotonic() - started)
            body += piece
    assert response.status_code == 200 and len(pieces) > 10
    assert pieces[-1] - pieces[0] >= 0.9  # spread over drip_seconds
    assert [e["values"] for e in json.loads(body)["embeddings"]] == [e.values for e in expected]


def test_hang_lasts_until_the_client_times_out(emu):
    client = genai.Client(api_key=emu.api_key, http_options=types.HttpOptions(
        base_url=emu.base_url, api_version="v1beta", timeout=500))
    emu.admin.set_faults(script=[{"kind": "hang"}])
    with pytest.raises(httpx2.TimeoutException):
        _embed(client)
    deadline = time.monotonic() + 5
    while emu.emulator.concurrency.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)  # the server notices the disconnect and frees the call
    assert emu.emulator.concurrency.in_flight == 0
    assert _embed(client) == 3


def test_hang_does_not_block_other_calls(genai_client, emu):
    hang_seconds = 5.0  # how long the server holds the hanging call; the other call needs milliseconds
    emu.admin.set_faults(script=[{"kind": "hang"}])
    emu.admin.set_config(hang_seconds=hang_seconds)

    async def run() -> dict:
        facts: dict = {"hang_sent": time.monotonic()}
        hanging = asyncio.create_task(genai_client.aio.models.embed_content(model=MODEL, contents=TEXTS))
        hanging.add_done_callback(lambda _: facts.setdefault("hang_done", time.monotonic()))
        deadline = time.monotonic() + 10
        while emu.emulator.concurrency.in_flight == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the hanging call is in the server
        other = await genai_client.aio.models.embed_content(model=MODEL, contents=TEXTS[:1])
        facts["other_done"] = time.monotonic()
        facts["hang_still_pending"] = not hanging.done()
        facts["other_embeddings"] = len(other.embeddings)
        with pytest.raises(errors.ServerError) as info:
            await hanging  # after hang_seconds the server gives up like Google's deadline
        facts["hang_status"] = info.value.status
        return facts

    facts = asyncio.run(run())
    assert facts["other_embeddings"] == 1 and facts["hang_status"] == "DEADLINE_EXCEEDED"
    # The other call was answered during the hang, not after it: a server frozen by the hang
    # would answer it only once the hang ends, hang_seconds after the hanging call arrived.
    assert facts["hang_still_pending"], "the other call finished only after the hang ended"
    assert facts["other_done"] - facts["hang_sent"] < hang_seconds
    assert facts["other_done"] < facts["hang_done"]
    assert facts["hang_done"] - facts["hang_sent"] >= hang_seconds  # the hang lasted its full time


def test_drop_closes_the_connection_mid_response(genai_client, emu):
    emu.admin.set_faults(script=[{"kind": "drop"}])
    with pytest.raises(httpx2.RemoteProtocolError):
        _embed(genai_client)
    assert _embed(genai_client) == 3


def test_malformed_body_fails_json_parsing_in_the_sdk(genai_client, emu):
    emu.admin.set_faults(script=[{"kind": "malformed"}])
    with pytest.raises(json.JSONDecodeError):
        _embed(genai_client)


def test_wrong_count_returns_one_embedding_fewer(genai_client, emu):
    emu.admin.set_faults(script=[{"kind": "wrong_count", "count": 2}])
    assert [_embed(genai_client) for _ in range(3)] == [2, 2, 3]
    assert emu.admin.stats()["faults.wrong_count"] == 2


def test_script_entries_run_in_order(genai_client, emu):
    emu.admin.set_faults(script=[{"kind": "503", "count": 2}, {"kind": "500"}])
    assert [_outcome(genai_client) for _ in range(4)] == ["503", "503", "500", "ok3"]
    assert emu.admin.faults()["script"] == []


def test_seeded_rates_repeat_and_match_the_injector(genai_client, emu):
    emu.admin.set_faults(rates={"503": 0.3, "500": 0.2}, seed=7)
    first = [_outcome(genai_client) for _ in range(30)]
    emu.admin.set_faults(seed=7)
    second = [_outcome(genai_client) for _ in range(30)]
    injector = FaultInjector({"503": 0.3, "500": 0.2}, seed=7)
    expected = [{None: "ok3", "503": "503", "500": "500"}[injector.next_fault()] for _ in range(30)]
    assert first == second == expected
    assert 0 < first.count("503") < 30 and 0 < first.count("500") < 30


def test_reset_clears_faults_stats_and_limits(genai_client, emu):
    emu.admin.set_faults(script=[{"kind": "500", "count": 5}], rates={"503": 0.5})
    emu.admin.set_limits({"rpm": 3})
    _outcome(genai_client)
    assert emu.admin.stats()["faults.500"] == 1
    emu.admin.reset()
    assert emu.admin.stats() == {}
    assert emu.admin.faults() == {"script": [], "rates": {}, "seed": 0}
    assert [_outcome(genai_client) for _ in range(3)] == ["ok3"] * 3


def test_batch_config_is_what_the_batch_store_reads(emu):
    emu.admin.set_batch_config({"item_failure_rate": 0.25, "fail_next_jobs": 1})
    assert emu.emulator.batches.config.batch.item_failure_rate == 0.25
    assert emu.emulator.batches.config.batch.fail_next_jobs == 1
    # merged into the startup config, not replaced
    assert emu.admin.batch_config()["running_seconds"] == emu.emulator.initial_config.batch.running_seconds


def test_bad_admin_input_is_refused(emu):
    from indexflow.emulator.admin import AdminError

    with pytest.raises(AdminError) as info:
        emu.admin.set_faults(script=[{"kind": "teapot"}])
    assert info.value.status == 400
    with pytest.raises(AdminError):
        emu.admin.set_faults(rates={"503": 0.8, "500": 0.5})


def test_cli_parses_fault_rates_scripts_and_tiers():
    args = build_parser().parse_args(
        ["--tier", "free", "--rpm", "10", "--fault", "503=0.05", "--fault", "drop=0.01",
         "--batch-item-failure-rate", "0.1", "--api-key", "k1", "--api-key", "k2"])
    config = config_from_args(args)
    assert (config.limits.rpm, config.limits.tpm, config.limits.rpd) == (10, 30_000, 1_000)
    assert config.fault_rates == {"503": 0.05, "drop": 0.01}
    assert config.batch.item_failure_rate == 0.1
    assert config.api_keys == ("k1", "k2")
    assert parse_script_spec("503x3") == {"kind": "503", "count": 3, "target": "embed"}
    assert parse_script_spec("wrong_count") == {"kind": "wrong_count", "count": 1, "target": "embed"}
    assert parse_script_spec("batch_create:dropx2") == {"kind": "drop", "count": 2, "target": "batch_create"}
    with pytest.raises(ValueError):
        parse_script_spec("nowhere:503")
    with pytest.raises(ValueError):
        parse_script_spec("teapotx2")


def test_batch_create_faults_refuse_or_lose_the_answer(emu, genai_client):
    from google.genai import errors

    src = {"inlined_requests": {"contents": ["one", "two"],
                                "config": {"task_type": "RETRIEVAL_DOCUMENT", "output_dimensionality": 768}}}
    emu.admin.set_faults(script=[{"kind": "429", "count": 1, "target": "batch_create"},
                                 {"kind": "drop", "count": 1, "target": "batch_create"}])
    with pytest.raises(errors.ClientError) as info:  # a bare 429: no job
        genai_client.batches.create_embeddings(model="gemini-embedding-001", src=src,
                                               config={"display_name": "refused"})
    assert info.value.code == 429 and "details" not in info.value.details["error"]
    assert emu.admin.stats().get("batches.created", 0) == 0
    # online embedding calls are not affected by batch-create scripts
    assert len(genai_client.models.embed_content(model="gemini-embedding-001", contents=["x"]).embeddings) == 1
    with pytest.raises(Exception):  # the job is made, the answer is lost
        genai_client.batches.create_embeddings(model="gemini-embedding-001", src=src,
                                               config={"display_name": "lost-answer"})
    assert emu.admin.stats()["batches.created"] == 1
    assert [j.display_name for j in genai_client.batches.list()] == ["lost-answer"]
