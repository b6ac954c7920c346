"""Test doubles that are not mocks of anything real: a clock that moves only when slept on."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Time that moves only when someone sleeps; sleeping records the delays asked for."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
