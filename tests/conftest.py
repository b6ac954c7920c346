"""Session-wide fixtures: one Gemini API emulator on a free loopback port, reset before each test that asks."""

from __future__ import annotations

import pytest
from google import genai
from google.genai import types

from indexflow.emulator.config import BatchConfig, EmulatorConfig
from indexflow.emulator.server import RunningEmulator, running_emulator

SDK_TIMEOUT_MS = 30_000
FAST_BATCHES = {"pending_seconds": 0.05, "running_seconds": 0.3}


@pytest.fixture(scope="session")
def emulator() -> RunningEmulator:
    """The session's emulator (unlimited limits, no faults, no latency; batch jobs done in 0.35 s)."""
    with running_emulator(EmulatorConfig(batch=BatchConfig(**FAST_BATCHES))) as running:
        yield running


@pytest.fixture
def emu(emulator: RunningEmulator) -> RunningEmulator:
    """The session's emulator after a reset: startup config, no faults, zero stats, no jobs or files."""
    emulator.admin.reset(jobs=True)
    return emulator


@pytest.fixture
def genai_client(emu: RunningEmulator) -> genai.Client:
    """An unmodified google-genai client pointed at the emulator (SDK retries off, the default)."""
    client = genai.Client(
        api_key=emu.api_key,
        http_options=types.HttpOptions(base_url=emu.base_url, api_version="v1beta", timeout=SDK_TIMEOUT_MS),
    )
    yield client
    client.close()
