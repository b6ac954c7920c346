"""`stop_on_signals`: the first real signal asks the run to stop, a second goes to the handler before."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

from indexflow.flows.pipeline import StopRequest
from indexflow.flows.signals import STOPPING, stop_on_signals


class Previous(Exception):
    """What the handler installed before ours raises (as Prefect's raises TerminationSignal)."""


def previous_handler(signum, frame):
    raise Previous(signum)


@pytest.fixture
def prior_sigterm():
    before = signal.signal(signal.SIGTERM, previous_handler)
    yield
    signal.signal(signal.SIGTERM, before)


def test_the_first_signal_stops_the_run_a_second_reaches_the_previous_handler(prior_sigterm):
    said: list[str] = []

    async def run() -> StopRequest:
        stop = StopRequest()
        with stop_on_signals(stop, asyncio.get_running_loop(), announce=said.append):
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), 10)  # set from the loop, while it waits in select()
            assert stop.signal == "SIGTERM"
            with pytest.raises(Previous):
                os.kill(os.getpid(), signal.SIGTERM)
            assert signal.getsignal(signal.SIGTERM) is not previous_handler
        return stop

    stop = asyncio.run(run())
    assert stop.is_set()
    assert said == [f"{STOPPING} (SIGTERM; send it again to stop at once)"]
    assert signal.getsignal(signal.SIGTERM) is previous_handler  # restored on the way out


def test_two_signals_before_the_loop_wakes_count_as_two(prior_sigterm):
    async def run() -> None:
        stop = StopRequest()
        with stop_on_signals(stop, asyncio.get_running_loop(), announce=lambda line: None):
            os.kill(os.getpid(), signal.SIGTERM)
            with pytest.raises(Previous):  # the loop has not run `stop.request` yet
                os.kill(os.getpid(), signal.SIGTERM)

    asyncio.run(run())


@pytest.fixture
def python_sigint():
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # a test runner may have its own
    yield
    signal.signal(signal.SIGINT, before)


def test_sigint_is_bridged_too_and_a_second_reaches_asyncio_s_own_handler(python_sigint):
    stops: list[StopRequest] = []

    async def run() -> None:
        stops.append(StopRequest())
        with stop_on_signals(stops[0], asyncio.get_running_loop(), announce=lambda line: None):
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.wait_for(stops[0].wait(), 10)
            # asyncio.run's own SIGINT handler (what ours found): it cancels this task, then
            # asyncio.run raises KeyboardInterrupt, as a second Ctrl-C of a tracked CLI run does.
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(30)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(run())
    assert stops[0].signal == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_off_the_main_thread_nothing_is_installed():
    seen: list[object] = []

    def in_thread() -> None:
        async def run() -> None:
            with stop_on_signals(StopRequest(), asyncio.get_running_loop(), announce=lambda line: None):
                seen.append(signal.getsignal(signal.SIGTERM))
        asyncio.run(run())

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(10)
    assert seen == [before]
