"""The plan's forecast: money from tokens and the price list, time and days from the quota.

Every expectation is worked out by hand from the figures in the test, not from the code.
"""

from __future__ import annotations

import pytest

from indexflow.tasks.plan import forecast
from indexflow.tasks.settings import TIERS, Limits


def test_free_tier_requests_per_minute_bind_and_the_day_quota_spreads_the_run():
    # 2,500 texts of 240 tokens = 600,000 tokens, 100 texts per call.
    fc = forecast(2_500, 600_000, batch_size=100, limits=TIERS["free"])  # 100 rpm, 30,000 tpm, 1,000 rpd, per text
    assert fc.calls == 25
    # $0.15 per million tokens online: 0.6 M x 0.15 = $0.09; the Batch API is half: $0.045.
    assert fc.online_cost_usd == pytest.approx(0.09)
    assert fc.batch_cost_usd == pytest.approx(0.045)
    # Each text is a request: 2,500 / 100 rpm = 25 min; 600,000 / 30,000 tpm = 20 min. 25 min bind.
    assert fc.online_seconds == pytest.approx(25 * 60)
    # 2,500 requests at 1,000 a day: 3 days.
    assert fc.days == 3
    assert (fc.texts, fc.tokens) == (2_500, 600_000)


def test_tokens_per_minute_bind_when_texts_are_long():
    # Tier 1: 3,000 rpm, 1,000,000 tpm, no daily limit. 3,000 texts of ~1,667 tokens = 5 M tokens.
    fc = forecast(3_000, 5_000_000, batch_size=100, limits=TIERS["1"])
    assert fc.calls == 30
    assert fc.online_cost_usd == pytest.approx(0.75) and fc.batch_cost_usd == pytest.approx(0.375)
    # 3,000 / 3,000 rpm = 1 min; 5 M / 1 M tpm = 5 min: the tokens bind.
    assert fc.online_seconds == pytest.approx(300)
    assert fc.days == 1


def test_when_the_quota_counts_calls_a_partial_batch_is_a_whole_request():
    # 950 texts at 100 per call: 9 full calls and one of 50 = 10 calls, each one request.
    limits = Limits(rpm=4, rpd=4, count="calls")
    fc = forecast(950, 9_500, batch_size=100, limits=limits)
    assert fc.calls == 10
    assert fc.online_seconds == pytest.approx(10 / 4 * 60)  # 2.5 min at 4 calls a minute
    assert fc.days == 3  # 10 calls at 4 a day: 4 + 4 + 2
    # the same run counted per text: 950 requests at 4 a minute and 4 a day
    per_text = forecast(950, 9_500, batch_size=100, limits=Limits(rpm=4, rpd=4, count="texts"))
    assert per_text.online_seconds == pytest.approx(950 / 4 * 60) and per_text.days == 238


def test_a_run_that_exactly_fills_a_day_takes_one_day_and_one_more_request_takes_two():
    limits = Limits(rpd=1_000, count="texts")
    assert forecast(1_000, 10_000, batch_size=100, limits=limits).days == 1
    assert forecast(1_001, 10_010, batch_size=100, limits=limits).days == 2


def test_without_limits_there_is_no_time_estimate_and_nothing_to_embed_costs_nothing():
    unlimited = forecast(10_000, 2_000_000, batch_size=100, limits=TIERS["unlimited"])
    assert unlimited.online_seconds is None and unlimited.days == 1
    assert unlimited.calls == 100 and unlimited.online_cost_usd == pytest.approx(0.30)
    nothing = forecast(0, 0, batch_size=100, limits=TIERS["free"])
    assert (nothing.calls, nothing.online_cost_usd, nothing.batch_cost_usd, nothing.online_seconds, nothing.days) == (
        0, 0.0, 0.0, 0.0, 1)


def test_batch_is_always_half_the_online_price():
    for tokens in (1, 12_345, 7_000_000):
        fc = forecast(10, tokens, batch_size=10, limits=TIERS["2"])
        assert fc.batch_cost_usd == pytest.approx(fc.online_cost_usd / 2)
        assert fc.online_cost_usd == pytest.approx(tokens * 0.15 / 1_000_000)
