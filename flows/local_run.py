"""The pipeline in this process, without Prefect: what `indexflow index` runs when no Prefect API is set.

Stages are plain calls (with the same stage retries the flow's tasks have), lines go to stderr,
progress to a terminal bar or, off a terminal, a line every few seconds. The first SIGINT or
SIGTERM stops sending and commits what is embedded; a second SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from indexflow.flows.pipeline import STAGE_RETRY_DELAYS, RunResult, StopRequest, run_index
from indexflow.flows.signals import SIGNAL_EXIT, STOPPING
from indexflow.tasks.errors import IndexflowError, RunInterrupted
from indexflow.tasks.redact import redact
from indexflow.tasks.plan import Forecast
from indexflow.tasks.report import TerminalProgress
from indexflow.tasks.settings import Settings

T = TypeVar("T")


class TerminalHooks:
    """The pipeline's hooks for a person at a terminal (or a log file): stderr, no Prefect."""

    def __init__(self, *, stream=None, progress_every: float = 10.0, said_endpoint: bool = False,
                 stop: asyncio.Event | None = None) -> None:
        self._stream = stream
        self.progress_every = progress_every
        self.said_endpoint = said_endpoint  # the CLI already named the endpoint (the emulator notice)
        self.stop = stop
        self.bar: TerminalProgress | None = None

    @property
    def stream(self):
        return self._stream or sys.stderr  # looked up late: tests swap sys.stderr between runs

    def info(self, message: str) -> None:
        if self.said_endpoint and message.startswith("Embedding endpoint:"):
            return
        self.say(message)

    def say(self, message: str) -> None:
        """One line on stderr, above the progress bar when one is showing."""
        message = redact(message)
        if self.bar is not None and self.bar.print(message):
            return
        print(message, file=self.stream, flush=True)

    async def stage(self, name: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        delays = STAGE_RETRY_DELAYS.get(name, ())
        for attempt in range(len(delays) + 1):
            try:
                return await fn(*args)
            except IndexflowError as exc:
                if not exc.transient or attempt == len(delays):
                    raise
                self.say(f"{name} stopped: {exc}; trying the stage again in {delays[attempt]:.0f} s "
                         f"(attempt {attempt + 2} of {len(delays) + 1}; committed rows are kept)")
                await self._pause(delays[attempt])
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pause(self, seconds: float) -> None:
        if self.stop is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            return
        raise RunInterrupted("the run was interrupted", signal=getattr(self.stop, "signal", None))

    def progress(self, settings: Settings, total: int | None, fc: Forecast) -> TerminalProgress:
        self.bar = TerminalProgress(total, fc, stream=self.stream, every=self.progress_every)
        return self.bar

    def run_id(self) -> str:
        import uuid

        return uuid.uuid4().hex[:12]


class NullProgress:
    """A progress sink that shows nothing (library calls: their callers draw their own)."""

    def __call__(self, done: int, total: int | None) -> None:
        pass

    def plan(self, total: int, fc: object = None) -> None:
        pass

    def __enter__(self) -> "NullProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    async def aclose(self, done: int, total: int | None) -> None:
        pass


class LoggingHooks(TerminalHooks):
    """The in-process hooks for library calls: lines go to the `indexflow` logger, no progress bar."""

    def say(self, message: str) -> None:
        import logging

        logging.getLogger("indexflow").info("%s", message)

    def progress(self, settings: Settings, total: int | None, fc: Forecast) -> NullProgress:
        return NullProgress()


def run_local(settings: Settings, *, api_key: str | None, base_url: str | None, hooks: TerminalHooks,
              writer_wait_seconds: float | None = None,
              on_interrupt: Callable[[RunResult, int], None] | None = None) -> RunResult:
    """Run the pipeline in this process; signals stop it gracefully (see the module docstring).

    After an interrupt `on_interrupt(result, exit_code)` is called and the process exits with
    that code at once: committed rows are safe, and threads still reading or an emulator still
    answering must not hold the exit.
    """
    from indexflow.tasks.endpoint import endpoint_label, resolve_endpoint

    label = endpoint_label(api_key, base_url)
    loop = asyncio.new_event_loop()
    stop = StopRequest()
    hooks.stop = stop

    def on_signal(name: str) -> None:
        if stop.is_set():  # the second one: the user does not want to wait
            if name == "SIGINT":
                print("indexflow: interrupted again: exiting now; committed rows are kept", file=sys.stderr,
                      flush=True)
                os._exit(SIGNAL_EXIT[name])
            return
        stop.request(name)
        hooks.say(f"{STOPPING} (Ctrl-C again to quit at once)")

    async def main() -> RunResult:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig.name)
        result = await run_index(settings, lambda: resolve_endpoint(api_key, base_url), label, hooks,
                                 writer_wait_seconds=writer_wait_seconds, stop=stop)
        if isinstance(result.error, RunInterrupted) or stop.is_set():
            code = SIGNAL_EXIT.get(stop.signal or "SIGINT", 130)
            if on_interrupt is not None:
                on_interrupt(result, code)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return result

    try:
        return loop.run_until_complete(main())
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
