"""The client-side limiter: sliding windows, pause gate, daily quota, AIMD concurrency (fake clock)."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from indexflow.tasks.errors import ConfigError, DailyQuotaError
from indexflow.tasks.limits import AdaptiveConcurrency, RateLimiter
from indexflow.tasks.settings import Limits
from tests.fakes import FakeClock




def limiter(clock: FakeClock, **limits) -> RateLimiter:
    return RateLimiter(Limits(**limits), clock=clock, sleep=clock.sleep)


def test_two_calls_fit_and_the_third_waits_for_the_first_to_leave_the_window():
    clock = FakeClock()
    rl = limiter(clock, rpm=20, count="texts")

    async def scenario():
        first = await rl.acquire(10, 100)
        clock.now = 0.5
        rl.complete(first)
        second = await rl.acquire(10, 100)
        rl.complete(second)
        assert rl.in_window == (20, 200)
        assert rl.delay(10, 100, clock.now) == pytest.approx(60.0)  # first finished at 0.5, now 0.5
        third = await rl.acquire(10, 100)
        return third

    third = asyncio.run(scenario())
    assert clock.sleeps == [pytest.approx(60.0)]
    assert third.admitted == pytest.approx(60.5)


def test_calls_mode_counts_one_request_per_call():
    clock = FakeClock()
    rl = limiter(clock, rpm=2, count="calls")

    async def scenario():
        for _ in range(2):
            rl.complete(await rl.acquire(100, 10))
        return rl.delay(rl.cost(100), 10, clock.now)

    assert asyncio.run(scenario()) == pytest.approx(60.0)
    assert rl.in_window == (2, 20)


def test_tokens_per_minute_binds_independently_of_requests():
    clock = FakeClock()
    rl = limiter(clock, rpm=1000, tpm=1000)

    async def scenario():
        rl.complete(await rl.acquire(1, 600))
        clock.now = 10.0
        rl.complete(await rl.acquire(1, 300))
        return rl.delay(1, 200, clock.now)

    # 900 used; 200 more needs the 600-token call (finished at 0) to leave: at 60.
    assert asyncio.run(scenario()) == pytest.approx(50.0)


def test_a_call_in_flight_never_expires_and_waiters_resume_when_it_finishes():
    clock = FakeClock()
    rl = limiter(clock, rpm=10)

    async def scenario():
        held = await rl.acquire(10, 1)
        assert math.isinf(rl.delay(1, 1, clock.now + 1_000))
        waiter = asyncio.create_task(rl.acquire(1, 1))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not waiter.done()
        clock.now = 5.0
        rl.complete(held)
        return await waiter

    permit = asyncio.run(scenario())
    assert permit.admitted == pytest.approx(65.0)  # finished at 5, window 60


def test_a_call_larger_than_a_window_is_refused_up_front():
    rl = limiter(FakeClock(), rpm=20, tpm=500)
    with pytest.raises(ConfigError) as rpm_error:
        asyncio.run(rl.acquire(21, 1))
    assert rpm_error.value.requests == 21 and rpm_error.value.rpm == 20
    with pytest.raises(ConfigError) as tpm_error:
        asyncio.run(rl.acquire(1, 501))
    assert tpm_error.value.tokens == 501 and tpm_error.value.tpm == 500


def test_daily_quota_stops_without_waiting():
    clock = FakeClock()
    rl = limiter(clock, rpd=25)

    async def scenario():
        for _ in range(2):
            rl.complete(await rl.acquire(10, 1))
        with pytest.raises(DailyQuotaError) as first:
            await rl.acquire(10, 1)
        with pytest.raises(DailyQuotaError):
            await rl.acquire(1, 1)  # fits the count, but the day is already declared spent
        return first.value

    error = asyncio.run(scenario())
    assert (error.limit, error.used, error.quota_id) == (25, 20, "client:rpd")
    assert clock.sleeps == []


def test_server_daily_quota_marks_the_limiter_spent():
    rl = limiter(FakeClock())
    rl.mark_day_exhausted(DailyQuotaError("spent", status=429, quota_id="X-PerDay"))
    with pytest.raises(DailyQuotaError) as error:
        asyncio.run(rl.acquire(1, 1))
    assert error.value.quota_id == "X-PerDay"


def test_rate_limited_pause_gates_every_caller():
    clock = FakeClock()
    rl = limiter(clock)  # no limits at all: only the pause can delay

    async def scenario():
        rl.on_rate_limited(7.5)
        rl.on_rate_limited(2.0)  # a shorter pause never shortens the gate
        return [await rl.acquire(1, 1) for _ in range(3)]

    permits = asyncio.run(scenario())
    assert [p.admitted for p in permits] == [pytest.approx(7.5)] * 3
    assert clock.sleeps == [pytest.approx(7.5)]


@pytest.mark.parametrize("count", ["texts", "calls"])
def test_a_server_with_a_sliding_window_never_sees_more_than_the_limit(count):
    """Simulate the server's own 60-s windows, stamped at arrival (admission + latency)."""
    clock = FakeClock()
    rpm, tpm = 300, 20_000
    rl = limiter(clock, rpm=rpm, tpm=tpm, count=count)
    rng = random.Random(7)
    arrivals: list[tuple[float, int, int]] = []

    async def call(texts: int, tokens: int) -> None:
        permit = await rl.acquire(texts, tokens)
        arrival = clock.now + rng.uniform(0.0, 0.3)
        arrivals.append((arrival, rl.cost(texts), tokens))
        clock.now = arrival + rng.uniform(0.0, 0.5)
        rl.complete(permit)

    async def scenario():
        for _ in range(400):
            texts = rng.randint(1, 100)
            await call(texts, rng.randint(texts, 40 * texts))

    asyncio.run(scenario())
    arrivals.sort()
    for i, (t, _, _) in enumerate(arrivals):
        window = [a for a in arrivals[: i + 1] if a[0] > t - 60.0]
        assert sum(a[1] for a in window) <= rpm
        assert sum(a[2] for a in window) <= tpm


def test_uniform_batches_use_at_least_95_percent_of_the_quota():
    """Tier-1-like limits, full batches, 50 ms calls: the admitted rate stays near the ceiling."""
    clock = FakeClock()
    rl = limiter(clock, rpm=3_000, tpm=1_000_000, count="texts")
    calls, texts, tokens = 600, 100, 40_000  # tokens bind: 24M tokens = 24 minutes

    async def scenario():
        for _ in range(calls):
            permit = await rl.acquire(texts, tokens)
            clock.now += 0.05
            rl.complete(permit)

    asyncio.run(scenario())
    ceiling = 60.0 * max(calls * texts / 3_000, calls * tokens / 1_000_000)
    # the first minute's burst is free, so finishing needs (ceiling - 1 minute) of waiting at best
    assert (ceiling - 60.0) / clock.now >= 0.95


def test_concurrency_halves_once_per_generation_and_grows_back():
    gate = AdaptiveConcurrency(8)

    async def scenario():
        generations = [await gate.acquire() for _ in range(8)]
        for g in generations:  # eight 429s from calls sent together: one congestion event
            gate.on_overload(g)
        assert gate.limit == 4
        for _ in range(8):
            gate.release()
        g = await gate.acquire()
        gate.on_overload(g)
        gate.release()
        assert gate.limit == 2
        for _ in range(5):
            g = await gate.acquire()
            gate.on_overload(g)
            gate.release()
        assert gate.limit == 1  # never below the minimum
        for _ in range(1 + 2 + 3):  # +1 after `limit` successes: 1 -> 2 -> 3 -> 4
            gate.on_success()
        return gate.limit

    assert asyncio.run(scenario()) == 4
    assert gate.shrinks == 3


def test_concurrency_gate_blocks_at_the_limit_and_wakes_on_release():
    gate = AdaptiveConcurrency(2)

    async def scenario():
        await gate.acquire()
        await gate.acquire()
        third = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        blocked = not third.done()
        gate.release()
        await asyncio.wait_for(third, 1)
        return blocked, gate.in_use

    assert asyncio.run(scenario()) == (True, 2)


def test_concurrency_bounds_are_validated():
    with pytest.raises(ConfigError):
        AdaptiveConcurrency(0)


# -- boundaries and counters a run reports ----------------------------------------------


def test_the_limiter_reports_the_seconds_it_made_callers_wait():
    clock = FakeClock()
    rl = limiter(clock, rpm=10)
    assert rl.waited_seconds == 0.0

    async def scenario():
        rl.complete(await rl.acquire(10, 1))
        clock.now = 20.0
        rl.complete(await rl.acquire(10, 1))  # waits until the first leaves: 40 s

    asyncio.run(scenario())
    assert rl.waited_seconds == pytest.approx(40.0)
    assert clock.sleeps == [pytest.approx(40.0)]


def test_a_call_of_exactly_a_whole_window_is_admitted():
    clock = FakeClock()
    rl = limiter(clock, rpm=20, tpm=500)
    permit = asyncio.run(rl.acquire(20, 500))
    assert (permit.requests, permit.tokens, permit.admitted) == (20, 500, 0.0)
    assert clock.sleeps == []


def test_a_call_waits_for_exactly_as_many_finished_calls_as_it_needs():
    clock = FakeClock()
    rl = limiter(clock, tpm=1000)

    async def scenario():
        rl.complete(await rl.acquire(1, 600))  # finished at 0: leaves at 60
        clock.now = 10.0
        rl.complete(await rl.acquire(1, 300))  # finished at 10: leaves at 70

    asyncio.run(scenario())
    assert rl.delay(1, 100, 10.0) == 0.0  # 1000 exactly: fits now
    assert rl.delay(1, 700, 10.0) == pytest.approx(50.0)  # the first call leaving frees exactly enough
    assert rl.delay(1, 701, 10.0) == pytest.approx(60.0)  # one token more: the second must leave too
    assert rl.delay(1, 700, 59.5) == pytest.approx(0.5)  # half a second before the first leaves


def test_a_finished_call_leaves_the_window_exactly_one_window_after_it_finished():
    clock = FakeClock()
    rl = limiter(clock, rpm=10)

    async def scenario():
        rl.complete(await rl.acquire(4, 7))

    asyncio.run(scenario())
    clock.now = 59.999
    assert rl.in_window == (4, 7)
    clock.now = 60.0
    assert rl.in_window == (0, 0)


@pytest.mark.parametrize("retry_after, admitted", [(0.5, 0.5), (0.0, 0.0), (-3.0, 0.0), (None, 0.0)])
def test_a_429_pauses_for_the_delay_the_server_asked_even_under_a_second(retry_after, admitted):
    clock = FakeClock()
    rl = limiter(clock)
    rl.on_rate_limited(retry_after)
    permit = asyncio.run(rl.acquire(1, 1))
    assert permit.admitted == pytest.approx(admitted)


@pytest.mark.parametrize("maximum, minimum", [(0, 1), (2, 0), (2, 3), (-1, -2)])
def test_concurrency_bounds_outside_one_to_maximum_are_refused(maximum, minimum):
    with pytest.raises(ConfigError) as info:
        AdaptiveConcurrency(maximum, minimum=minimum)
    assert (info.value.maximum, info.value.minimum) == (maximum, minimum)


@pytest.mark.parametrize("maximum, minimum", [(1, 1), (3, 3), (3, 1)])
def test_concurrency_bounds_within_one_to_maximum_are_accepted(maximum, minimum):
    gate = AdaptiveConcurrency(maximum, minimum=minimum)
    assert (gate.limit, gate.maximum, gate.minimum, gate.in_use) == (maximum, maximum, minimum, 0)


def test_successes_never_grow_concurrency_past_the_maximum():
    gate = AdaptiveConcurrency(2, grow_every=1)
    for _ in range(5):
        gate.on_success()
    assert gate.limit == 2


def test_growth_needs_limit_successes_after_each_overload_and_each_step():
    gate = AdaptiveConcurrency(8)

    async def scenario():
        g = await gate.acquire()
        gate.on_overload(g)  # 8 -> 4
        gate.release()
        limits = []
        for _ in range(4 + 5):
            gate.on_success()
            limits.append(gate.limit)
        g = await gate.acquire()
        gate.on_overload(g)  # 6 -> 3; the successes counted so far start over
        gate.release()
        for _ in range(3):
            gate.on_success()
            limits.append(gate.limit)
        return limits

    assert asyncio.run(scenario()) == [4, 4, 4, 5, 5, 5, 5, 5, 6, 3, 3, 4]
    assert gate.shrinks == 2


def test_waiters_are_admitted_in_arrival_order_even_after_a_shrink():
    gate = AdaptiveConcurrency(2)
    admitted: list[str] = []

    async def waiter(name: str) -> None:
        await gate.acquire()
        admitted.append(name)

    async def settle() -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def scenario():
        g = await gate.acquire()
        await gate.acquire()
        tasks = [asyncio.create_task(waiter(n)) for n in "ABCD"]
        await settle()
        gate.on_overload(g)  # limit 1 while two calls are still in flight
        gate.release()  # one in flight, limit 1: no slot yet
        await settle()
        assert admitted == []
        gate.release()
        await settle()
        assert admitted == ["A"]
        for expected in (["A", "B"], ["A", "B", "C"], ["A", "B", "C", "D"]):
            gate.release()
            await settle()
            assert admitted == expected
        await asyncio.wait_for(asyncio.gather(*tasks), 5)

    asyncio.run(scenario())


def test_a_waiter_cancelled_after_its_wake_up_passes_the_slot_on():
    gate = AdaptiveConcurrency(1)

    async def scenario():
        await gate.acquire()
        first = asyncio.create_task(gate.acquire())
        second = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        gate.release()  # wakes `first` ...
        first.cancel()  # ... which is cancelled before it runs
        await asyncio.wait_for(second, 5)
        await asyncio.gather(first, return_exceptions=True)
        return first.cancelled(), gate.in_use

    assert asyncio.run(scenario()) == (True, 1)


def test_a_waiter_cancelled_while_queued_leaves_the_queue():
    gate = AdaptiveConcurrency(1)

    async def scenario():
        await gate.acquire()
        first = asyncio.create_task(gate.acquire())
        second = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        gate.release()
        await asyncio.wait_for(second, 5)
        return first.cancelled(), gate.in_use

    assert asyncio.run(scenario()) == (True, 1)


def test_a_refunded_call_never_reached_the_server_and_leaves_every_window_at_once():
    clock = FakeClock()
    rl = limiter(clock, rpm=100, tpm=1_000, rpd=150, count="texts")

    async def scenario():
        refused = await rl.acquire(100, 500)  # the connection was refused: nothing was counted upstream
        rl.refund(refused)
        assert rl.in_window == (0, 0)
        # Admitted now, not a minute later; and within rpd 150 only because the refused call's
        # 100 requests were given back to the day as well.
        again = await rl.acquire(100, 500)
        rl.complete(again)
        return again

    again = asyncio.run(scenario())
    assert clock.sleeps == [] and again.admitted == 0.0


def test_the_limit_holding_a_call_is_named_while_it_waits():
    clock = FakeClock()
    rl = limiter(clock, rpm=1_000, tpm=1_000)

    async def scenario():
        first = await rl.acquire(10, 900)
        rl.complete(first)
        assert rl.holding is None
        waiter = asyncio.ensure_future(rl.acquire(10, 900))
        await asyncio.sleep(0)
        held = rl.holding
        await waiter
        return held

    reason, until = asyncio.run(scenario())
    assert reason == "tokens/min" and until == pytest.approx(60.0)
    assert rl.holding is None  # admitted: nothing holds calls any more
