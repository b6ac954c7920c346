"""Retry policy and bisection: backoff math, RetryInfo, terminal errors, isolating bad items (fake clock)."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from indexflow.tasks.errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    DailyQuotaError,
    RateLimitedError,
    TransientAPIError,
)
from indexflow.tasks.limits import RateLimiter
from indexflow.tasks.retry import RetryPolicy, call_with_retries, embed_resolving
from indexflow.tasks.settings import Limits, Settings
from tests.fakes import FakeClock




class Flaky:
    """Fails with the given errors in order, then returns 'ok'; counts calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def run(fn, policy, clock, **kw):
    return asyncio.run(call_with_retries(fn, policy=policy, clock=clock, sleep=clock.sleep, **kw))


def test_full_jitter_stays_within_the_exponential_cap():
    policy = RetryPolicy(base_delay=0.5, max_delay=8.0, rng=random.Random(1))
    error = TransientAPIError("x", status=503)
    for attempt in range(1, 10):
        cap = min(8.0, 0.5 * 2 ** (attempt - 1))
        samples = [policy.delay(attempt, error) for _ in range(200)]
        assert all(0.0 <= s <= cap for s in samples)
        assert max(samples) > 0.8 * cap  # full jitter spans the range, not a fixed delay


def test_retry_after_is_a_floor():
    policy = RetryPolicy(base_delay=0.5, rng=random.Random(2))
    error = RateLimitedError("429", status=429, retry_after=38.0)
    assert all(38.0 <= policy.delay(1, error) <= 38.5 for _ in range(100))


def test_transient_errors_are_retried_until_success():
    clock = FakeClock()
    fn = Flaky(TransientAPIError("500", status=500), TransientAPIError("timeout", status=None), BadResponseError("m"))
    retried = []
    result = run(fn, RetryPolicy(rng=random.Random(3)), clock, on_retry=lambda a, e, d: retried.append((a, type(e))))
    assert result == "ok" and fn.calls == 4
    assert retried == [(1, TransientAPIError), (2, TransientAPIError), (3, BadResponseError)]
    assert len(clock.sleeps) == 3


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("400", status=400),
        AuthError("401", status=401),
        DailyQuotaError("day", status=429, quota_id="PerDay"),
    ],
)
def test_terminal_errors_are_not_retried(error):
    clock = FakeClock()
    fn = Flaky(error)
    with pytest.raises(type(error)):
        run(fn, RetryPolicy(), clock)
    assert fn.calls == 1 and clock.sleeps == []


def test_attempts_bound():
    clock = FakeClock()
    fn = Flaky(*[TransientAPIError("503", status=503)] * 10)
    with pytest.raises(TransientAPIError):
        run(fn, RetryPolicy(max_attempts=3, rng=random.Random(4)), clock)
    assert fn.calls == 3


def test_elapsed_bound_stops_before_a_sleep_that_would_cross_it():
    clock = FakeClock()
    fn = Flaky(*[RateLimitedError("429", status=429, retry_after=40.0)] * 10)
    with pytest.raises(RateLimitedError):
        run(fn, RetryPolicy(max_attempts=10, max_elapsed=100.0, rng=random.Random(5)), clock)
    assert fn.calls == 3  # sleeps ~40 + ~40; a third 40 s would pass 100 s
    assert clock.now < 100.0


def test_rate_limited_pauses_the_shared_limiter():
    clock = FakeClock()
    limiter = RateLimiter(Limits(), clock=clock, sleep=clock.sleep)
    fn = Flaky(RateLimitedError("429", status=429, retry_after=12.0))
    run(fn, RetryPolicy(rng=random.Random(6)), clock, limiter=limiter)
    assert limiter.delay(1, 1, 0.0) == pytest.approx(12.0)


# -- bisection --------------------------------------------------------------------------


class FakeEmbedder:
    """Embeds ints as one-hot-ish rows; 400 for any call containing a 'bad' item."""

    def __init__(self, bad=(), transient_failures=0, bad_row_items=()) -> None:
        self.bad = set(bad)
        self.bad_row_items = set(bad_row_items)
        self.transient_failures = transient_failures
        self.calls: list[list[int]] = []

    async def __call__(self, items):
        self.calls.append(list(items))
        if self.transient_failures:
            self.transient_failures -= 1
            raise TransientAPIError("503", status=503)
        if self.bad & set(items):
            raise BadRequestError("400", status=400)
        rows = [i for i, it in enumerate(items) if it in self.bad_row_items]
        if rows:
            raise BadResponseError("zero", rows=rows)
        return np.array([[float(it), 1.0] for it in items], dtype=np.float32)


def resolve(items, embedder, **policy):
    clock = FakeClock()
    return asyncio.run(
        embed_resolving(
            items, embedder, policy=RetryPolicy(rng=random.Random(0), **policy), clock=clock, sleep=clock.sleep
        )
    )


def test_a_400_is_bisected_down_to_the_bad_item():
    embedder = FakeEmbedder(bad={5})
    outcome = resolve(list(range(8)), embedder)
    assert sorted(outcome.items) == [0, 1, 2, 3, 4, 6, 7]
    assert [f.item for f in outcome.failures] == [5]
    assert isinstance(outcome.failures[0].error, BadRequestError)
    # vectors stay paired with their items
    assert [int(v[0]) for v in outcome.vectors] == outcome.items
    # 8 -> 4+4 -> 2+2 -> 1+1: three splits; calls: the 8, two 4s, two 2s, two 1s
    assert outcome.bisections == 3
    assert len(embedder.calls) == 7
    assert outcome.failures[0].attempts == 4  # the item rode in four calls


def test_every_item_bad_fails_each_one_separately():
    outcome = resolve([1, 2, 3], FakeEmbedder(bad={1, 2, 3}))
    assert outcome.items == [] and outcome.vectors is None
    assert sorted(f.item for f in outcome.failures) == [1, 2, 3]


def test_bad_rows_after_retries_fail_only_those_rows():
    embedder = FakeEmbedder(bad_row_items={2})
    outcome = resolve([1, 2, 3], embedder, max_attempts=3)
    assert outcome.items == [1, 3]
    assert [f.item for f in outcome.failures] == [2]
    assert outcome.failures[0].attempts == 3
    assert embedder.calls[-1] == [1, 3]


def test_exhausted_transient_errors_end_the_stage_instead_of_dead_lettering():
    # An outage must not send good chunks to the dead letters: the stage fails, the next attempt resumes.
    embedder = FakeEmbedder(transient_failures=100)
    with pytest.raises(TransientAPIError):
        resolve([1, 2], embedder, max_attempts=4)
    assert len(embedder.calls) == 4


def test_terminal_errors_other_than_400_propagate():
    async def auth_fails(items):
        raise AuthError("bad key", status=401)

    with pytest.raises(AuthError):
        resolve([1, 2], auth_fails)


# -- documented defaults, boundaries, bad responses -----------------------------------------


def test_the_default_policy_is_the_one_a_run_with_default_settings_uses():
    settings = Settings(corpus="data/corpus")
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.max_elapsed) == (8, 900.0)
    assert (policy.max_attempts, policy.max_elapsed) == (settings.max_attempts, settings.max_retry_seconds)


def test_default_backoff_starts_under_half_a_second_and_is_capped_at_a_minute():
    policy = RetryPolicy(rng=random.Random(11))
    error = TransientAPIError("503", status=503)
    first = [policy.delay(1, error) for _ in range(500)]
    late = [policy.delay(12, error) for _ in range(500)]  # 0.5 * 2**11 = 1024 s uncapped
    assert all(0.0 <= d <= 0.5 for d in first) and max(first) > 0.49
    assert all(0.0 <= d <= 60.0 for d in late) and max(late) > 59.0


def test_a_short_retry_after_gets_a_tenth_of_itself_plus_10_ms_of_jitter():
    policy = RetryPolicy(rng=random.Random(12))
    error = RateLimitedError("429", status=429, retry_after=1.0)
    samples = [policy.delay(1, error) for _ in range(500)]
    assert all(1.0 <= s <= 1.11 for s in samples)  # min(0.5, 1.0 * 0.1 + 0.01)
    assert max(samples) > 1.10


def test_a_sleep_that_ends_exactly_at_the_elapsed_bound_is_still_taken():
    clock = FakeClock()
    fn = Flaky(*[RateLimitedError("429", status=429, retry_after=50.0)] * 10)
    with pytest.raises(RateLimitedError):  # no jitter: base_delay 0
        run(fn, RetryPolicy(max_attempts=10, max_elapsed=100.0, base_delay=0.0, rng=random.Random(13)), clock)
    assert fn.calls == 3 and clock.sleeps == [50.0, 50.0] and clock.now == 100.0


def test_a_bad_response_naming_no_row_ends_the_stage_after_its_retries():
    calls = []

    async def malformed(items):
        calls.append(list(items))
        raise BadResponseError("wrong count")

    with pytest.raises(BadResponseError):
        resolve([1, 2, 3], malformed, max_attempts=2)
    assert calls == [[1, 2, 3]] * 2


def test_a_bad_response_naming_every_row_ends_the_stage_instead_of_dead_lettering_all():
    embedder = FakeEmbedder(bad_row_items={1, 2})
    with pytest.raises(BadResponseError) as info:
        resolve([1, 2], embedder, max_attempts=2)
    assert info.value.rows == [0, 1]
    assert embedder.calls == [[1, 2]] * 2


def test_failures_report_how_many_calls_carried_each_item():
    embedder = FakeEmbedder(bad={2}, bad_row_items={4})
    outcome = resolve([1, 2, 3, 4], embedder, max_attempts=2)
    # [1,2,3,4] 400 -> [1,2] 400 -> [1] ok, [2] 400; [3,4] bad row 4 twice -> [3] ok
    assert [(f.item, type(f.error), f.attempts) for f in outcome.failures] == [
        (2, BadRequestError, 3), (4, BadResponseError, 3)]
    assert outcome.items == [1, 3] and outcome.bisections == 2
