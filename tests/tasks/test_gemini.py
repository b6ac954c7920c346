"""tasks.gemini against the real emulator through the real SDK: vectors, per-item titles, error classes."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import pytest
from pydantic import SecretStr

from indexflow.emulator.embedding import embed_texts
from indexflow.tasks.errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    ConfigError,
    DailyQuotaError,
    RateLimitedError,
    TransientAPIError,
)
from indexflow.tasks.gemini.client import make_client
from indexflow.tasks.gemini.embed import embed_batch, embed_query
from indexflow.tasks.gemini.errors import classify, parse_duration
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.settings import Endpoint

RECIPE = Recipe(dimensions=768)
TEXTS = ["Aspirin lowers the risk of stroke.", "Vitamin D and bone density in adults.", "Gut microbes and mood."]
TITLES = ["Cardiology notes", "Nutrition", None]


# `emu` (tests/conftest.py): the session's emulator, reset before each test.


def client_for(emu, *, key: str | None = None, timeout: float = 10.0):
    return make_client(Endpoint(api_key=SecretStr(key or emu.api_key), base_url=emu.base_url, timeout_seconds=timeout))


def embed(client, texts=TEXTS, titles=TITLES, recipe=RECIPE):
    return asyncio.run(embed_batch(client, texts, recipe=recipe, titles=titles))


def error_of(client, texts=TEXTS, **kw):
    with pytest.raises(Exception) as info:
        embed(client, texts, **kw)
    return info.value


def test_vectors_match_the_emulator_with_a_title_per_item(emu):
    vectors = embed(client_for(emu))
    expected = embed_texts(TEXTS, 768, "RETRIEVAL_DOCUMENT", TITLES)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 768)
    np.testing.assert_allclose(vectors, expected, rtol=1e-6, atol=1e-7)
    untitled = embed_texts(TEXTS, 768, "RETRIEVAL_DOCUMENT", None)
    assert not np.allclose(vectors[0], untitled[0])  # the title really travelled, per item
    np.testing.assert_allclose(vectors[2], untitled[2], rtol=1e-6, atol=1e-7)
    stats = emu.admin.stats()
    assert stats["calls"] == 1 and stats["texts"] == 3


def test_recipe_without_titles_sends_none(emu):
    vectors = embed(client_for(emu), recipe=Recipe(dimensions=768, send_title=False))
    np.testing.assert_allclose(vectors, embed_texts(TEXTS, 768, "RETRIEVAL_DOCUMENT", None), rtol=1e-6, atol=1e-7)


def test_query_uses_retrieval_query_without_title(emu):
    vector = asyncio.run(embed_query(client_for(emu), "does aspirin prevent stroke", RECIPE))
    np.testing.assert_allclose(vector, embed_texts(["does aspirin prevent stroke"], 768, "RETRIEVAL_QUERY")[0], rtol=1e-6)


def test_per_minute_429_carries_retry_after_and_quota_id(emu):
    emu.admin.set_limits({"rpm": 4, "rpm_counts": "texts"})
    client = client_for(emu)
    embed(client)
    error = error_of(client)
    assert isinstance(error, RateLimitedError) and error.transient
    assert error.status == 429
    assert 0 < error.retry_after <= 60
    assert error.quota_id == "EmbedContentRequestsPerMinutePerProjectPerModel"


def test_per_day_429_is_a_daily_quota_error(emu):
    emu.admin.set_limits({"rpm": None, "tpm": None, "rpd": 4, "rpm_counts": "texts"})
    client = client_for(emu)
    embed(client)
    error = error_of(client)
    assert isinstance(error, DailyQuotaError) and not error.transient
    assert "PerDay" in error.quota_id


@pytest.mark.parametrize(
    ("kind", "cls", "status", "reason"),
    [
        ("429", RateLimitedError, 429, None),
        ("500", TransientAPIError, 500, "INTERNAL"),
        ("503", TransientAPIError, 503, "UNAVAILABLE"),
        ("drop", TransientAPIError, None, "connection"),
        ("malformed", BadResponseError, 200, "malformed"),
        ("wrong_count", BadResponseError, 200, "wrong_count"),
    ],
)
def test_each_fault_kind_is_classified(emu, kind, cls, status, reason):
    emu.admin.set_faults(script=[{"kind": kind, "count": 1}])
    error = error_of(client_for(emu))
    assert type(error) is cls
    assert error.transient
    assert error.status == status
    if kind == "429":
        assert error.retry_after is None  # a bare 429 has no RetryInfo
    else:
        assert error.reason == reason
    assert emu.admin.stats()[f"faults.{kind}"] == 1


def test_hang_with_a_short_client_timeout_is_transient(emu):
    emu.admin.set_faults(script=[{"kind": "hang", "count": 1}])
    error = error_of(client_for(emu, timeout=0.3))
    assert isinstance(error, TransientAPIError) and error.reason == "timeout"


@pytest.mark.parametrize("bad", ["", "word " * 2000])
def test_empty_or_over_long_text_is_a_bad_request(emu, bad):
    error = error_of(client_for(emu), texts=["fine", bad, "also fine"], titles=None)
    assert isinstance(error, BadRequestError) and not error.transient
    assert error.status == 400


def test_wrong_key_is_an_auth_error_without_the_key(emu):
    key = "indexflow-wrong-key-THIS-IS-NOT-REAL-1234567890"
    error = error_of(client_for(emu, key=key))
    assert isinstance(error, AuthError) and error.status == 400  # Google: 400 + ErrorInfo API_KEY_INVALID
    assert key not in str(error) and key not in repr(error.facts)


def test_unknown_model_is_a_config_error(emu):
    error = error_of(client_for(emu), recipe=Recipe(model="no-such-model", dimensions=768))
    assert isinstance(error, ConfigError) and error.status == 404


def test_classified_errors_survive_pickle(emu):
    emu.admin.set_limits({"rpm": 1, "rpm_counts": "calls"})
    client = client_for(emu)
    embed(client)
    error = error_of(client)
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is RateLimitedError and clone.retry_after == error.retry_after


def test_parse_duration_forms():
    assert parse_duration("38s") == 38.0
    assert parse_duration("1.5s") == 1.5
    assert parse_duration({"seconds": 2, "nanos": 500_000_000}) == 2.5
    assert parse_duration("soon") is None and parse_duration(None) is None


def test_unexpected_exceptions_become_terminal_embed_errors():
    error = classify(RuntimeError("boom key=AIzaXYZ"))
    assert not error.transient and "AIzaXYZ" not in str(error)


def test_aiohttp_transport_failures_are_transient():
    # With aiohttp importable (the interop extra pulls it in) the SDK's async calls go through it:
    # the emulator's drop and hang faults above then arrive as these exceptions.
    aiohttp = pytest.importorskip("aiohttp")
    for exc, reason in [
        (aiohttp.ClientPayloadError("Response payload is not completed"), "connection"),
        (aiohttp.ServerDisconnectedError(), "connection"),
        (aiohttp.ClientOSError(111, "Connection refused"), "connection"),
        (TimeoutError(), "timeout"),
    ]:
        error = classify(exc)
        assert type(error) is TransientAPIError and error.reason == reason, exc
