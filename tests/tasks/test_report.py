"""The run summary's one-line note on what a completed run left out, and the progress a person reads."""

from __future__ import annotations

import pytest

from indexflow.tasks.report import RunSummary


def test_problem_note_says_what_and_how_many_and_where_to_look():
    summary = RunSummary(table="kb", mode="online", endpoint="emulator")
    assert summary.problem_note() is None
    summary.docs_failed, summary.dead_lettered = 3, 2
    assert summary.problem_note() == ("skipped 3 unreadable or invalid corpus item(s); dead-lettered 2 chunk(s) "
                                      "into kb__dead_letters; what and why: artifact indexflow-failures-kb")


# -- TerminalProgress: what a person reads while a run embeds ------------------------------------

def _terminal_progress(total, forecast_seconds=None, **kw):
    import io

    from indexflow.tasks.plan import Forecast
    from indexflow.tasks.report import TerminalProgress

    now = [100.0]
    fc = Forecast(texts=total or 0, tokens=0, calls=0, online_cost_usd=0.0, batch_cost_usd=0.0,
                  online_seconds=forecast_seconds, days=1)
    progress = TerminalProgress(total, fc, stream=io.StringIO(), terminal=False, clock=lambda: now[0], **kw)
    return progress, now


def test_the_eta_is_the_larger_of_the_forecast_and_the_live_rate():
    progress, now = _terminal_progress(1000, forecast_seconds=600.0)
    assert progress.eta() == 600.0  # nothing done yet: the quota's forecast
    now[0] += 10
    progress(500, 1000)  # a fast first minute (the window starts empty) says 10 s more...
    assert progress.eta() == 590.0  # ...but the quota still needs the forecast's time
    now[0] += 590
    progress(900, 1000)
    assert progress.eta() == pytest.approx(100 / (900 / 600))  # past the forecast, the live rate decides
    progress(1000, 1000)
    assert progress.eta() == 0.0


def test_without_a_quota_the_eta_is_the_live_rate_and_unknown_before_any_progress():
    progress, now = _terminal_progress(300)
    assert progress.eta() is None and progress.status() == "ETA unknown"
    now[0] += 2
    progress(100, 300)
    assert progress.eta() == pytest.approx(4.0)
    assert progress.line() == "embedded 100 of 300 chunks (33 %), 50/s; ETA 4 s"


def test_a_total_still_being_counted_shows_no_percentage_until_the_plan_arrives():
    from indexflow.tasks.plan import Forecast

    progress, now = _terminal_progress(None)
    now[0] += 1
    progress(200, None)
    assert progress.line() == "embedded 200 chunks, 200/s; ETA unknown"
    progress.plan(400, Forecast(texts=400, tokens=0, calls=4, online_cost_usd=0.0, batch_cost_usd=0.0,
                                online_seconds=None, days=1))
    assert progress.line() == "embedded 200 of 400 chunks (50 %), 200/s; ETA 1 s"


def test_a_held_limiter_is_named_with_the_time_to_its_next_slot():
    import asyncio

    from indexflow.tasks.limits import RateLimiter
    from indexflow.tasks.settings import Limits

    progress, now = _terminal_progress(300)
    limiter = RateLimiter(Limits(rpm=100), clock=lambda: now[0])
    progress.watch(limiter)

    async def hold() -> list[str]:
        seen = []
        first = await limiter.acquire(100, 10)
        second = asyncio.ensure_future(limiter.acquire(100, 10))
        await asyncio.sleep(0)  # the second call waits while the first is in flight
        seen.append(progress.waiting())
        limiter.complete(first)
        await asyncio.sleep(0)
        seen.append(progress.waiting())
        now[0] += 45
        seen.append(progress.waiting())
        second.cancel()
        return seen

    in_flight, next_minute, later = asyncio.run(hold())
    assert in_flight == "waiting for quota: requests/min, until a call in flight finishes"
    assert next_minute == "waiting for quota: requests/min, next slot in 1 min 00 s"
    assert later == "waiting for quota: requests/min, next slot in 15 s"
    assert progress.status() == "ETA unknown; waiting for quota: requests/min, next slot in 15 s"


def test_off_a_terminal_a_line_comes_every_few_seconds_and_a_last_one_at_the_end():
    import asyncio

    progress, _ = _terminal_progress(10, every=0.05)

    async def run() -> None:
        with progress:
            progress(4, 10)
            deadline = asyncio.get_running_loop().time() + 30
            while len(progress.stream.getvalue().splitlines()) < 3:  # three ticks, however slow the machine
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            await progress.aclose(10, 10)

    asyncio.run(run())
    lines = progress.stream.getvalue().splitlines()
    assert len(lines) >= 3 and all(line.startswith("embedded 4 of 10 chunks (40 %)") for line in lines[:-1])
    assert lines[-1].startswith("embedded 10 of 10 chunks (100 %)")
