"""Quota and concurrency limits as the SDK sees them: 429 with QuotaFailure + RetryInfo, 503 overloaded."""

from __future__ import annotations

import asyncio
import time

import pytest
from google.genai import errors, types

from indexflow.emulator.config import LimitConfig
from indexflow.emulator.google_errors import format_duration
from indexflow.emulator.limits import QuotaExceeded, RateLimiter

MODEL = "gemini-embedding-001"


def _embed(client, texts: list[str]) -> int:
    response = client.models.embed_content(model=MODEL, contents=texts,
                                           config=types.EmbedContentConfig(output_dimensionality=128))
    return len(response.embeddings)


def _quota_error(client, texts: list[str]) -> tuple[list[str], float, errors.ClientError]:
    """Call, expect a quota 429, return (quotaIds, retryDelay seconds, error)."""
    with pytest.raises(errors.ClientError) as info:
        _embed(client, texts)
    error = info.value
    assert (error.code, error.status) == (429, "RESOURCE_EXHAUSTED")
    details = {d["@type"].rsplit(".", 1)[1]: d for d in error.details["error"]["details"]}
    quota_ids = [v["quotaId"] for v in details["QuotaFailure"]["violations"]]
    delay = details["RetryInfo"]["retryDelay"]
    assert delay.endswith("s")
    return quota_ids, float(delay[:-1]), error


def test_rpm_counts_texts_and_a_rejected_call_consumes_nothing(genai_client, emu):
    emu.admin.set_limits({"rpm": 5, "rpm_counts": "texts"})
    assert _embed(genai_client, ["a", "b", "c"]) == 3
    quota_ids, delay, _ = _quota_error(genai_client, ["d", "e", "f"])
    assert quota_ids == ["EmbedContentRequestsPerMinutePerProjectPerModel"]
    assert 0 < delay <= 60
    assert _embed(genai_client, ["d", "e"]) == 2  # exactly the 2 left: the refused call took nothing
    stats = emu.admin.stats()
    assert (stats["texts"], stats["calls"], stats["errors.429.rpm"]) == (5, 2, 1)


def test_rpm_counts_calls(genai_client, emu):
    emu.admin.set_limits({"rpm": 2, "rpm_counts": "calls"})
    assert _embed(genai_client, ["t"] * 50) == 50
    assert _embed(genai_client, ["t"] * 50) == 50
    quota_ids, delay, _ = _quota_error(genai_client, ["t"])
    assert quota_ids == ["EmbedContentRequestsPerMinutePerProjectPerModel"]
    assert 0 < delay <= 60


def test_tpm_counts_tokens(genai_client, emu):
    emu.admin.set_limits({"tpm": 100})
    forty_tokens = "x" * 160
    assert _embed(genai_client, [forty_tokens, forty_tokens]) == 2
    quota_ids, delay, _ = _quota_error(genai_client, [forty_tokens])
    assert quota_ids == ["EmbedContentInputTokensPerMinutePerProjectPerModel"]
    assert 0 < delay <= 60
    assert _embed(genai_client, ["x" * 80]) == 1  # 20 tokens still fit
    assert emu.admin.stats()["tokens.online"] == 100


def test_rpd_is_a_per_day_quota(genai_client, emu):
    emu.admin.set_limits(tier="free")
    emu.admin.set_limits({"rpd": 3})
    assert _embed(genai_client, ["a", "b", "c"]) == 3
    quota_ids, delay, error = _quota_error(genai_client, ["d"])
    assert quota_ids == ["EmbedContentRequestsPerDayPerProjectPerModel-FreeTier"]
    assert 60 < delay <= 86_400
    assert "Please retry in" in error.message
    assert emu.admin.stats()["errors.429.rpd"] == 1


def test_a_call_larger_than_the_limit_can_never_fit(genai_client, emu):
    emu.admin.set_limits({"tpm": 10})
    quota_ids, delay, error = _quota_error(genai_client, ["y" * 200])
    assert quota_ids == ["EmbedContentInputTokensPerMinutePerProjectPerModel"]
    assert delay == 60
    assert "alone exceeds the limit" in error.message


def test_retry_delay_is_the_time_until_enough_capacity_frees():
    now = [1000.0]
    limiter = RateLimiter(LimitConfig(rpm=5, rpm_counts="texts"), clock=lambda: now[0])
    limiter.admit(texts=3, tokens=3)
    now[0] = 1010.0
    limiter.admit(texts=2, tokens=2)
    now[0] = 1020.0
    with pytest.raises(QuotaExceeded) as info:
        limiter.admit(texts=2, tokens=2)
    assert info.value.retry_after == pytest.approx(40.0)  # the first 3 texts leave the window at 1060
    details = {d["@type"].rsplit(".", 1)[1]: d for d in info.value.details}
    assert details["RetryInfo"]["retryDelay"] == "40s"
    now[0] = 1060.0
    limiter.admit(texts=2, tokens=2)
    with pytest.raises(QuotaExceeded) as info:
        limiter.admit(texts=2, tokens=2)
    assert info.value.retry_after == pytest.approx(10.0)  # the 2 texts of t=1010 leave at 1070


def test_duration_format_matches_protobuf_json():
    assert [format_duration(s) for s in (38, 38.9, 1.2341, 0.0001)] == ["38s", "38.9s", "1.235s", "0.001s"]


def test_concurrent_calls_over_the_cap_get_503(genai_client, emu):
    emu.admin.set_limits({"max_concurrent_calls": 1})
    emu.admin.set_config(latency_base_ms=800)
    gate = emu.emulator.concurrency

    async def run() -> tuple[int, errors.ServerError]:
        first = asyncio.create_task(genai_client.aio.models.embed_content(model=MODEL, contents=["slow"]))
        deadline = time.monotonic() + 5
        while gate.in_flight == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # wait until the first call holds the only slot
        with pytest.raises(errors.ServerError) as info:
            await genai_client.aio.models.embed_content(model=MODEL, contents=["second"])
        return len((await first).embeddings), info.value

    done, error = asyncio.run(run())
    assert done == 1
    assert (error.code, error.status) == (503, "UNAVAILABLE")
    assert error.message == "The model is overloaded. Please try again later."
    assert emu.admin.stats()["errors.503"] == 1


def test_limits_change_at_run_time_and_reset_restores_them(genai_client, emu):
    assert emu.admin.limits()["rpm"] is None
    emu.admin.set_limits({"rpm": 1})
    assert _embed(genai_client, ["a"]) == 1
    _quota_error(genai_client, ["b"])
    emu.admin.reset()
    assert emu.admin.limits()["rpm"] is None
    assert _embed(genai_client, ["b"] * 10) == 10
