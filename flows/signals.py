"""Signals during a flow run: the first SIGTERM or SIGINT winds the run down instead of tearing it.

A Prefect worker cancels a flow run by sending its process SIGTERM (and SIGKILL 30 s later).
Prefect's own SIGTERM handler raises an exception wherever the main thread happens to be, which
drops what was embedded (and paid for) but not yet committed. While the pipeline runs, the first
signal only sets the run's StopRequest: it stops sending, commits what it has and ends. A second
goes to the handler that was there before (Prefect's, or Python's KeyboardInterrupt), so a run
that does not wind down can still be stopped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it
STOPPING = "indexflow: stopping: committing what is embedded"


@contextmanager
def stop_on_signals(stop: Any, loop: asyncio.AbstractEventLoop, *, announce: Callable[[str], None],
                    signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Inside, the first of `signals` calls `stop.request(name)` on `loop`; a second goes to the previous handler.

    Only the main thread can hold signal handlers; elsewhere this changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    asked: list[str] = []  # set in the handler itself: a second signal may come before the loop wakes
    previous: dict[int, Any] = {}

    def first(name: str) -> None:
        stop.request(name)
        announce(f"{STOPPING} ({name}; send it again to stop at once)")

    def handler(signum: int, frame: FrameType | None) -> None:
        if not asked:
            asked.append(signal.Signals(signum).name)
            loop.call_soon_threadsafe(first, asked[0])  # wakes the loop even when it sleeps in select()
            return
        before = previous[signum]
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in signals:
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, before in previous.items():
            if signal.getsignal(sig) is handler:  # whoever replaced ours since keeps theirs
                signal.signal(sig, before if before is not None else signal.SIG_DFL)
